/**
 * Imports that nothing would end, found by a chaos test (real processes, Postgres restarts,
 * pg_terminate_backend), each left `running` for ever with its staging tables:
 * - a merge whose every attempt failed (its connection dropped once per attempt): the
 *   worker ends the import on the last attempt;
 * - a merge whose worker died during its last attempt (pg-boss fails the job when its
 *   heartbeat lapses): a running server's reaper ends it, from the merge queue's dead letters;
 *   the same for a part (its merge waited for it for ever), from the part queue's;
 * - a `sluice import` killed mid-way, and an upload whose server died before its first part:
 *   a running server's reaper ends them within its period, and leaves alone those whose
 *   owner is alive.
 * Real Postgres, real `sluice worker` / `sluice serve` / `sluice import` processes.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { repoRoot } from '../../src/config.ts';
import { createImport, lockImportOwner, unlockImportOwner } from '../../src/db/sql/imports.ts';
import { acceptUpload, importStatus, type ImportStatus } from '../../src/intake/index.ts';
import { MERGE_DEAD_QUEUE, MERGE_QUEUE, PART_DEAD_QUEUE, PART_QUEUE, startBoss, type Boss } from '../../src/jobs/boss.ts';
import { createStageSql } from '../../src/load/merge-sql.ts';
import { stageTableName, stagingTables } from '../../src/load/staging.ts';
import { purchases } from '../../src/pipelines/purchases.ts';
import type { TestDb } from '../helpers/db.ts';
import { leftovers, queueDatabases } from './http-helpers.ts';
import { killAll, startSluice, until, type Proc } from '../helpers/processes.ts';

const FIXTURE = path.join(repoRoot, 'test/fixtures/neoway/base_teste_2000.txt');
const queues = queueDatabases();
const setup = queues.setup;
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-stuck-'));
const pauseFile = path.join(dir, 'pause');

after(async () => {
  await killAll();
  await queues.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

async function upload(ctx: { pool: TestDb['pool']; boss: Boss }): Promise<string> {
  const { id } = await acceptUpload(ctx, { pipeline: 'purchases', fileName: 'base_teste_2000.txt', source: 'test' }, fs.createReadStream(FIXTURE), {
    partRows: 200,
  });
  return id;
}

/** The servers' reaper period here (SLUICE_REAP_INTERVAL_MS; 30 s by default). */
const REAP_INTERVAL_MS = 2000;

async function serve(db: TestDb): Promise<Proc> {
  const srv = startSluice(['serve', '--port', '0'], { DATABASE_URL: db.url, SLUICE_WORKERS: '0', SLUICE_REAP_INTERVAL_MS: String(REAP_INTERVAL_MS) });
  await srv.waitFor(/listening on/);
  return srv;
}

/** Waits for the import to be failed with nothing left behind. */
async function failedClean(db: TestDb, id: string, ms: number): Promise<ImportStatus> {
  return until(async () => {
    const s = await importStatus(db.pool, id);
    if (s?.status !== 'failed') return undefined;
    const left = await leftovers(db, id);
    return left.tables === 0 && left.bytes === 0 ? s : undefined;
  }, `import ${id} failed with nothing left behind`, ms);
}

async function mergeJobs(db: TestDb, id: string) {
  const { rows } = await db.pool.query(
    `SELECT name, state, retry_count FROM pgboss.job WHERE name IN ($1, $2) AND data->>'importId' = $3 ORDER BY name`,
    [MERGE_QUEUE, MERGE_DEAD_QUEUE, id],
  );
  return rows.map((r) => [r.name, r.state, r.retry_count]);
}

