/** `sluice gen leads|csv|purchases`: synthetic data for demos and benchmarks. */
import type { Command } from 'commander';
import { InvalidInputError } from '../../core/errors.ts';
import { wholeNumber } from '../../core/whole-number.ts';
import { openDb } from '../../db/pool.ts';
import { generateLeads, writeLeadsCsv } from '../../gen/leads.ts';
import { writePurchasesFile } from '../../gen/purchases.ts';

/** A whole number in plain digits, `_` allowed between them (`2_000_000`); `Number` would take ' ', `1e3` and `0x10`. */
function count(v: string, min = 0): number {
  const n = wholeNumber(v.replace(/_/g, ''));
  if (n === undefined || n < min) throw new InvalidInputError(`expected a whole number${min > 0 ? ` of at least ${min}` : ''}, got ${v}`);
  return n;
}

export function registerGen(program: Command): void {
  const gen = program.command('gen').description('generate synthetic data');
  gen
    .command('purchases')
    .description('write a purchases file in the layout of the Neoway export (base_teste.txt), for the purchases pipeline')
    .argument('<n>', 'number of rows')
    .option('--out <file>', 'output file', 'purchases.txt')
    .option('--first <k>', 'number of the first row: files with ranges that do not overlap share no CPF', '1')
    .action((n: string, flags: { out: string; first: string }) => {
      const rows = count(n, 1);
      const first = count(flags.first, 1);
      const t = performance.now();
      writePurchasesFile(flags.out, rows, first);
      process.stderr.write(`wrote ${flags.out}: ${rows} rows (rows ${first}-${first + rows - 1}) in ${((performance.now() - t) / 1000).toFixed(1)}s\n`);
    });
  gen
    .command('leads')
    .description('insert n random leads into the base (set-based)')
    .argument('<n>', 'number of leads')
    .action(async (n: string) => {
      const pool = await openDb({ max: 2 });
      try {
        const t = performance.now();
        await generateLeads(pool, count(n), (done) => process.stderr.write(`  ${done} leads\n`));
        process.stderr.write(`inserted ${count(n)} leads in ${((performance.now() - t) / 1000).toFixed(1)}s\n`);
      } finally {
        await pool.end();
      }
    });
  gen
    .command('csv')
    .description('write a leads CSV in the original import format')
    .argument('<n>', 'number of rows')
    .option('--out <file>', 'output file', 'leads.csv')
    .option('--existing <fraction>', 'fraction of emails taken from the base (0..1)', '0')
    .action(async (n: string, flags: { out: string; existing: string }) => {
      const f = Number(flags.existing);
      if (!(f >= 0 && f <= 1)) throw new InvalidInputError('--existing must be between 0 and 1');
      const pool = await openDb({ max: 2 });
      try {
        const r = await writeLeadsCsv(pool, count(n), flags.out, f);
        process.stderr.write(`wrote ${flags.out}: ${r.existing} existing + ${r.fresh} new emails\n`);
      } finally {
        await pool.end();
      }
    });
}
