/**
 * The sync's parse thread (src/pipelines/events/parse-thread.ts): errors of the feed reach the
 * sync as their own classes with their own messages (so retries are decided as before), a
 * thread that dies (killed, out of memory) fails its attempt without hanging it and the next
 * sync works, and no path (success, failure, abort, lost connection) leaves a thread running.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, afterEach, before, test } from 'node:test';
import { InvalidFileError } from '../../src/core/errors.ts';
import { generateFeed } from '../../src/dev/feed-generator.ts';
import { startProviderSimulator, type ProviderSimulator } from '../../src/dev/provider-simulator.ts';
import { FeedRootError, HtmlPageError, MAX_FEED_DEPTH, XmlEventsReader } from '../../src/formats/xml-events-reader.ts';
import { endIdleParseThread, liveParseThreads, ParseThread, parseThreadHooks } from '../../src/pipelines/events/parse-thread.ts';
import { retryable, syncEvents } from '../../src/pipelines/events/sync.ts';
import { until } from '../helpers/processes.ts';
import { testDb, type TestDb } from '../helpers/db.ts';
import { RESPONSE_1 } from './feeds.ts';

let db: TestDb;
let sim: ProviderSimulator;
before(async () => {
  db = await testDb();
  // `slow` waits a minute before each chunk: a sync stays inside its fetch until stopped.
  sim = await startProviderSimulator({ responses: [RESPONSE_1], slowMs: 60_000 });
});
afterEach(async () => {
  delete parseThreadHooks.started;
  // A clean sync keeps its thread for the next one (idle, unref'd): ended here, then none is left.
  await endIdleParseThread();
  assert.equal(liveParseThreads(), 0, 'no parse thread is left running');
});
after(async () => {
  await sim.close();
  await db.close();
});

const stored = async () => (await db.pool.query<{ n: number }>('SELECT count(*)::int AS n FROM provider_events')).rows[0]!.n;

/** What `feed` (bytes, in chunks of `size`) fails with when read on this thread. */
function readHere(feed: Uint8Array, size: number): Error {
  const r = new XmlEventsReader(() => {});
  try {
    for (let i = 0; i < feed.length; i += size) r.write(feed.slice(i, i + size));
    r.end();
  } catch (err) {
    return err as Error;
  }
  throw new Error('the feed was read without an error');
}

/** What the same feed fails with on a parse thread. */
async function readOnThread(feed: Uint8Array, size: number): Promise<Error> {
  const p = new ParseThread({ batchSize: 1000, onBatch: async () => {} });
  try {
    for (let i = 0; i < feed.length; i += size) await p.write(feed.slice(i, i + size));
    await p.end();
  } catch (err) {
    return err as Error;
  } finally {
    await p.close();
  }
  throw new Error('the feed was read without an error');
}

const BAD_FEEDS: Array<[string, string | Uint8Array]> = [
  ['another root (an error page served with 200)', '<?xml version="1.0"?><error>rate limited</error>'],
  ['an HTML5 page', '<!DOCTYPE html><html><body>Back soon.</body></html>'],
  ['an XHTML page', '<?xml version="1.0"?>\n<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN" "x.dtd"><html xmlns="http://www.w3.org/1999/xhtml"></html>'],
  ['a DOCTYPE with an entity', '<?xml version="1.0"?><!DOCTYPE eventList [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><eventList>&xxe;</eventList>'],
  ['malformed XML', '<eventList><output></eventList>'],
  ['a truncated feed', RESPONSE_1.slice(0, 1000)],
  ['nested too deep', `<eventList>${'<a>'.repeat(MAX_FEED_DEPTH + 1)}`],
  ['an empty body', '   \n'],
  ['bytes that are not UTF-8', new Uint8Array([...Buffer.from('<eventList a="'), 0xff, 0xfe, ...Buffer.from('"/>')])],
];

