/**
 * Flushes under database faults, on real PostgreSQL: a connection dropped in the middle of a
 * flush is retried and the visits acknowledged once stored; a stuck database (a table lock
 * held) turns into 503 at the deadline, with nothing written, and does not hold up shutdown;
 * visits waiting behind it are bounded in number and memory.
 */
import assert from 'node:assert/strict';
import { after, before, test, type TestContext } from 'node:test';
import Fastify, { type FastifyInstance } from 'fastify';
import { openDb, type Pool } from '../../src/db/pool.ts';
import { handleError } from '../../src/http/errors.ts';
import { visitsRoutes, type VisitsRouteOptions } from '../../src/http/routes/visits.ts';
import { visitBytes } from '../../src/pipelines/visits/ingest-buffer.ts';
import { pendingVisits } from '../../src/pipelines/visits/metrics.ts';
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

/** The visits app with every flush stuck behind a lock on visit_seconds until `lock.release()`. */
async function stuckApp(t: TestContext, options: VisitsRouteOptions) {
  const app = await visitsApp(db.pool, options);
  const lock = await holdLock(db.pool, 'visit_seconds');
  // Without a deadline the requests would wait for the lock: release it eventually, so that
  // such a failure shows as failed assertions rather than a hung test.
  const watchdog = setTimeout(() => void lock.release(), 20_000);
  t.after(async () => {
    clearTimeout(watchdog);
    await lock.release();
    await app.close();
  });
  return { app, lock };
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
  const { app, lock } = await stuckApp(t, { ingest: { timeoutMs: 400 } });

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

test('waiting visits are bounded by count and by memory: past either, 503 at once; the ones taken are stored once', async (t) => {
  // One flush at a time, held by the lock; a request waits behind it. Bounds: 3 visits, or
  // the memory of two visits with 2,000-character paths.
  const longPath = `/${'p'.repeat(1999)}`;
  const longBytes = visitBytes({ visitorId: 'bound-long-1', pagePath: longPath, visitedAt: 0, receivedAt: 0 });
  const { app, lock } = await stuckApp(t, { ingest: { concurrency: 1, maxPending: 3, maxPendingBytes: 2 * longBytes + 500, timeoutMs: 15_000 } });
  const post = (visitor_id: string, page_path = '/bound') =>
    app.inject({ method: 'POST', url: '/visits', headers: { 'content-type': 'application/json' }, payload: JSON.stringify({ page_path, visitor_id }) });

  // Requests are taken one by one, in this order (each in the buffer before the next is sent:
  // their bodies are read concurrently otherwise).
  const base = (await pendingVisits.get()).values[0]?.value ?? 0;
  const taken = async (n: number) => waitUntil(async () => ((await pendingVisits.get()).values[0]?.value ?? 0) === base + n, `${n} visits taken`);
  // The first request's flush waits for the lock; it no longer counts as waiting.
  const first = post('bound-0');
  await waitUntil(async () => (await lockWaiters(db.pool)).length === 1, 'the first flush to wait for the lock');
  // Memory: two long visits wait; a third does not fit, though the count (3) would take it.
  const long1 = post('bound-long-1', longPath);
  await taken(2);
  const long2 = post('bound-long-2', longPath);
  await taken(3);
  const refused = await post('bound-long-3', longPath);
  assert.equal(refused.statusCode, 503, refused.body);
  assert.deepEqual(refused.json().error, { code: 'unavailable', message: 'too many visits waiting to be stored; retry shortly' });
  // A short visit still fits in both bounds (3 visits); a fourth is past the count.
  const short = post('bound-short-1');
  await taken(4);
  const overCount = await post('bound-short-2');
  assert.equal(overCount.statusCode, 503, overCount.body);
  assert.equal(overCount.json().error.message, 'too many visits waiting to be stored; retry shortly');

  await lock.release();
  for (const res of await Promise.all([first, long1, long2, short])) assert.equal(res.statusCode, 202, res.body);
  assert.equal(await stored('bound-'), 4, 'the four taken are stored, the two refused are not');
  assert.equal(await stored('bound-long-3'), 0);
  assert.equal(await stored('bound-short-2'), 0);
});
