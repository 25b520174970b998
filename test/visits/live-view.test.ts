/**
 * The live view's numbers at a fixed instant (windows and their edges), the /live page's
 * headers, the SSE feed over a real socket, and /metrics.
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
