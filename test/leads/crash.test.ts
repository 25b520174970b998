/**
 * Crash safety of `sluice import`: the CLI killed with SIGKILL in the middle of its merge
 * leaves the lead tables as they were; the next import records the dead one as
 * interrupted, drops its staging, and ends with the same tables and counts as an import
 * that never crashed. Either connection of the import dropped mid-merge fails it cleanly,
 * and so does a record changed by another writer between its chunk's preparation and write.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { LEADS_CSV_HEADER } from '../../src/gen/leads.ts';
import { testDb, type TestDb } from '../helpers/db.ts';
import { importHeldBeforeWrite, importOutcome, killAll, startSluice, until } from '../helpers/processes.ts';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-crash-'));
const ROWS = 20_000;
let crashed: TestDb;
let clean: TestDb;

before(async () => {
  [crashed, clean] = await Promise.all([testDb(), testDb()]);
});
after(async () => {
  await killAll();
  await Promise.all([crashed.close(), clean.close()]);
  fs.rmSync(dir, { recursive: true, force: true });
});

/** Half the file's emails exist already (with lead_infos), half are new. */
async function seed(db: TestDb): Promise<void> {
  await db.pool.query(`INSERT INTO leads (email, name) SELECT 'lead' || i || '@x.com', 'Old ' || i FROM generate_series(0, $1 - 1, 2) i`, [ROWS]);
  await db.pool.query(`INSERT INTO lead_infos (lead_id, twitter) SELECT id, 'old' FROM leads WHERE id % 3 = 0`);
}

function writeFile(): string {
  const file = path.join(dir, 'leads.csv');
  const lines = Array.from({ length: ROWS }, (_, i) => `lead${i}@x.com,New ${i},@tw${i},site${i}.com,,,(11) 9${i},Campinas,SP,t${i % 7},sim,Dev,1`);
  fs.writeFileSync(file, `${LEADS_CSV_HEADER}\n${lines.join('\n')}\n`);
  return file;
}

async function snapshot(db: TestDb): Promise<string> {
  const { rows } = await db.pool.query(
    `SELECT md5(string_agg(concat_ws('|', l.email, l.name, l.job_title, l.opportunity, l.tags::text, c.name, s.acronym,
                                     li.twitter, li.website, li.mobile_phone), ',' ORDER BY l.email)) AS h, count(*) AS n
       FROM leads l LEFT JOIN lead_infos li ON li.lead_id = l.id
       LEFT JOIN cities c ON c.id = l.city_id LEFT JOIN states s ON s.id = l.state_id`,
  );
  return `${rows[0].n}:${rows[0].h}`;
}

async function importOnce(db: TestDb, file: string): Promise<Record<string, unknown>> {
  const p = startSluice(['import', file, '--pipeline', 'leads', '--json', '--no-progress'], { DATABASE_URL: db.url, SLUICE_CHUNK_ROWS: '1000' });
  const { code, out } = await importOutcome(p);
  assert.equal(code, 0, p.output());
  return out;
}

