/**
 * Flushes under database faults, on real PostgreSQL: a connection dropped in the middle of a
 * flush is retried and the visits acknowledged once stored; a stuck database (a table lock
 * held) turns into 503 at the deadline, with nothing written, and does not hold up shutdown.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import Fastify, { type FastifyInstance } from 'fastify';
import { openDb, type Pool } from '../../src/db/pool.ts';
import { handleError } from '../../src/http/errors.ts';
import { visitsRoutes, type VisitsRouteOptions } from '../../src/http/routes/visits.ts';
import { testDb, type TestDb } from '../helpers/db.ts';
import { until } from '../helpers/processes.ts';
import { startTcpProxy } from '../helpers/tcp-proxy.ts';
import { holdLock, lockWaiters } from './db-faults.ts';

/** `until` with the 20 s these waits had. */
const waitUntil = (check: () => Promise<boolean>, what: string) => until(check, what, 20_000);

let db: TestDb;
before(async () => {
  db = await testDb();
});
after(async () => {
  await db.close();
});

async function visitsApp(pool: Pool, options: VisitsRouteOptions): Promise<FastifyInstance> {
  const app = Fastify();
  app.setErrorHandler(handleError);
  visitsRoutes(app, { pool }, options);
  await app.ready();
  return app;
}

const visit = (visitor_id: string) => ({
  method: 'POST' as const,
  url: '/visits',
  headers: { 'content-type': 'application/json' },
  payload: JSON.stringify({ page_path: '/fault', visitor_id }),
});

async function stored(visitorPrefix: string): Promise<number> {
  const { rows } = await db.pool.query<{ n: number }>('SELECT count(*)::int AS n FROM visits WHERE visitor_id LIKE $1', [`${visitorPrefix}%`]);
  return rows[0]!.n;
}

test('a connection dropped during a flush (no SQLSTATE) is retried: 202 and stored once', async (t) => {
  const proxy = await startTcpProxy(db.url);
  const pool = await openDb({ url: proxy.url, migrate: false, max: 4 });
  const app = await visitsApp(pool, { ingest: { timeoutMs: 60_000 } });
  const lock = await holdLock(db.pool, 'visit_seconds');
  t.after(async () => {
    await lock.release();
    await app.close();
    await pool.end();
    await proxy.close();
  });

  const response = app.inject(visit('drop-1'));
  // The flush has COPYed its visits and waits for the lock inside its transaction.
  await waitUntil(async () => (await lockWaiters(db.pool)).length === 1, 'the flush to wait for the lock');
  const acceptedBefore = proxy.accepted;
  // node-pg reports this as "Connection terminated unexpectedly", without a code.
  proxy.dropAll();
  // The retry opens a new connection and waits for the lock too (beside the orphaned backend,
  // which learns of the lost connection only after the lock is released and rolls back).
  await waitUntil(async () => (await lockWaiters(db.pool)).length === 2 && proxy.accepted > acceptedBefore, 'the retried flush');
  await lock.release();
  const res = await response;
  assert.equal(res.statusCode, 202, res.body);
  assert.equal(await stored('drop-'), 1, 'stored once: the dropped attempt never committed');
});

test("the flush's backend terminated (pg_terminate_backend) is retried too", async (t) => {
  const app = await visitsApp(db.pool, { ingest: { timeoutMs: 60_000 } });
  const lock = await holdLock(db.pool, 'visit_seconds');
  t.after(async () => {
    await lock.release();
    await app.close();
  });
  const response = app.inject(visit('term-1'));
  await waitUntil(async () => (await lockWaiters(db.pool)).length === 1, 'the flush to wait for the lock');
  const [pid] = await lockWaiters(db.pool);
  await db.pool.query('SELECT pg_terminate_backend($1)', [pid]);
  await waitUntil(async () => {
    const waiting = await lockWaiters(db.pool);
    return waiting.length === 1 && waiting[0] !== pid;
  }, 'the retried flush');
  await lock.release();
  const res = await response;
  assert.equal(res.statusCode, 202, res.body);
  assert.equal(await stored('term-'), 1);
});

test('a stuck database: 503 at the deadline, nothing written, and shutdown does not wait for the lock', async (t) => {
  const app = await visitsApp(db.pool, { ingest: { timeoutMs: 400 } });
  const lock = await holdLock(db.pool, 'visit_seconds');
  // Without a deadline the requests would wait for the lock: release it eventually, so that
  // such a failure shows as failed assertions rather than a hung test.
  const watchdog = setTimeout(() => void lock.release(), 20_000);
  t.after(async () => {
    clearTimeout(watchdog);
    await lock.release();
    await app.close();
  });

  const started = Date.now();
  const res = await app.inject(visit('stuck-1'));
  // The lock is still held: the answer came from the deadline.
  assert.equal(res.statusCode, 503, res.body);
  assert.equal(res.json().error.code, 'unavailable');
  assert.match(res.json().error.message, /not stored within 400 ms/);
  assert.ok(Date.now() - started < 10_000, `answered after ${Date.now() - started} ms`);
  // PostgreSQL ended the flush's transaction (transaction_timeout): no backend waits any more.
  await waitUntil(async () => (await lockWaiters(db.pool)).length === 0, 'the stuck flush to be rolled back');

  // Shutdown with a request waiting, the lock still held: the request gets 503, close returns.
  const pending = app.inject(visit('stuck-2'));
  await waitUntil(async () => (await lockWaiters(db.pool)).length === 1, 'the second flush to wait for the lock');
  await app.close();
  assert.equal((await pending).statusCode, 503);
  assert.equal((await lockWaiters(db.pool)).length, 0);

  await lock.release();
  assert.equal(await stored('stuck-'), 0, 'nothing of the timed-out flushes was written');
  const { rows } = await db.pool.query<{ visits: number; seconds: number }>(
    'SELECT (SELECT count(*) FROM visits)::int AS visits, (SELECT coalesce(sum(visits), 0) FROM visit_seconds)::int AS seconds',
  );
  assert.equal(rows[0]!.seconds, rows[0]!.visits, 'rollups equal the visits');
});
