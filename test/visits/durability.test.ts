/**
 * Durable acknowledgements: `sluice serve` runs as a subprocess under open-loop load and is
 * killed with SIGKILL mid-stream. Every visit it acknowledged (202) must be in the table,
 * and the rollups must still equal the visits (they commit in the same transaction).
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { runOpenLoop } from '../../src/loadgen/open-loop.ts';
import { startServe } from '../../src/loadgen/serve-process.ts';
import { applyAllVisitorBatches } from '../../src/pipelines/visits/visitor-applier.ts';
import { testDb, type TestDb } from '../helpers/db.ts';

let db: TestDb;
before(async () => {
  db = await testDb();
});
after(async () => {
  await db.close();
});

test('kill -9 during load loses no acknowledged visit', async (t) => {
  const server = await startServe({ env: { DATABASE_URL: db.url } });
  t.after(() => server.kill());
  const acknowledged: number[] = [];
  let failed = 0;
  let killed: Promise<void> | undefined;
  const stop = new AbortController();
  // A modest rate: the point is having requests in flight at the kill, on a shared machine.
  const result = await runOpenLoop({
    url: server.url,
    rate: 500,
    durationMs: 60_000,
    timeoutMs: 10_000,
    signal: stop.signal,
    request: (seq) => ({
      path: '/visits',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ page_path: `/k9/${seq % 10}`, visitor_id: `k9-${seq}` }),
    }),
    onResult: (o) => {
      if (o.status === 202) acknowledged.push(o.seq);
      else failed++;
      // Kill in the middle of the stream, with requests buffered and a flush in flight.
      if (!killed && acknowledged.length >= 1000) {
        killed = server.kill();
        void killed.then(() => setImmediate(() => stop.abort()));
      }
    },
  });
  assert.ok(killed, `the server was never killed (${acknowledged.length} acknowledged)`);
  await killed;
  // Requests in flight at the kill were never acknowledged: they fail, as they must.
  assert.ok(failed > 0 && result.failed > 0, 'expected requests in flight at the kill');

  const { rows } = await db.pool.query<{ visitor_id: string }>("SELECT visitor_id FROM visits WHERE visitor_id LIKE 'k9-%'");
  const stored = new Set(rows.map((r) => r.visitor_id));
  const missing = acknowledged.filter((seq) => !stored.has(`k9-${seq}`));
  assert.deepEqual(missing, [], `${missing.length} of ${acknowledged.length} acknowledged visits are missing`);
  assert.equal(rows.length, stored.size, 'no visit is stored twice');

  // The killed process may have left visitor updates queued; any process applies them.
  await applyAllVisitorBatches(db.pool);
  const sums = await db.pool.query<{ visits: number; seconds: number; minutes: number; pages: number; per_visitor: number }>(
    `SELECT (SELECT count(*) FROM visits)::bigint AS visits,
            (SELECT sum(visits) FROM visit_seconds)::bigint AS seconds,
            (SELECT sum(visits) FROM visit_minutes)::bigint AS minutes,
            (SELECT sum(visits) FROM page_minutes)::bigint AS pages,
            (SELECT sum(visits) FROM visitors)::bigint AS per_visitor`,
  );
  const s = sums.rows[0]!;
  assert.ok(s.visits >= acknowledged.length);
  assert.deepEqual([s.seconds, s.minutes, s.pages, s.per_visitor], [s.visits, s.visits, s.visits, s.visits], 'rollups equal the visits');
  t.diagnostic(`${acknowledged.length} acknowledged, ${failed} failed at the kill, ${s.visits - acknowledged.length} stored but never acknowledged`);
});

test('a restarted server takes visits again on the same tables', async (t) => {
  const server = await startServe({ env: { DATABASE_URL: db.url } });
  t.after(() => server.stop());
  const res = await fetch(`${server.url}/visits`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ page_path: '/after-restart', visitor_id: 'k9-restart' }),
  });
  assert.equal(res.status, 202);
  const { rows } = await db.pool.query("SELECT 1 FROM visits WHERE visitor_id = 'k9-restart'");
  assert.equal(rows.length, 1);
});