test('errors of the feed cross the thread as their own classes, with the messages the reader gives on this thread', async () => {
  for (const [what, body] of BAD_FEEDS) {
    const feed = typeof body === 'string' ? new TextEncoder().encode(body) : body;
    for (const size of [7]) {
      const here = readHere(feed, size);
      const there = await readOnThread(feed, size);
      assert.equal(there.constructor, here.constructor, `${what}: ${there.constructor.name}, not ${here.constructor.name}`);
      assert.equal(there.message, here.message, what);
      assert.ok(there instanceof InvalidFileError, what);
      assert.equal(retryable(there), retryable(here), what);
    }
  }
  const page = await readOnThread(new TextEncoder().encode(BAD_FEEDS[1]![1] as string), 1000);
  assert.ok(page instanceof HtmlPageError && page instanceof FeedRootError && retryable(page));
  const root = await readOnThread(new TextEncoder().encode(BAD_FEEDS[0]![1] as string), 1000);
  assert.ok(root instanceof FeedRootError && root.root === 'error' && retryable(root));
  const malformed = await readOnThread(new TextEncoder().encode('<eventList><output></eventList>'), 1000);
  assert.ok(!(malformed instanceof FeedRootError) && !retryable(malformed));
});

test('a clean sync hands its thread to the next one, idle and unref\'d (it keeps no process alive)', async () => {
  sim.setResponses([RESPONSE_1]);
  const started: unknown[] = [];
  parseThreadHooks.started = (worker) => started.push(worker);
  for (let i = 0; i < 3; i++) {
    const r = await syncEvents(db.pool, { url: sim.url, trigger: 'test', retries: 0 });
    assert.equal(r.status, 'completed', r.error);
    assert.equal(liveParseThreads(), 1);
    assert.ok(!process.getActiveResourcesInfo().includes('MessagePort'), 'the idle thread is unref\'d');
  }
  assert.equal(started.length, 3);
  assert.equal(new Set(started).size, 1, 'one thread served the three syncs');
});

test('through a sync: another root is retried and the next attempt completes; malformed XML fails at once, nothing stored', async () => {
  sim.setResponses(['<?xml version="1.0"?><error>rate limited</error>', RESPONSE_1]);
  const r = await syncEvents(db.pool, { url: sim.url, trigger: 'test', retries: 2, backoffMs: 5 });
  assert.equal(r.status, 'completed', r.error);
  assert.deepEqual([r.attempts, r.eventsSeen], [2, 3]);

  const before = await stored();
  sim.setResponses(['<eventList><output></eventList>', RESPONSE_1]);
  const bad = await syncEvents(db.pool, { url: sim.url, trigger: 'test', retries: 2, backoffMs: 5 });
  assert.equal(bad.status, 'failed');
  assert.equal(bad.attempts, 1, 'malformed XML is not retried');
  assert.match(bad.error ?? '', /^malformed XML: /);
  assert.equal(await stored(), before);
});

