/**
 * Wake-ups on real Postgres: a job sent in a transaction is announced to listening workers
 * at COMMIT and never for a rollback; a listener whose connection is killed comes back on
 * its own and then wakes every queue (notifications may have been missed meanwhile). Two
 * parts that COPYed rejects lock their import row without a deadlock. A merge job expires
 * after 24 h, not 1 h, on a fresh database and on one an earlier version set up.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { lockImport } from '../../src/db/sql/intake.ts';
import { MERGE_EXPIRE_SECONDS, MERGE_QUEUE, PART_QUEUE, listenForJobs, sendJob, startBoss, type Boss, type JobListener } from '../../src/jobs/boss.ts';
import { PgBoss } from 'pg-boss';
import { until } from '../helpers/processes.ts';
import { testDb, type TestDb } from '../helpers/db.ts';

let db: TestDb;
let boss: Boss;
const listeners: JobListener[] = [];

before(async () => {
  db = await testDb();
  boss = await startBoss(db.url, { supervise: false });
});

after(async () => {
  for (const l of listeners) await l.close();
  await boss.stop({ graceful: false });
  await db.close();
});

/** A listener recording payloads, with a way to wait for the next one matching `want`. */
function listen() {
  const seen: string[] = [];
  const connects = { n: 0 };
  let waiter: { want: (p: string) => boolean; resolve: () => void } | undefined;
  const l = listenForJobs(
    db.url,
    (p) => {
      seen.push(p);
      if (waiter?.want(p)) waiter.resolve();
    },
    () => connects.n++,
  );
  listeners.push(l);
  const next = (want: (p: string) => boolean) =>
    new Promise<void>((resolve) => {
      waiter = { want, resolve };
    });
  return { seen, next, connects };
}

test('a job is announced at COMMIT, and never when its transaction rolls back', async () => {
  const { seen, next } = listen();
  // Connected: a (re)connect wakes every queue.
  await next((p) => p === MERGE_QUEUE);
  seen.length = 0;
  const client = await db.pool.connect();
  try {
    await client.query('BEGIN');
    await sendJob(boss, client, PART_QUEUE, { importId: 'rolled-back', n: 0 });
    await client.query('ROLLBACK');
    const announced = next((p) => p === PART_QUEUE);
    await client.query('BEGIN');
    await sendJob(boss, client, PART_QUEUE, { importId: 'committed', n: 0 });
    assert.deepEqual(seen, [], 'nothing before COMMIT');
    await client.query('COMMIT');
    await announced;
  } finally {
    client.release();
  }
  assert.deepEqual(seen, [PART_QUEUE], 'one announcement: the committed job');
  const jobs = await boss.fetch<{ importId: string }>(PART_QUEUE, { batchSize: 10 });
  assert.deepEqual(jobs.map((j) => j.data.importId), ['committed']);
});

test('a listener whose connection is killed reconnects and wakes every queue', async () => {
  const { seen, next, connects } = listen();
  await next((p) => p === MERGE_QUEUE);
  assert.equal(connects.n, 1, 'onConnect after the first connect');
  seen.length = 0;
  const woken = next((p) => p === MERGE_QUEUE);
  const { rowCount } = await db.pool.query(
    `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'sluice-listen' AND datname = current_database()`,
  );
  assert.ok((rowCount ?? 0) >= 1, 'the listening connection was found');
  await woken;
  assert.deepEqual(seen, [PART_QUEUE, MERGE_QUEUE], 'every queue woken after the reconnect');
  assert.equal(connects.n, 2, 'onConnect after the reconnect (the merges re-check their parts)');
});

