/**
 * The live view's numbers at a fixed instant (windows and their edges), top pages without
 * query strings, /live/snapshot served from the latest snapshot, the /live page's headers,
 * the SSE feed over a real socket, and /metrics.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { buildServer } from '../../src/http/server.ts';
import { subscribeSse } from '../../src/loadgen/sse-client.ts';
import { compactRollups } from '../../src/db/sql/visits.ts';
import { LiveHub, type LiveSnapshot } from '../../src/pipelines/visits/live-view.ts';
import { maintainVisits } from '../../src/pipelines/visits/maintenance.ts';
import { applyAllVisitorBatches } from '../../src/pipelines/visits/visitor-applier.ts';
import { testDb, type TestDb } from '../helpers/db.ts';
import { holdLock, lockWaiters } from './db-faults.ts';

let db: TestDb;
let app: FastifyInstance;
let base: string;
before(async () => {
  db = await testDb();
  app = await buildServer({ pool: db.pool });
  base = await app.listen({ port: 0, host: '127.0.0.1' });
});
after(async () => {
  await app.close();
  await db.close();
});

async function post(visits: object[]): Promise<void> {
  const res = await fetch(`${base}/visits/batch`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(visits) });
  assert.equal(res.status, 202, await res.text());
}

test('a snapshot counts exactly what falls in its windows', async () => {
  // A fixed "now" in the middle of a UTC day, so "today" and the windows are unambiguous.
  const now = new Date(Math.floor(Date.now() / 86_400_000) * 86_400_000 + 12 * 3_600_000 + 500);
  if (now.getTime() > Date.now()) now.setTime(now.getTime() - 86_400_000);
  const iso = (msBeforeNow: number) => new Date(now.getTime() - msBeforeNow).toISOString();
  const snapTime = new Date(now);
  // Relative to `now`; this test only needs `now` within the last 7 days (accepted age).
  await post([
    { page_path: '/w/a', visitor_id: 'w1', visited_at: iso(1_000) }, // the last complete second
    { page_path: '/w/a', visitor_id: 'w2', visited_at: iso(1_000) },
    { page_path: '/w/b', visitor_id: 'w1', visited_at: iso(10_000) },
    { page_path: '/w/b', visitor_id: 'w3', visited_at: iso(299_000) }, // inside 5 minutes
    { page_path: '/w/c', visitor_id: 'w4', visited_at: iso(301_000) }, // outside: not a current visitor
    { page_path: '/w/c', visitor_id: 'w5', visited_at: iso(2 * 3_600_000) }, // today, long ago
  ]);
  await applyAllVisitorBatches(db.pool);
  const hub = new LiveHub(db.pool);
  const s = await hub.snapshot(snapTime);
  assert.equal(s.window_seconds, 300);
  assert.equal(s.per_second.length, 300);
  assert.equal(s.series_end, Math.floor(snapTime.getTime() / 1000) - 1);
  assert.equal(s.visits_last_second, 2);
  assert.equal(s.per_second[299 - 9], 1, 'the visit 10 s ago');
  assert.equal(s.per_second[299 - 298], 1, 'the visit 299 s ago');
  assert.equal(s.per_second.reduce((a, b) => a + b, 0), 4);
  assert.equal(s.current_visitors, 3, 'w1, w2, w3 (w4 was 301 s ago)');
  assert.equal(s.visits_today, 6);
  assert.deepEqual(s.top_pages.slice(0, 2), [
    { page_path: '/w/a', visits: 2 },
    { page_path: '/w/b', visits: 2 },
  ]);
  assert.deepEqual(s.recent.map((r) => r.visitor_id), ['w5', 'w4', 'w3', 'w1', 'w2', 'w1']);
  hub.close();
});

test('top pages count a path without its query string or fragment; visits keep it whole', async () => {
  const paths = ['/q/page?utm_id=1', '/q/page?utm_id=2', '/q/page#pricing', '/q/page', '/q/other?x=1#y'];
  await post(paths.map((page_path, i) => ({ page_path, visitor_id: `q${i}` })));
  const { rows } = await db.pool.query<{ page_path: string; visits: number }>(
    "SELECT page_path, sum(visits)::int AS visits FROM page_minutes WHERE page_path LIKE '/q/%' GROUP BY page_path ORDER BY page_path",
  );
  assert.deepEqual(rows, [
    { page_path: '/q/other', visits: 1 },
    { page_path: '/q/page', visits: 4 },
  ]);
  const stored = await db.pool.query<{ page_path: string }>("SELECT page_path FROM visits WHERE page_path LIKE '/q/%' ORDER BY id");
  assert.deepEqual(stored.rows.map((r) => r.page_path), paths);
  const hub = new LiveHub(db.pool);
  const s = await hub.snapshot();
  assert.deepEqual(s.top_pages.find((p) => p.page_path.startsWith('/q/page')), { page_path: '/q/page', visits: 4 });
  assert.equal(s.recent[0]!.page_path, '/q/other?x=1#y', 'the most recent visits show the path as sent');
  hub.close();
});

test('GET /live/snapshot answers the latest snapshot: one read for many requests', async () => {
  let checkouts = 0;
  const count = () => checkouts++;
  db.pool.on('acquire', count);
  try {
    const answers = await Promise.all(Array.from({ length: 40 }, () => app.inject({ method: 'GET', url: '/live/snapshot' })));
    assert.deepEqual(new Set(answers.map((r) => r.statusCode)), new Set([200]));
    const reads = new Set(answers.map((r) => (r.json() as LiveSnapshot).now));
    // One read, two if the requests straddled a tick (the cache lasts one second).
    assert.ok(reads.size <= 2, `${reads.size} snapshots read for 40 requests`);
    assert.ok(checkouts <= 3, `${checkouts} pool checkouts for 40 requests`);
  } finally {
    db.pool.off('acquire', count);
  }
});

test('a stuck database: the live view gives up its read (unavailable) instead of holding a pool client', async (t) => {
  const lock = await holdLock(db.pool, 'visit_seconds');
  t.after(() => lock.release());
  const hub = new LiveHub(db.pool, { queryTimeoutMs: 200 });
  await assert.rejects(hub.current(), (err: Error & { code?: string }) => err.code === 'unavailable');
  assert.deepEqual(await lockWaiters(db.pool), [], 'PostgreSQL cancelled the read');
  hub.close();
});

test('a visitor whose earlier visit was stamped in the future still counts as current', async () => {
  await applyAllVisitorBatches(db.pool);
  const hub = new LiveHub(db.pool);
  // A fixed instant just ahead of the visits below, for both snapshots.
  const at = new Date(Date.now() + 2000);
  const before = await hub.snapshot(at);
  // 4 minutes ahead: within the 5 minutes of clock skew accepted.
  await post([{ page_path: '/future', visitor_id: 'fut', visited_at: new Date(Date.now() + 240_000).toISOString() }]);
  await post([{ page_path: '/future', visitor_id: 'fut' }]);
  await applyAllVisitorBatches(db.pool);
  const after = await hub.snapshot(at);
  assert.equal(after.current_visitors, before.current_visitors + 1);
  const { rows } = await db.pool.query<{ ahead: boolean }>("SELECT last_seen_at > now() AS ahead FROM visitors WHERE id = 'fut'");
  assert.equal(rows[0]!.ahead, false, 'last_seen_at is clamped to the receipt');
  hub.close();
});

test('GET /live serves the page with a strict Content-Security-Policy', async () => {
  const res = await fetch(`${base}/live`);
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type')!, /text\/html/);
  const csp = res.headers.get('content-security-policy')!;
  assert.match(csp, /default-src 'none'/);
  assert.match(csp, /script-src 'sha256-[A-Za-z0-9+/=]+'/);
  assert.doesNotMatch(csp, /unsafe-inline/);
  assert.equal(res.headers.get('x-content-type-options'), 'nosniff');
  const html = await res.text();
  assert.match(html, /new EventSource\('\/live\/stream'\)/);
  assert.doesNotMatch(html, /<script src=|https?:\/\//, 'no external scripts or CDNs');
});

test('/live/stream pushes a snapshot every second', async () => {
  const got: Array<{ s: LiveSnapshot; at: number }> = [];
  let resolve!: () => void;
  const three = new Promise<void>((r) => (resolve = r));
  const sub = subscribeSse(`${base}/live/stream`, (data, at) => {
    got.push({ s: JSON.parse(data) as LiveSnapshot, at });
    if (got.length === 3) resolve();
  });
  await three;
  sub.close();
  assert.ok(got[0]!.s.visits_today >= 0 && Array.isArray(got[0]!.s.per_second));
  const gaps = got.slice(1).map((g, i) => g.at - got[i]!.at);
  for (const gap of gaps.slice(1)) assert.ok(gap > 200 && gap < 4000, `pushes about 1 s apart, got ${gaps.join(', ')} ms`);
});

test('closing the server ends open streams instead of waiting for them', async () => {
  const other = await buildServer({ pool: db.pool });
  const url = await other.listen({ port: 0, host: '127.0.0.1' });
  let first!: () => void;
  const opened = new Promise<void>((r) => (first = r));
  const sub = subscribeSse(`${url}/live/stream`, () => first());
  await opened;
  await other.close();
  await sub.done;
});

test('/metrics has ingest rate, flush batch size, flush latency and lag', async () => {
  await post([{ page_path: '/m', visitor_id: 'm' }]);
  const text = await (await fetch(`${base}/metrics`)).text();
  for (const name of [
    'sluice_visits_ingested_total',
    'sluice_visits_ingest_rate',
    'sluice_visits_flush_batch_size_bucket',
    'sluice_visits_flush_duration_seconds_bucket',
    'sluice_visits_lag_seconds_bucket',
    'sluice_visits_pending',
  ]) {
    assert.match(text, new RegExp(`^${name}`, 'm'), name);
  }
});

test('compaction merges appended rollup rows without changing what the page shows', async () => {
  const at = new Date(Date.now() - 60_000);
  for (let i = 0; i < 3; i++) await post([{ page_path: '/compact', visitor_id: `c${i}`, visited_at: at.toISOString() }]);
  await applyAllVisitorBatches(db.pool);
  const rows = async () =>
    (await db.pool.query<{ n: number }>("SELECT count(*)::int AS n FROM page_minutes WHERE page_path = '/compact'")).rows[0]!.n;
  assert.equal(await rows(), 3, 'one appended row per flush');
  const hub = new LiveHub(db.pool);
  const now = new Date();
  const before = await hub.snapshot(now);
  assert.equal(await compactRollups(db.pool, new Date(now.getTime() - 3_600_000), now), true);
  assert.equal(await rows(), 1);
  const after = await hub.snapshot(now);
  // (The lag sample of a flush is written just after its acknowledgement: leave it out.)
  assert.deepEqual({ ...after, query_ms: 0, lag: null }, { ...before, query_ms: 0, lag: null });
  hub.close();
});

test('maintenance creates the next partitions and drops stale rows', async () => {
  await db.pool.query("INSERT INTO visitor_seconds VALUES (now() - interval '1 hour', 5)");
  await db.pool.query("INSERT INTO recent_visits (received_at, visited_at, visitor_id, page_path) SELECT now(), now(), 'r', '/r' FROM generate_series(1, 1500)");
  await maintainVisits(db.pool);
  const recent = await db.pool.query<{ n: number }>('SELECT count(*)::int AS n FROM recent_visits');
  assert.ok(recent.rows[0]!.n <= 1000, `recent_visits keeps its newest 1,000 rows, has ${recent.rows[0]!.n}`);
  const tomorrow = new Date(Date.now() + 86_400_000).toISOString().slice(0, 10).replaceAll('-', '');
  const { rows } = await db.pool.query('SELECT to_regclass($1) AS t', [`visits_${tomorrow}`]);
  assert.ok(rows[0].t, 'tomorrow has a partition');
  const stale = await db.pool.query("SELECT 1 FROM visitor_seconds WHERE second < now() - interval '15 minutes'");
  assert.equal(stale.rowCount, 0);
});

test('maintenance gives way to a held lock (5 s) instead of waiting behind it', async (t) => {
  const lock = await holdLock(db.pool, 'visit_seconds');
  t.after(() => lock.release());
  await assert.rejects(maintainVisits(db.pool), (err: Error & { code?: string }) => err.code === '55P03'); // lock_not_available
  assert.deepEqual(await lockWaiters(db.pool), [], 'no pool client left waiting');
});
