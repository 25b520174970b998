/**
 * A cancel ends a merge at work at once, and frees its worker and the target: a merge inside
 * a long statement (here: its write waits for a lock the test holds on `purchases`), and a
 * merge waiting for the target's merge lock (held here as another import's merge would). Before,
 * both went on until the lock was let go (a review saw the target held ~18 s after a cancel).
 * The test keeps its lock the whole time: the merge's end cannot come from it. Real Postgres,
 * the real queue, one part worker and the merge loop in this process.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { after, before, test } from 'node:test';
import { repoRoot } from '../../src/config.ts';
import { mergeConnectionName } from '../../src/db/sql/intake.ts';
import { acceptUpload, cancelImport, importStatus } from '../../src/intake/index.ts';
import { MERGE_QUEUE } from '../../src/jobs/boss.ts';
import { lockKey } from '../../src/load/merge.ts';
import { testDb, type TestDb } from '../helpers/db.ts';
import { startIntake, waitFor, waitForImportEnd, waitForNoLeftovers, type Intake } from './http-helpers.ts';

const FIXTURE = fs.readFileSync(path.join(repoRoot, 'test/fixtures/neoway/base_teste_2000.txt'));

let db: TestDb;
let intake: Intake;
before(async () => {
  db = await testDb();
  intake = await startIntake(db, { workers: 1 });
});
after(async () => {
  await intake?.stop();
  await db?.close();
});

/** The merge's backend of import `id`: its state and what it waits for; undefined once gone. */
async function mergeBackend(id: string): Promise<{ state: string; wait: string | null } | undefined> {
  const { rows } = await db.pool.query<{ state: string; wait: string | null }>(
    `SELECT state, wait_event_type AS wait FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1`,
    [mergeConnectionName(id)],
  );
  return rows[0];
}

async function mergeJobState(id: string): Promise<string | undefined> {
  const { rows } = await db.pool.query<{ state: string }>(`SELECT state::text FROM pgboss.job WHERE name = $1 AND data->>'importId' = $2`, [MERGE_QUEUE, id]);
  return rows[0]?.state;
}

/** With `hold` run on a connection of the test's own, in a transaction kept open until the end. */
async function holding(hold: string, run: () => Promise<void>): Promise<void> {
  const client = await db.pool.connect();
  try {
    await client.query('BEGIN');
    await client.query(hold);
    await run();
  } finally {
    await client.query('ROLLBACK').catch(() => {});
    client.release();
  }
}

/** Uploads the fixture (4 parts), waits until `merging` says its merge is where the test wants it, cancels, checks the merge ended. */
async function cancelWhileMerging(merging: (b: { state: string; wait: string | null }) => boolean): Promise<string> {
  const { id } = await acceptUpload(intake.ctx, { pipeline: 'purchases', fileName: 'cancel-merge.txt', source: 'test' }, Readable.from([FIXTURE]), { partRows: 500 });
  await waitFor(`the merge of ${id} to be held`, async () => {
    const b = await mergeBackend(id);
    return b && merging(b) ? true : undefined;
  }, 30_000);
  const s = await cancelImport(intake.ctx, id);
  assert.equal(s.status, 'cancelled');
  // Ended by the cancel itself (it waits for the backend to exit), not later.
  assert.equal(await mergeBackend(id), undefined, 'the merge connection is gone when the cancel answers');
  // Its worker is free: the merge job ends (skipped), and what was staged goes.
  await waitFor(`the merge job of ${id} to end`, async () => ((await mergeJobState(id)) === 'completed' ? true : undefined), 30_000);
  await waitForNoLeftovers(`import ${id}'s staging and bytes to go`, db, id, 30_000);
  const after = await importStatus(db.pool, id);
  assert.equal(after?.status, 'cancelled');
  assert.deepEqual([after?.rows.inserted, after?.rows.updated], [0, 0]);
  return id;
}

test('a merge inside a statement waiting on a lock is ended by the cancel', async () => {
  // SHARE conflicts with the ROW EXCLUSIVE lock the merge's writes take on the target.
  await holding('LOCK TABLE purchases IN SHARE MODE', async () => {
    await cancelWhileMerging((b) => b.state === 'active' && b.wait === 'Lock');
  });
  assert.equal((await db.pool.query('SELECT count(*)::int AS n FROM purchases')).rows[0].n, 0, 'nothing was written');
});

test("a merge waiting for the target's merge lock is ended by the cancel", async () => {
  // The lock another import's merge into purchases would hold; the merge tries it every 100 ms.
  await holding(`SELECT pg_advisory_xact_lock(hashtext('${lockKey('purchases')}'))`, async () => {
    await cancelWhileMerging((b) => b.state.startsWith('idle in transaction') || b.state === 'active');
  });
});

test('after both, the worker merges the next import into the free target', async () => {
  const { id } = await acceptUpload(intake.ctx, { pipeline: 'purchases', fileName: 'after.txt', source: 'test' }, Readable.from([FIXTURE]), { partRows: 500 });
  const s = await waitForImportEnd(id, db.pool);
  assert.equal(s.status, 'completed', s.error ?? '');
  assert.equal(s.rows.inserted + s.rows.updated + s.rows.unchanged + s.rows.rejected, s.rows.read);
});
