/** `sluice rejects <import-id>`: the rows (and fields) an import rejected, streamed. */
import type { Command } from 'commander';
import { InvalidInputError, NotFoundError } from '../../core/errors.ts';
import { openDb } from '../../db/pool.ts';
import { getImport, listRejects } from '../../db/sql/imports.ts';
import { formatReject, rejectsCsvHeader, type RejectFormat } from '../../load/reject-format.ts';

export function registerRejects(program: Command): void {
  program
    .command('rejects')
    .description('print the rejected rows of an import: line number, field (empty for a whole-row reject), reason, raw line')
    .argument('<import-id>', 'the import id (from `sluice import`)')
    .option('--format <fmt>', 'csv or ndjson', 'csv')
    .action(async (id: string, flags: { format: string }) => {
      if (flags.format !== 'csv' && flags.format !== 'ndjson') throw new InvalidInputError('--format must be csv or ndjson');
      const fmt = flags.format as RejectFormat;
      const pool = await openDb({ max: 1 });
      try {
        if (!(await getImport(pool, id))) throw new NotFoundError(`no import ${id}`);
        if (fmt === 'csv') process.stdout.write(rejectsCsvHeader);
        let after = { line: 0, id: 0 };
        for (;;) {
          const page = await listRejects(pool, id, after, 5000);
          if (page.length === 0) break;
          const ok = process.stdout.write(page.map((r) => formatReject(r, fmt)).join(''));
          if (!ok) await new Promise((r) => process.stdout.once('drain', r));
          const last = page[page.length - 1]!;
          after = { line: last.line, id: last.id };
          if (page.length < 5000) break;
        }
      } finally {
        await pool.end();
      }
    });
}