test('kill -9 mid-merge: nothing written; the next import marks it interrupted and gives the uncrashed result', async () => {
  const file = writeFile();
  await Promise.all([seed(crashed), seed(clean)]);
  const before = await snapshot(crashed);

  const victim = startSluice(['import', file, '--pipeline', 'leads', '--json', '--no-progress'], { DATABASE_URL: crashed.url, SLUICE_CHUNK_ROWS: '1000' });
  // Killed once a chunk has been written inside the import's open transaction.
  await until(async () => {
    assert.equal(victim.child.exitCode, null, `the import ended before it could be killed: ${victim.output()}`);
    return await chunkWritten(crashed);
  }, 'a written chunk');
  await victim.kill('SIGKILL');
  const dead = await crashed.pool.query(`SELECT id, status FROM imports`);
  assert.deepEqual(dead.rows.map((r) => r.status), ['running']);
  // The server rolls the transaction back when the connection drops.
  await until(async () => (await crashed.pool.query(`SELECT 1 FROM pg_locks WHERE locktype = 'advisory'`)).rowCount === 0, 'the dead session gone');
  assert.equal(await snapshot(crashed), before, 'no lead or lead_info written by the killed import');

  const again = await importOnce(crashed, file);
  const reference = await importOnce(clean, file);
  assert.equal(again.status, 'completed');
  assert.deepEqual(again.rows, reference.rows);
  assert.deepEqual(again.rows, { read: ROWS, inserted: ROWS / 2, updated: ROWS / 2, unchanged: 0, rejected: 0 });
  assert.equal(await snapshot(crashed), await snapshot(clean), 'same tables as an import that never crashed');

  const runs = await crashed.pool.query(`SELECT id, status, error FROM imports ORDER BY created_at`);
  assert.equal(runs.rows[0].id, dead.rows[0].id);
  assert.equal(runs.rows[0].status, 'failed');
  assert.match(runs.rows[0].error, /interrupted/);
  assert.equal(runs.rows[1].status, 'completed');
  const staging = await crashed.pool.query(`SELECT relname FROM pg_class WHERE relname LIKE 'sluice_stage_%'`);
  assert.deepEqual(staging.rows, [], 'the dead import\'s staging tables were dropped');
});

/**
 * A chunk is written in the import's transaction: its third prepared table exists (the
 * second connection prepares chunk n only once chunk n - 2 is written).
 */
async function chunkWritten(db: TestDb): Promise<boolean> {
  const { rowCount } = await db.pool.query(`SELECT 1 FROM pg_class WHERE relname LIKE 'sluice\\_stage\\_%\\_m2'`);
  return rowCount === 1;
}

for (const [connection, what] of [['merge', 'the merge connection'], ['prepare', 'the connection preparing chunks']]) test(`${what} dropped mid-merge: the import fails with the error, exit 1, nothing written`, async () => {
  const file = writeFile();
  const db = await testDb();
  try {
    await seed(db);
    const before = await snapshot(db);
    const p = startSluice(['import', file, '--pipeline', 'leads', '--json', '--no-progress'], { DATABASE_URL: db.url, SLUICE_CHUNK_ROWS: '1000' });
    const pid = await until(async () => {
      assert.equal(p.child.exitCode, null, `the import ended before its connection could be dropped: ${p.output()}`);
      if (!(await chunkWritten(db))) return undefined;
      // The merge connection holds the import's advisory locks; the other one is named.
      const q = connection === 'merge'
        ? `SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`
        : `SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'sluice-prepare'`;
      return (await db.pool.query<{ pid: number }>(q)).rows[0]?.pid;
    }, 'a written chunk');
    await db.pool.query('SELECT pg_terminate_backend($1)', [pid]);
    const { code, out } = await importOutcome(p);
    assert.equal(code, 1, p.output());
    assert.equal(out.status, 'failed');
    assert.match(out.error, /terminat|connection/i);
    assert.equal(await snapshot(db), before, 'nothing written');
    const { rows } = await db.pool.query(`SELECT status, error FROM imports`);
    assert.equal(rows[0].status, 'failed');
    assert.equal(rows[0].error, out.error);
  } finally {
    await db.close();
  }
});

test('a record changed by a writer outside Sluice between its chunk\'s preparation and its write: the import fails, nothing written', async () => {
  const file = writeFile();
  const db = await testDb();
  try {
    await seed(db);
    const { code, out, before } = await importHeldBeforeWrite({
      db, file, pipeline: 'leads', pause: path.join(dir, 'pause-apply'),
      // lead0 is in the first chunk and exists: another writer updates it meanwhile.
      meanwhile: () => db.pool.query(`UPDATE leads SET job_title = 'Changed outside' WHERE email = 'lead0@x.com'`),
      snapshot: () => snapshot(db),
    });
    assert.equal(code, 1);
    assert.equal(out.status, 'failed');
    assert.match(out.error, /changed outside this import/);
    assert.equal(await snapshot(db), before, 'nothing written by the import');
  } finally {
    await db.close();
  }
});