test('two parts that COPYed rejects complete one after the other, without a deadlock', async () => {
  // Each part's transaction inserts its rejects (a KEY SHARE lock on the import row, from
  // the foreign key), then locks the row to complete. FOR UPDATE there deadlocked.
  const { rows } = await db.pool.query<{ id: string }>(
    `INSERT INTO imports (pipeline, source, status) VALUES ('leads', 'test', 'running') RETURNING id`,
  );
  const id = rows[0]!.id;
  const [a, b] = [await db.pool.connect(), await db.pool.connect()];
  try {
    for (const [c, line] of [[a, 2], [b, 3]] as const) {
      await c.query('BEGIN');
      await c.query(`INSERT INTO import_rejects (import_id, line, reason, raw) VALUES ($1, $2, 'bad', 'x')`, [id, line]);
    }
    const first = lockImport(a, id).then(async (r) => {
      await a.query('COMMIT');
      return r;
    });
    const second = lockImport(b, id).then(async (r) => {
      await b.query('COMMIT');
      return r;
    });
    const settled = await Promise.allSettled([first, second]);
    assert.deepEqual(settled.map((s) => s.status), ['fulfilled', 'fulfilled'], JSON.stringify(settled.map((s) => (s.status === 'rejected' ? String(s.reason) : 'ok'))));
    const { rows: rejects } = await db.pool.query<{ n: number }>('SELECT count(*)::int AS n FROM import_rejects WHERE import_id = $1', [id]);
    assert.equal(rejects[0]!.n, 2);
  } finally {
    for (const c of [a, b]) {
      await c.query('ROLLBACK').catch(() => {});
      c.release();
    }
  }
});

test('a queue whose setup fails after it started is stopped: its pool and supervisor would keep the process alive', async () => {
  const ours = await db.pool.query<{ pids: number[] }>(
    `SELECT coalesce(array_agg(pid), '{}') AS pids FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'sluice-jobs'`,
  );
  const jobPids = ours.rows[0]!.pids; // the connections of this file's own queue
  const createQueue = PgBoss.prototype.createQueue;
  PgBoss.prototype.createQueue = async () => {
    throw new Error('connection dropped while creating the queues');
  };
  try {
    await assert.rejects(startBoss(db.url), /connection dropped while creating the queues/);
  } finally {
    PgBoss.prototype.createQueue = createQueue;
  }
  await until(async () => {
    const { rows } = await db.pool.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'sluice-jobs' AND pid <> ALL ($1::int[])`,
      [jobPids],
    );
    return rows[0]!.n === 0 ? true : undefined;
  }, 'the failed queue to close its connections', 5_000);
});

test("a merge job may run 24 h (pg-boss's maximum) before pg-boss fails it, also on a database set up by an earlier version", async () => {
  // pg-boss fails an active job past started_on + expire_seconds whatever its heartbeats say:
  // with the 1 h it had, a merge following a long upload was failed and a second one started.
  const expiry = async () =>
    (await db.pool.query<{ name: string; expire_seconds: number }>(
      `SELECT name, expire_seconds FROM pgboss.queue WHERE name IN ($1, $2) ORDER BY name`,
      [MERGE_QUEUE, PART_QUEUE],
    )).rows.map((r) => [r.name, r.expire_seconds]);
  assert.equal(MERGE_EXPIRE_SECONDS, 86_400);
  assert.deepEqual(await expiry(), [[MERGE_QUEUE, 86_400], [PART_QUEUE, 3600]]);
  // A queue an earlier version created keeps its options: the next start brings it up to date.
  await boss.updateQueue(MERGE_QUEUE, { expireInSeconds: 3600 });
  assert.deepEqual(await expiry(), [[MERGE_QUEUE, 3600], [PART_QUEUE, 3600]]);
  const restarted = await startBoss(db.url, { supervise: false });
  try {
    assert.deepEqual(await expiry(), [[MERGE_QUEUE, 86_400], [PART_QUEUE, 3600]]);
    // A job takes its queue's expiry when it is sent; the dead worker is still found by the heartbeat.
    const client = await db.pool.connect();
    try {
      await client.query('BEGIN');
      await sendJob(restarted, client, MERGE_QUEUE, { importId: 'expiry' });
      const { rows } = await client.query(`SELECT expire_seconds, heartbeat_seconds FROM pgboss.job WHERE name = $1 AND data->>'importId' = 'expiry'`, [MERGE_QUEUE]);
      assert.deepEqual(rows, [{ expire_seconds: 86_400, heartbeat_seconds: 10 }]);
    } finally {
      await client.query('ROLLBACK');
      client.release();
    }
  } finally {
    await restarted.stop({ graceful: false });
  }
});