test('a thread out of memory fails the parse with a clear error (not retried), and only that thread ends', async () => {
  const p = new ParseThread({ batchSize: 1000, heapMb: 4, onBatch: async () => {} });
  let err: Error | undefined;
  try {
    for (const chunk of generateFeed({ events: 2000, zones: 200 })) await p.write(new TextEncoder().encode(chunk));
    await p.end();
  } catch (e) {
    err = e as Error;
  } finally {
    await p.close();
  }
  assert.ok(err, 'the parse failed');
  assert.match(err.message, /^the feed's parse thread failed: .*memory/);
  assert.equal(retryable(err), false);
});

test('a valid feed whose one event escapes to a 60 M-character batch syncs (a heap cap killed the process on it)', async (t) => {
  // 15 zones whose names are 1,000,000 backslashes (each tag under the reader's 1 Mi
  // characters, the event under its 16 Mi): JSON and COPY escaping make them 4 times longer.
  const name = '\\'.repeat(1_000_000);
  const zones = Array.from({ length: 15 }, (_, i) => `<zone zone_id="${i}" capacity="10" price="5" name="${name}" numbered="true" />`).join('\n');
  const body = Buffer.from(
    '<?xml version="1.0" encoding="UTF-8"?><eventList version="1.0"><output><base_event base_event_id="9001" sell_mode="online" title="Big">' +
      '<event event_start_date="2030-06-30T21:00:00" event_end_date="2030-06-30T22:00:00" event_id="1" sell_from="2020-01-01T00:00:00" sell_to="2030-06-30T21:00:00" sold_out="false">' +
      `${zones}</event></base_event></output></eventList>`,
  );
  const server = http.createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'application/xml' });
    res.end(body);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.after(() => new Promise((r) => server.close(r)));
  const r = await syncEvents(db.pool, { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/`, trigger: 'cli', retries: 0 });
  assert.equal(r.status, 'completed', r.error);
  assert.deepEqual([r.eventsSeen, r.eventsNew, r.eventsRejected], [1, 1, 0]);
  const { rows } = await db.pool.query(`SELECT length(zones::text) AS n FROM provider_events WHERE base_event_id = '9001'`);
  assert.ok(rows[0].n > 30_000_000, `zones stored whole: ${rows[0].n} characters`);
});

test('a thread that dies mid-sync fails that attempt (not retried, nothing stored); the next sync completes', async () => {
  sim.setResponses([[...generateFeed({ events: 300, zones: 50 })].join('')]);
  const before = await stored();
  let killed = 0;
  parseThreadHooks.started = (worker) => {
    // Killed once it has read its first chunk: inside the sync, between two chunks.
    worker.once('message', () => {
      killed += 1;
      void worker.terminate();
    });
  };
  const r = await syncEvents(db.pool, { url: sim.url, trigger: 'test', retries: 2, backoffMs: 5 });
  assert.equal(killed, 1);
  assert.equal(r.status, 'failed');
  assert.equal(r.attempts, 1);
  assert.match(r.error ?? '', /^the feed's parse thread stopped \(exit code 1\) before the end of the feed$/);
  assert.equal(await stored(), before);
  assert.equal(liveParseThreads(), 0);

  delete parseThreadHooks.started;
  const ok = await syncEvents(db.pool, { url: sim.url, trigger: 'test', retries: 0 });
  assert.equal(ok.status, 'completed', ok.error);
  assert.equal(ok.eventsSeen, 300);
});

/** Starts a sync against the stalled provider; resolves once it waits inside its fetch with its thread running. */
async function stalledSync(options: { signal?: AbortSignal } = {}) {
  sim.setResponses([RESPONSE_1]);
  sim.setMode('slow', 1);
  const fetches = sim.fetches;
  const result = syncEvents(db.pool, { url: sim.url, trigger: 'test', retries: 0, ...options });
  await until(async () => sim.fetches > fetches && liveParseThreads() === 1, 'the sync to wait on the provider with its parse thread running');
  // Wrapped: an async function returning the promise itself would wait for the sync's end.
  return { result };
}

test('a sync stopped while it waits on the provider ends its thread', async () => {
  const stop = new AbortController();
  const { result } = await stalledSync({ signal: stop.signal });
  stop.abort();
  const r = await result;
  assert.equal(r.status, 'failed');
  assert.match(r.error ?? '', /sync stopped/);
  assert.equal(liveParseThreads(), 0);
  assert.ok(!process.getActiveResourcesInfo().includes('MessagePort'), 'no thread port is left open');
});

test('a sync whose connection is lost while it waits on the provider ends its thread', async () => {
  const { result } = await stalledSync();
  // The sync's connection: the one in this database holding the stage, in its transaction.
  const { rows } = await until(async () => {
    const q = await db.pool.query<{ pid: number }>(
      `SELECT pid FROM pg_stat_activity
        WHERE datname = current_database() AND state = 'idle in transaction' AND query LIKE '%provider_events_stage%'`,
    );
    return q.rows.length === 1 ? q : undefined;
  }, "the sync's connection");
  await db.pool.query('SELECT pg_terminate_backend($1)', [rows[0]!.pid]);
  const r = await result;
  assert.equal(r.status, 'failed');
  assert.match(r.error ?? '', /terminat/i);
  assert.equal(liveParseThreads(), 0);
  // The next sync gets a new connection and completes.
  const ok = await syncEvents(db.pool, { url: sim.url, trigger: 'test', retries: 0 });
  assert.equal(ok.status, 'completed', ok.error);
});
