/**
 * Two `sluice serve` processes behind an imaginary load balancer: visits go to both, the
 * same visitors hit both, and both /live/stream feeds converge on one correct view
 * (counts, distinct visitors, top pages, most recent visits).
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type { LiveSnapshot } from '../../src/pipelines/visits/live-view.ts';
import { startServe, type ServeProcess } from '../../src/loadgen/serve-process.ts';
import { subscribeSse, type SseSubscription } from '../../src/loadgen/sse-client.ts';
import { testDb, type TestDb } from '../helpers/db.ts';

let db: TestDb;
const servers: ServeProcess[] = [];
const streams: SseSubscription[] = [];
before(async () => {
  db = await testDb();
});
after(async () => {
  for (const s of streams) s.close();
  for (const s of servers) await s.stop();
  await db.close();
});

/** Resolves with the first snapshot that satisfies `ok`, or rejects after `ms`. */
function waitFor(latest: () => LiveSnapshot | undefined, ok: (s: LiveSnapshot) => boolean, ms: number, what: string): Promise<LiveSnapshot> {
  return new Promise((resolve, reject) => {
    const deadline = setTimeout(() => {
      clearInterval(check);
      reject(new Error(`timed out waiting for ${what}; last snapshot: ${JSON.stringify(latest())?.slice(0, 400)}`));
    }, ms);
    const check = setInterval(() => {
      const s = latest();
      if (s && ok(s)) {
        clearTimeout(deadline);
        clearInterval(check);
        resolve(s);
      }
    }, 20);
  });
}

test('two server processes produce one live view', async () => {
  servers.push(await startServe({ env: { DATABASE_URL: db.url } }), await startServe({ env: { DATABASE_URL: db.url } }));
  const latest: Array<LiveSnapshot | undefined> = [undefined, undefined];
  servers.forEach((s, i) => {
    streams.push(subscribeSse(`${s.url}/live/stream`, (data) => (latest[i] = JSON.parse(data) as LiveSnapshot)));
  });

  // 600 visits, alternating between the servers; 40 visitors and 6 pages shared by both.
  const n = 600;
  const pages = new Map<string, number>();
  const sends: Array<Promise<Response>> = [];
  for (let i = 0; i < n; i++) {
    const page = `/two/${i % 6 === 0 ? 'home' : `p${i % 5}`}`;
    pages.set(page, (pages.get(page) ?? 0) + 1);
    sends.push(
      fetch(`${servers[i % 2]!.url}/visits`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ page_path: page, visitor_id: `two-${i % 40}` }),
      }),
    );
  }
  const statuses = await Promise.all(sends.map(async (p) => (await p).status));
  assert.deepEqual(new Set(statuses), new Set([202]));

  // Visitors are applied shortly after the visits commit, by either process.
  const complete = (s: LiveSnapshot) => s.visits_today === n && s.per_second.reduce((a, b) => a + b, 0) === n && s.current_visitors === 40;
  const [a, b] = await Promise.all(latest.map((_, i) => waitFor(() => latest[i], complete, 20_000, `server ${i} to show ${n} visits`)));
  for (const s of [a!, b!]) {
    assert.equal(s.current_visitors, 40, 'distinct visitors across both processes');
    const expected = [...pages].map(([page_path, visits]) => ({ page_path, visits })).sort((x, y) => y.visits - x.visits || (x.page_path < y.page_path ? -1 : 1));
    assert.deepEqual(s.top_pages, expected);
    assert.equal(s.recent.length, 20);
  }
  assert.deepEqual(a!.recent, b!.recent, 'both show the same most recent visits');
  const received = a!.recent.map((r) => Date.parse(r.received_at));
  assert.deepEqual(received, [...received].sort((x, y) => y - x), 'newest first');
});
