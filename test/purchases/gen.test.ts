/**
 * `sluice gen purchases`: a file in the Neoway layout that the purchases pipeline imports
 * whole (every row valid), and files whose row ranges do not overlap share no document.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { runImport } from '../../src/engine/import-runner.ts';
import { purchases } from '../../src/pipelines/purchases.ts';
import { testDbAndDir, type TestDb } from '../helpers/db.ts';
import { exitedWithin } from '../cli/exit.ts';
import { killAll, startSluice } from '../helpers/processes.ts';

let db: TestDb;
const dir = testDbAndDir('sluice-gen-', (d) => (db = d), killAll);

test('two generated files (rows 1-3000, 3001-6000) import whole, every document and store valid, none shared', async () => {
  const files = [path.join(dir, 'a.txt'), path.join(dir, 'b.txt')];
  for (const [i, file] of files.entries()) {
    const p = startSluice(['gen', 'purchases', '3000', '--out', file, '--first', String(1 + i * 3000)], {});
    assert.equal(await exitedWithin(p, 30_000), 0, p.output());
    assert.match(p.output(), new RegExp(`wrote ${file}: 3000 rows \\(rows ${1 + i * 3000}-${3000 + i * 3000}\\)`));
    assert.equal(fs.readFileSync(file, 'utf8').split('\n').length, 3002, 'a header, 3000 rows, a final line end');
  }
  for (const file of files) {
    const r = await runImport({ pool: db.pool, pipeline: purchases, file });
    assert.equal(r.status, 'completed', r.error);
    assert.deepEqual(r.rows, { read: 3000, inserted: 3000, updated: 0, unchanged: 0, rejected: 0 });
  }
  const { rows } = await db.pool.query(`SELECT count(*)::int AS n, count(*) FILTER (WHERE document_valid AND document_type = 'cpf')::int AS valid,
      count(most_frequent_store)::int AS stores, count(*) FILTER (WHERE most_frequent_store_valid AND last_store_valid)::int AS stores_valid,
      count(*) FILTER (WHERE last_purchase_date IS NULL)::int AS nulls FROM purchases`);
  assert.deepEqual(rows[0], { n: 6000, valid: 6000, stores: 4000, stores_valid: 4000, nulls: 2000 });
});

test('gen purchases refuses 0 rows and --first 0 (exit 2)', async () => {
  for (const args of [['0'], ['5', '--first', '0']]) {
    const p = startSluice(['gen', 'purchases', ...args, '--out', path.join(dir, 'x.txt')], {});
    assert.equal(await exitedWithin(p, 30_000), 2, p.output());
  }
});
