/**
 * Syncs interrupted by a lost database or a stopped process never stay `running`: a running
 * sync holds its owner lock, a lost connection is retried, a failed outcome is written once
 * the database is back, and the sweep fails the syncs whose owner is gone (a sync killed with
 * kill -9 included), while it leaves live ones alone.
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, test } from 'node:test';
import Fastify from 'fastify';
import pg from 'pg';
import { startProviderSimulator, type ProviderSimulator } from '../../src/dev/provider-simulator.ts';
import { openDb, type Pool } from '../../src/db/pool.ts';
import {
  failInterruptedSyncs,
  finishSync,
  getSync,
  insertSync,
  startSync,
  SYNC_INTERRUPTED,
  SYNC_OWNER_LOCK,
} from '../../src/db/sql/events.ts';
import { providerSyncService } from '../../src/pipelines/events/sync-service.ts';
import { retryable, syncEvents } from '../../src/pipelines/events/sync.ts';
import { testDb, type TestDb } from '../helpers/db.ts';
import { killAll, startSluice, until } from '../helpers/processes.ts';
import { startTcpProxy } from '../helpers/tcp-proxy.ts';
import { RESPONSE_1 } from './feeds.ts';

let db: TestDb;
let sim: ProviderSimulator;
before(async () => {
  db = await testDb();
  sim = await startProviderSimulator({ responses: [RESPONSE_1] });
});
after(async () => {
  await killAll();
  await sim.close();
  await db.close();
});

const COUNTS = { attempts: 1, bytes: 0, eventsSeen: 0, eventsNew: 0, eventsChanged: 0, eventsRejected: 0, eventsSuperseded: 0 };

/** The backend holding sync `id`'s owner lock, if any. */
async function ownerPid(id: number): Promise<number | undefined> {
  const { rows } = await db.pool.query<{ pid: number }>(
    `SELECT pid FROM pg_locks
      WHERE locktype = 'advisory' AND granted AND objsubid = 2 AND classid = $1::int::oid AND objid = $2::int::oid
        AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`,
    [SYNC_OWNER_LOCK, id],
  );
  return rows[0]?.pid;
}

/** The newest sync record's id (the one a sync under test just created). */
async function newestSync(): Promise<number | undefined> {
  const { rows } = await db.pool.query<{ id: number }>('SELECT max(id) AS id FROM provider_syncs');
  return rows[0]?.id ?? undefined;
}

/** Resolves once sync `id` holds its lock from a backend other than `not`, and the provider was fetched `fetches` times. */
function running(id: () => Promise<number | undefined>, fetches: number, not?: number): Promise<{ id: number; pid: number }> {
  return until(async () => {
    const syncId = await id();
    const pid = syncId === undefined ? undefined : await ownerPid(syncId);
    return syncId !== undefined && pid !== undefined && pid !== not && sim.fetches >= fetches ? { id: syncId, pid } : undefined;
  }, 'the sync to hold its lock while it fetches');
}

test('connection-level failures of a database going down are retryable; other database errors are not', async () => {
  // A real refused connection (nothing listens on the port), by address and by name.
  const closed = net.createServer();
  await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
  const port = (closed.address() as net.AddressInfo).port;
  await new Promise((resolve) => closed.close(resolve));
  for (const host of ['127.0.0.1', 'localhost']) {
    const client = new pg.Client({ host, port, user: 'x', database: 'x' });
    const err = await client.connect().then(() => undefined, (e: unknown) => e);
    assert.ok(err, `${host}: the connection was refused`);
    assert.ok(retryable(err), `${host}: ${(err as Error).message}`);
  }
  const withCode = (code: string) => Object.assign(new Error(code), { code });
  for (const code of ['57P01', '57P02', '57P03', '08006', '08001', 'ECONNRESET', 'ECONNREFUSED', '40001']) assert.ok(retryable(withCode(code)), code);
  assert.ok(retryable(new Error('Connection terminated unexpectedly')));
  assert.ok(retryable(new Error('Connection terminated')));
  for (const code of ['23505', '42P01', '22008']) assert.equal(retryable(withCode(code)), false, code);
  assert.equal(retryable(new Error('Cannot use a pool after calling end on the pool')), false);
});

test('the sweep fails a sync left running by a dead owner, and leaves one holding its lock alone', async () => {
  // Dead: the row a sync writes, with no lock held (its process was killed).
  const dead = await insertSync(db.pool, 'http://provider.test/feed', 'test');
  // Alive: a row created as a sync creates it, its lock held by this connection.
  const owner = await db.pool.connect();
  try {
    const live = await startSync(owner, 'http://provider.test/feed', 'test');
    assert.equal(live.locked, true);

    assert.deepEqual(await failInterruptedSyncs(db.pool), [dead]);
    const deadRow = await getSync(db.pool, dead);
    assert.equal(deadRow?.status, 'failed');
    assert.equal(deadRow?.error, SYNC_INTERRUPTED);
    assert.ok(deadRow?.finished_at, 'finished_at recorded');
    assert.equal((await getSync(db.pool, live.id))?.status, 'running', 'a sync holding its lock is left alone');
    assert.deepEqual(await failInterruptedSyncs(db.pool), [], 'a second sweep finds nothing');

    // Its owner dies (the server ends its session): the next sweep fails it.
    const pid = await ownerPid(live.id);
    assert.ok(pid, 'the live sync holds its lock');
    await db.pool.query('SELECT pg_terminate_backend($1)', [pid]);
    await until(async () => (await ownerPid(live.id)) === undefined, 'the lock to be let go with its session');
    assert.deepEqual(await failInterruptedSyncs(db.pool), [live.id]);
    assert.equal((await getSync(db.pool, live.id))?.status, 'failed');

    // The owner's own outcome, written later, replaces the sweep's guess; a failure never
    // replaces a completion.
    await finishSync(db.pool, live.id, 'failed', COUNTS, 'provider answered HTTP 500');
    assert.equal((await getSync(db.pool, live.id))?.error, 'provider answered HTTP 500');
    await db.pool.query("UPDATE provider_syncs SET status = 'completed', error = NULL WHERE id = $1", [dead]);
    await finishSync(db.pool, dead, 'failed', COUNTS, 'late');
    assert.equal((await getSync(db.pool, dead))?.status, 'completed');
  } finally {
    owner.release(true); // its session, and any lock it still holds, ends with it
  }
});

