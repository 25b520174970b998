/** `sluice inspect <file>`: what Sluice detects in a file, and its parsed rows. */
import type { Command } from 'commander';
import { InvalidInputError } from '../../core/errors.ts';
import { detectFile, readRecords, type FormatKind } from '../../formats/record-reader.ts';
import { fileArgument } from '../file-argument.ts';

export function registerInspect(program: Command): void {
  program
    .command('inspect')
    .description('show the detected format, delimiter, encoding, header and parsed rows')
    .argument('<file>', 'path of the file')
    .option('--json', 'one JSON object on stdout')
    .option('--format <kind>', 'csv or fixed-width', 'csv')
    .option('--rows <n>', 'rows to show', '20')
    .action(async (file: string, flags: { json?: boolean; format: string; rows: string }) => {
      if (flags.format !== 'csv' && flags.format !== 'fixed-width') throw new InvalidInputError('--format must be csv or fixed-width');
      const limit = Number(flags.rows);
      if (!Number.isInteger(limit) || limit < 0) throw new InvalidInputError('--rows must be a whole number');
      fileArgument(file);
      const meta = detectFile(file, flags.format as FormatKind);
      let header: string[] | undefined;
      const rows: string[][] = [];
      outer: for await (const batch of readRecords(file, meta, { format: meta.format, chunkBytes: 256 * 1024 })) {
        for (const r of batch.rows) {
          if (!header) header = r;
          else if (rows.length < limit) rows.push(r);
          else break outer;
        }
      }
      const out = { format: meta.format, delimiter: meta.delimiter, encoding: meta.encoding, header: header ?? [], rows };
      if (flags.json) {
        process.stdout.write(`${JSON.stringify(out)}\n`);
        return;
      }
      // Fixed-width records have no delimiter (null in the JSON).
      const delim = meta.delimiter === null ? `none (${meta.format})` : meta.delimiter === '\t' ? 'tab' : meta.delimiter;
      process.stdout.write(`format: ${meta.format}\nencoding: ${meta.encoding}${meta.bom ? ' (BOM)' : ''}\ndelimiter: ${delim}\n`);
      process.stdout.write(`header (${out.header.length}): ${out.header.join(' | ')}\n`);
      rows.forEach((r, i) => process.stdout.write(`${String(i + 1).padStart(4)}: ${r.join(' | ')}\n`));
    });
}
