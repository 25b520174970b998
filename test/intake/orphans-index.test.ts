/**
 * The reaper's reads of unfinished imports (db/sql/imports.ts ORPHANS, run by every server
 * every 30 s and by every `sluice import` at its start) go through the partial index
 * imports_unfinished: among 20,000 finished imports, not a scan of them all.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { ORPHANS } from '../../src/db/sql/imports.ts';
import { testDb, type TestDb } from '../helpers/db.ts';

let db: TestDb;
before(async () => {
  db = await testDb();
});
after(async () => db?.close());

test('the orphan reads use imports_unfinished, and find exactly the unfinished imports they name', async () => {
  await db.pool.query(`INSERT INTO imports (pipeline, source, status, finished_at)
    SELECT 'purchases', CASE WHEN i % 2 = 0 THEN 'cli' ELSE 'http' END, CASE WHEN i % 3 = 0 THEN 'failed' ELSE 'completed' END, now()
      FROM generate_series(1, 20000) i`);
  const { rows: mine } = await db.pool.query<{ id: string; kind: string }>(`INSERT INTO imports (pipeline, source, status, parts_total, merge_enqueued)
    VALUES ('leads', 'cli', 'running', NULL, false), ('purchases', 'http', 'queued', NULL, false),
           ('purchases', 'http', 'queued', 4, true), ('purchases', 'http', 'running', 4, true)
    RETURNING id, source || '/' || status AS kind`);
  await db.pool.query('ANALYZE imports');
  for (const [name, where] of Object.entries(ORPHANS)) {
    const plan = JSON.stringify((await db.pool.query(`EXPLAIN (FORMAT JSON) SELECT id FROM imports WHERE ${where}`)).rows[0]['QUERY PLAN']);
    assert.match(plan, /"Index Name":"imports_unfinished"/, `${name}: ${plan}`);
  }
  const found = async (where: string) => (await db.pool.query<{ id: string }>(`SELECT id FROM imports WHERE ${where}`)).rows.map((r) => r.id);
  assert.deepEqual(await found(ORPHANS.cli), [mine[0]!.id]);
  assert.deepEqual(await found(ORPHANS.upload), [mine[1]!.id]);
});