test("the sync's connection terminated mid-fetch: retried on a new connection that takes the lock again, and completed", async () => {
  const fetches = sim.fetches;
  sim.setMode('timeout', 1); // the first fetch hangs, the next one is served
  const result = syncEvents(db.pool, { url: sim.url, trigger: 'test', retries: 1, backoffMs: 5, idleTimeoutMs: 60_000 });
  try {
    const first = await running(newestSync, fetches + 1);
    assert.deepEqual(await failInterruptedSyncs(db.pool), [], 'a running sync is alive');
    await db.pool.query('SELECT pg_terminate_backend($1)', [first.pid]);
    const r = await result;
    assert.equal(r.status, 'completed', r.error);
    assert.equal(r.attempts, 2);
    assert.equal(r.syncId, first.id);
    const row = await getSync(db.pool, first.id);
    assert.deepEqual([row?.status, row?.attempts, row?.events_seen], ['completed', 2, 3]);
    assert.equal(await ownerPid(first.id), undefined, 'the lock is let go at the end');
  } finally {
    sim.setMode('ok');
    await result.catch(() => {});
  }
});

test('the database down when the failure is recorded: the write is retried until it is back, and the row is never left running', async (t) => {
  const proxy = await startTcpProxy(db.url);
  const pool: Pool = await openDb({ url: proxy.url, migrate: false, max: 3 });
  t.after(async () => {
    await pool.end();
    await proxy.close();
  });
  const fetches = sim.fetches;
  sim.setMode('timeout', 1);
  const result = syncEvents(pool, { url: sim.url, trigger: 'test', retries: 0, idleTimeoutMs: 60_000 });
  try {
    const { id } = await running(newestSync, fetches + 1);
    proxy.down();
    // The lock went with the connection: a sweep (another process's) fails the row.
    await until(async () => (await ownerPid(id)) === undefined, 'the lock to be let go');
    assert.deepEqual(await failInterruptedSyncs(db.pool), [id]);
    // The attempt fails with its lost connection, and the first write of its failure is refused.
    await until(async () => proxy.refused >= 1, 'the failed outcome to meet the database down');
    proxy.up();
    const r = await result;
    assert.equal(r.status, 'failed');
    assert.equal(r.attempts, 1);
    assert.match(r.error ?? '', /Connection terminated/);
    // The owner's record, written once the database was back, replaced the sweep's.
    const row = await getSync(db.pool, id);
    assert.deepEqual([row?.status, row?.attempts, row?.error], ['failed', 1, r.error]);
    assert.ok(row?.finished_at, 'finished_at recorded');
  } finally {
    sim.setMode('ok');
    proxy.up();
    await result.catch(() => {});
  }
});

test('a `sluice sync events` process killed (kill -9) mid-sync: the next sync fails its row, then completes', async () => {
  const fetches = sim.fetches;
  sim.setMode('timeout', 1);
  const before = (await newestSync()) ?? 0;
  const p = startSluice(['sync', 'events', '--once', '--url', sim.url, '--retries', '0'], { DATABASE_URL: db.url });
  const killed = await running(async () => {
    if (p.child.exitCode !== null) throw new Error(`the sync ended before it was killed: ${p.output()}`);
    const id = await newestSync();
    return id !== undefined && id > before ? id : undefined;
  }, fetches + 1);
  await p.kill('SIGKILL');
  await until(async () => (await ownerPid(killed.id)) === undefined, "the killed process's session to end");
  assert.equal((await getSync(db.pool, killed.id))?.status, 'running', 'left running by the killed process');

  const next = await syncEvents(db.pool, { url: sim.url, trigger: 'test', retries: 0 });
  assert.equal(next.status, 'completed', next.error);
  assert.deepEqual(next.interruptedSyncs, [killed.id]);
  const row = await getSync(db.pool, killed.id);
  assert.deepEqual([row?.status, row?.error], ['failed', SYNC_INTERRUPTED]);
  assert.ok(row?.finished_at);
});

test('the serve service fails the syncs of stopped processes when it starts', async () => {
  const dead = await insertSync(db.pool, 'http://provider.test/feed', 'schedule');
  const app = Fastify();
  delete process.env.SLUICE_PROVIDER_URL;
  try {
    assert.equal(await providerSyncService.start({ pool: db.pool }, app), undefined);
  } finally {
    await app.close();
  }
  const row = await getSync(db.pool, dead);
  assert.deepEqual([row?.status, row?.error], ['failed', SYNC_INTERRUPTED]);
  assert.deepEqual(await db.pool.query("SELECT id FROM provider_syncs WHERE status = 'running'").then((r) => r.rows), []);
});