test("a merge whose every attempt fails (its connection dropped): the import ends failed with the error, nothing left behind", async () => {
  const { db, ctx } = await setup();
  // Every write into purchases ends its own connection, as pg_terminate_backend or a
  // Postgres restart did to the merge in the chaos test.
  await db.pool.query(`
    CREATE FUNCTION drop_my_connection() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); RETURN NULL; END $$;
    CREATE TRIGGER drop_my_connection BEFORE INSERT OR UPDATE ON purchases
      FOR EACH STATEMENT EXECUTE FUNCTION drop_my_connection()`);
  const w = startSluice(['worker', '--concurrency', '2'], { DATABASE_URL: db.url });
  await w.waitFor(/ready/);
  // 3 attempts instead of MERGE_RETRY_LIMIT + 1 (a job takes its queue's limit when sent).
  await ctx.boss.updateQueue(MERGE_QUEUE, { retryLimit: 2 });
  const id = await upload(ctx);
  const status = await failedClean(db, id, 90_000);
  assert.equal(status.error, 'merge failed: terminating connection due to administrator command (gave up after 3 attempts)');
  assert.equal((await db.pool.query('SELECT count(*)::int AS n FROM purchases')).rows[0].n, 0, 'nothing imported');
  // Then (the import is ended first, while the job is held) pg-boss fails the job for good
  // and puts its dead letter copy where a server's reaper finds it (a no-op for an import
  // already failed).
  const jobs = await until(async () => {
    const j = await mergeJobs(db, id);
    return j[0]?.[1] === 'failed' ? j : undefined;
  }, 'the merge job to be failed');
  assert.deepEqual(jobs, [[MERGE_QUEUE, 'failed', 2], [MERGE_DEAD_QUEUE, 'created', 0]]);
  await w.kill();
});

test('a merge whose worker is killed during its last attempt: a running server fails the import from the dead letter', async () => {
  const { db, ctx } = await setup();
  const srv = await serve(db);
  fs.writeFileSync(pauseFile, '');
  try {
    // The worker holds the first part it takes (rows COPYed), so its merge waits for it.
    const w = startSluice(['worker', '--concurrency', '1'], { DATABASE_URL: db.url, SLUICE_FAULT_PAUSE_FILE: pauseFile });
    await w.waitFor(/ready/);
    // One attempt: the first is the last.
    await ctx.boss.updateQueue(MERGE_QUEUE, { retryLimit: 0 });
    const id = await upload(ctx);
    await until(async () => {
      const { rows } = await db.pool.query(
        `SELECT count(*) FILTER (WHERE application_name LIKE 'sluice-merge %') AS merge,
                count(*) FILTER (WHERE application_name = 'sluice-worker' AND state = 'idle in transaction') AS held
           FROM pg_stat_activity WHERE datname = current_database()`,
      );
      return Number(rows[0].merge) > 0 && Number(rows[0].held) > 0;
    }, 'the merge to wait for the part its worker holds');
    await w.kill('SIGKILL');
    // Heartbeat 10 s + supervision every 5 s, then the reaper's next tick.
    const status = await failedClean(db, id, 10_000 + 5_000 + REAP_INTERVAL_MS + 30_000);
    assert.equal(status.error, 'merge failed: its worker stopped (job heartbeat timeout) (gave up after 1 attempt)');
    // Reported once the dead letters taken are settled.
    await srv.waitFor(new RegExp(`failed 1 import\\(s\\) nobody would end: ${id}`));
    assert.deepEqual(await mergeJobs(db, id), [[MERGE_QUEUE, 'failed', 0], [MERGE_DEAD_QUEUE, 'completed', 0]]);
  } finally {
    fs.rmSync(pauseFile, { force: true });
  }
  await srv.kill();
  assert.equal(srv.child.exitCode, 0);
});

test('a part whose worker is killed during its last attempt: a starting server fails the import from the part dead letter', async () => {
  const { db, ctx } = await setup();
  // The queue's supervisor (here, not a server's) fails the part's job once its heartbeat lapses.
  const supervisor = await startBoss(db.url);
  queues.keep(supervisor);
  fs.writeFileSync(pauseFile, '');
  try {
    const w = startSluice(['worker', '--concurrency', '1'], { DATABASE_URL: db.url, SLUICE_FAULT_PAUSE_FILE: pauseFile });
    await w.waitFor(/ready/);
    // One attempt per part: the first is the last.
    await ctx.boss.updateQueue(PART_QUEUE, { retryLimit: 0 });
    const id = await upload(ctx);
    await until(async () => {
      const { rows } = await db.pool.query(
        `SELECT count(*) AS held FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'sluice-worker' AND state = 'idle in transaction'`,
      );
      return Number(rows[0].held) > 0;
    }, 'the worker to hold a part');
    await w.kill('SIGKILL');
    // Heartbeat 10 s, supervision every 5 s: the part's job failed and copied to the dead letters.
    const { n } = await until(async () => {
      const { rows } = await db.pool.query(
        `SELECT (data->>'n')::int AS n FROM pgboss.job WHERE name = $1 AND data->>'importId' = $2`,
        [PART_DEAD_QUEUE, id],
      );
      return rows[0] as { n: number } | undefined; // (an object: part 0 is falsy)
    }, 'the part to be given up on', 60_000);
    // A server starting now drains the dead letters at once (and then every REAP_INTERVAL_MS).
    const srv = await serve(db);
    const status = await failedClean(db, id, 30_000);
    assert.equal(status.error, `part ${n}: its worker stopped (job heartbeat timeout) (gave up after 1 attempt)`);
    assert.equal(status.part_list.find((p) => p.n === n)?.status, 'failed');
    await srv.kill();
  } finally {
    fs.rmSync(pauseFile, { force: true });
  }
});

