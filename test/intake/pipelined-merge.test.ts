/**
 * The intake merges each part as soon as it is staged, in one transaction (merge-job.ts).
 * Whatever the part size, and with parts staged by two workers in any order, the tables and
 * the counts must be those of merging the whole file at once: rows of one key apply in file
 * order even when they fall in different parts; a part whose staged rows vanished is staged
 * again. Real Postgres, real queue, in-process workers.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { after, test } from 'node:test';
import { runImport } from '../../src/engine/import-runner.ts';
import { acceptUpload, importStatus, type ImportStatus } from '../../src/intake/index.ts';
import { runMerge } from '../../src/intake/merge-job.ts';
import { runPart } from '../../src/intake/part-job.ts';
import { partTableName } from '../../src/intake/staging.ts';
import { leads } from '../../src/pipelines/leads.ts';
import { testDb, type TestDb } from '../helpers/db.ts';
import { startIntake, waitFor, leadsSnapshot, stagingTableCount, waitForImportEnd, waitForNoStaging } from './http-helpers.ts';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-intake-order-'));
after(() => fs.rmSync(dir, { recursive: true, force: true }));

// The rows of test/leads/chunked-merge.test.ts: keys repeated across and within parts,
// existing leads changed by a later row only, a rejected row, lookups and a child table.
const HEADER = 'Email,Nome,Twitter,Website,Facebook,Linkedin,Phone,City,State,Tags,Opportunity,Job Title,Available for mailing';
const ROWS = [
  'new1@x.com,Name A,@a1,,,,,,,t1,,,',
  'old1@x.com,,@o1,,,,,,,,,,',
  'new1@x.com,Name B,,w.com,,,,,,t2,,,',
  'old2@x.com,Same,,,,,,,,,,,',
  'old2@x.com,Changed,,,,,,,,,,,',
  'not-an-email,X,,,,,,,,,,,',
  'old3@x.com,N3,,,,,,,XYZ,,,,',
  'new2@x.com,,,,,,,Campinas,SP,,,,',
  'new3@x.com,One,,,,,,,,,,,',
  'new3@x.com,Two,,,,,,,,,,,',
  'new3@x.com,,,,,,,,,a,,,',
  'new3@x.com,Four,,,,,,,,b,,,',
  'old1@x.com,,@other,,,,,,,,,,',
  'old4@x.com,Four,,,,,,,,,,,',
];
const CSV = `${HEADER}\n${ROWS.join('\n')}\n`;

/** Existing leads: old1 (with a facebook in lead_infos), old2, old3, old4. */
async function seed(db: TestDb): Promise<void> {
  await db.pool.query(
    `WITH l AS (
       INSERT INTO leads (email, name) SELECT * FROM (VALUES ('old1@x.com', 'One'), ('old2@x.com', 'Same'), ('old3@x.com', 'Old3'), ('old4@x.com', 'Four')) v
       RETURNING id, email)
     INSERT INTO lead_infos (lead_id, facebook) SELECT id, 'fb' FROM l WHERE email = 'old1@x.com'`,
  );
}

/** The reference: the CLI import of the file, whose 14 rows are one chunk (merged at once). */
async function reference() {
  const db = await testDb();
  await seed(db);
  const file = path.join(dir, 'whole.csv');
  fs.writeFileSync(file, CSV);
  const r = await runImport({ pool: db.pool, pipeline: leads, file });
  const table = await leadsSnapshot(db.pool);
  await db.close();
  assert.equal(r.status, 'completed', r.error);
  return { rows: r.rows, table };
}

async function intake(partRows: number, body: string, maxRejectRatio?: number): Promise<{ status: ImportStatus; table: unknown[] }> {
  const db = await testDb();
  const running = await startIntake(db, { workers: 2 });
  try {
    await seed(db);
    const { id } = await acceptUpload(running.ctx, { pipeline: 'leads', fileName: 'order.csv', source: 'test', maxRejectRatio }, Readable.from([Buffer.from(body)]), { partRows });
    const status = await waitForImportEnd(id, db.pool);
    // A failed import is recorded first, then its staging dropped (no part commits a table after).
    await waitForNoStaging('the staging tables to be dropped', db.pool, 10_000);
    assert.equal(await stagingTableCount(db.pool), 0, 'the staging tables are dropped with the merge');
    return { status, table: await leadsSnapshot(db.pool) };
  } finally {
    await running.stop();
    await db.close();
  }
}

test('parts of 1 to 14 rows, staged by two workers, merge like the whole file at once', async () => {
  const whole = await reference();
  assert.deepEqual(whole.rows, { read: 14, inserted: 3, updated: 9, unchanged: 1, rejected: 1 });
  for (const partRows of [1, 2, 3, 5, 14]) {
    const { status, table } = await intake(partRows, CSV);
    assert.equal(status.status, 'completed', status.error ?? '');
    assert.deepEqual(status.rows, whole.rows, `counts with ${partRows}-row parts`);
    assert.deepEqual(table, whole.table, `tables with ${partRows}-row parts`);
  }
});

test('too many rejects: the parts merged so far are rolled back, nothing remains', async () => {
  const db = await testDb();
  const before = await (async () => {
    await seed(db);
    return leadsSnapshot(db.pool);
  })();
  await db.close();
  const bad = Array.from({ length: 20 }, (_, i) => `bad${i},X,,,,,,,,,,,`).join('\n');
  const { status, table } = await intake(2, `${HEADER}\n${ROWS.slice(0, 5).join('\n')}\n${bad}\n`, 0.5);
  assert.equal(status.status, 'failed');
  assert.match(status.error ?? '', /nothing was imported/);
  assert.deepEqual([status.rows.read, status.rows.rejected], [25, 20], 'the failed import keeps its row counts');
  assert.deepEqual(table, before);
});

test('a part whose staged rows vanished (crash recovery empties unlogged tables) is staged again: nothing is lost', async () => {
  const whole = await reference();
  const db = await testDb();
  const running = await startIntake(db, { workers: 0 });
  try {
    await seed(db);
    const ctx = running.ctx;
    const { id } = await acceptUpload(ctx, { pipeline: 'leads', fileName: 'lost.csv', source: 'test' }, Readable.from([Buffer.from(CSV)]), { partRows: 2 });
    for (let n = 0; n < 7; n++) assert.equal(await runPart(ctx, id, n), 'completed');
    await db.pool.query(`TRUNCATE ${partTableName(id, 3)}`);
    const merged = runMerge(ctx, id);
    // The merge finds part 3 short, puts it back in the queue and waits for it.
    await waitFor('part 3 to be queued again', async () => {
      const { rows } = await db.pool.query(`SELECT status FROM import_parts WHERE import_id = $1 AND n = 3`, [id]);
      return rows[0].status === 'queued' ? true : undefined;
    });
    assert.equal(await runPart(ctx, id, 3), 'completed');
    assert.equal(await merged, 'completed');
    const status = await importStatus(db.pool, id);
    assert.deepEqual(status?.rows, whole.rows);
    assert.deepEqual(await leadsSnapshot(db.pool), whole.table);
  } finally {
    await running.stop();
    await db.close();
  }
});
