/** `sluice import <file> --pipeline <name>`: one file through a pipeline, from the CLI. */
import type { Command } from 'commander';
import { checkSettings } from '../../config.ts';
import { InvalidInputError } from '../../core/errors.ts';
import { openDb } from '../../db/pool.ts';
import { fieldRejectCount } from '../../db/sql/imports.ts';
import { runImport } from '../../engine/import-runner.ts';
import { parseDelimiter, parseEncoding } from '../../formats/sniff.ts';
import { getPipeline } from '../../pipelines/index.ts';
import { parseRatio } from '../../validate/values.ts';
import { fileArgument } from '../file-argument.ts';
import { delimiterProblem } from '../../formats/record-reader.ts';
import { ProgressBar } from '../progress.ts';

interface ImportFlags {
  pipeline: string;
  json?: boolean;
  maxRejectRatio?: string;
  encoding?: string;
  delimiter?: string;
  progress: boolean;
}

export function registerImport(program: Command): void {
  program
    .command('import')
    .description('import a file through a pipeline (progress on stderr; exit 0 only when completed)')
    .argument('<file>', 'path of the file to import')
    .requiredOption('--pipeline <name>', 'pipeline to use (e.g. leads)')
    .option('--json', 'print one JSON object with the result on stdout')
    .option('--max-reject-ratio <r>', 'fail, merging nothing, when rejected/read exceeds r (0..1)')
    .option('--encoding <enc>', 'force the encoding: utf-8 or windows-1252, or a label of either such as latin1 (default: detected)')
    .option('--delimiter <d>', 'force the CSV delimiter (default: sniffed among , ; tab |)')
    .option('--no-progress', 'do not draw the progress bar')
    .action(async (file: string, flags: ImportFlags) => {
      const pipeline = getPipeline(flags.pipeline);
      // The rule POST /imports applies to max_reject_ratio (src/validate/values.ts).
      const ratio = flags.maxRejectRatio === undefined ? undefined : parseRatio(flags.maxRejectRatio);
      if (flags.maxRejectRatio !== undefined && ratio === undefined) {
        throw new InvalidInputError(`--max-reject-ratio must be a number between 0 and 1, got ${JSON.stringify(flags.maxRejectRatio)}`);
      }
      // The labels and delimiters POST /imports takes too (src/formats/sniff.ts).
      const encoding = flags.encoding === undefined ? undefined : parseEncoding(flags.encoding);
      if (flags.encoding !== undefined && !encoding) {
        throw new InvalidInputError(`--encoding must be utf-8 or windows-1252 (or a label of either: latin1, iso-8859-1, cp1252...), got ${flags.encoding}`);
      }
      const delimiter = flags.delimiter === undefined ? undefined : parseDelimiter(flags.delimiter);
      if (flags.delimiter !== undefined && !delimiter) throw new InvalidInputError(`--delimiter must be one of , ; tab |`);
      // As POST /imports refuses it (checkFileFormat), in the flag's words.
      const problem = delimiter === undefined ? undefined : delimiterProblem(pipeline.name, pipeline.format.kind);
      if (problem) throw new InvalidInputError(`--delimiter ${problem}`);
      fileArgument(file);
      // Settings (SLUICE_CHUNK_ROWS) before the pool: the runner reads them once the import's
      // row exists, where a bad value would be recorded as a failed import, not refused.
      checkSettings('import');
      const pool = await openDb({ max: 4 });
      const bar = flags.progress ? new ProgressBar() : undefined;
      try {
        const result = await runImport({
          pool,
          pipeline,
          file,
          maxRejectRatio: ratio,
          encoding,
          delimiter,
          onProgress: bar ? (p) => bar.update(p) : undefined,
        });
        bar?.done();
        const { id, status, rows, duration_ms, error } = result;
        // Field rejects (an invalid state, a city too long) leave their row imported and are
        // not in `rejected`: without them nothing said some values were dropped. A failed
        // import imported no row, so dropped no value of one.
        const fields = status === 'completed' ? await fieldRejectCount(pool, id) : 0;
        if (flags.json) {
          process.stdout.write(`${JSON.stringify({ id, pipeline: pipeline.name, status, rows, field_rejects: fields, duration_ms, ...(error ? { error } : {}) })}\n`);
        } else {
          process.stdout.write(
            `import ${id} ${status}: read ${rows.read}, inserted ${rows.inserted}, updated ${rows.updated}, ` +
              `unchanged ${rows.unchanged}, rejected ${rows.rejected} in ${(duration_ms / 1000).toFixed(2)}s\n`,
          );
          if (error) process.stderr.write(`error: ${error}\n`);
          if (fields > 0) process.stderr.write(`${fields} field value${fields === 1 ? '' : 's'} rejected (${fields === 1 ? 'its row' : 'their rows'} imported without ${fields === 1 ? 'it' : 'them'})\n`);
          if (rows.rejected > 0 || fields > 0) process.stderr.write(`see the rejects: sluice rejects ${id}\n`);
        }
        process.exitCode = status === 'completed' ? 0 : 1;
      } finally {
        await pool.end();
      }
    });
}