test('a running server fails, within its period, a killed `sluice import` and a dead upload; not those whose owner is alive', async () => {
  const { db } = await setup();
  const srv = await serve(db);
  // An upload whose server died before its first part (no owner), and two imports whose
  // owner is alive: a CLI import and an upload, both holding their owner lock (as
  // runImport and acceptUpload do), with their staging tables. All there before the import
  // below is killed: the tick that fails it has seen them.
  const deadUpload = await createImport(db.pool, { pipeline: 'purchases', fileName: 'u.txt', fileBytes: null, source: 'http', status: 'queued' });
  await db.pool.query(createStageSql(purchases, stageTableName(deadUpload)));
  const holder = await db.pool.connect();
  const live: string[] = [];
  try {
    for (const [source, status] of [['cli', 'running'], ['http', 'queued']] as const) {
      const id = randomUUID();
      await lockImportOwner(holder, id);
      live.push(await createImport(db.pool, { id, pipeline: 'purchases', fileName: 'f.txt', fileBytes: null, source, status }));
      await db.pool.query(createStageSql(purchases, stageTableName(id)));
    }
    // A `sluice import` killed (kill -9) with its first chunk prepared, its transaction open.
    fs.writeFileSync(pauseFile, '');
    let killedAt: number;
    let dead: string;
    try {
      const p = startSluice(['import', FIXTURE, '--pipeline', 'purchases', '--json', '--no-progress'], {
        DATABASE_URL: db.url, SLUICE_CHUNK_ROWS: '1000', SLUICE_FAULT_PAUSE_APPLY_FILE: pauseFile,
      });
      dead = await until(async () => {
        const { rows } = await db.pool.query(`SELECT id FROM imports WHERE source = 'cli' AND status = 'running' AND id <> ALL ($1::uuid[])`, [live]);
        const id = rows[0]?.id as string | undefined;
        return id && (await stagingTables(db.pool, id)).some((t) => t.endsWith('_m0')) ? id : undefined;
      }, 'the import to prepare its first chunk');
      await p.kill('SIGKILL');
      killedAt = Date.now();
    } finally {
      fs.rmSync(pauseFile, { force: true });
    }
    const killed = await failedClean(db, dead, REAP_INTERVAL_MS + 30_000);
    assert.match(killed.error ?? '', /^interrupted/);
    const { rows } = await db.pool.query('SELECT finished_at FROM imports WHERE id = $1', [dead]);
    assert.ok(rows[0].finished_at.getTime() - killedAt < REAP_INTERVAL_MS + 5_000, 'failed within the reaper period');
    assert.equal((await db.pool.query('SELECT count(*)::int AS n FROM purchases')).rows[0].n, 0, 'nothing of the killed import written');
    const upload = await failedClean(db, deadUpload, REAP_INTERVAL_MS + 30_000);
    assert.match(upload.error ?? '', /^upload interrupted/);
    for (const id of live) {
      const s = await importStatus(db.pool, id);
      assert.ok(s && ['running', 'queued'].includes(s.status), `${id} is left alone (${s?.status})`);
      assert.deepEqual(await stagingTables(db.pool, id), [stageTableName(id)], 'its staging table is kept');
    }
  } finally {
    for (const id of live) await unlockImportOwner(holder, id);
    holder.release();
  }
  // The reaper's timer does not keep the server from stopping.
  await srv.kill();
  assert.equal(srv.child.exitCode, 0);
});
