/**
 * Sequences of provider responses (real HTTP, from the simulator) against /search results,
 * and every way a fetch can fail, each recorded in provider_syncs.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { startProviderSimulator, type ProviderSimulator } from '../../src/dev/provider-simulator.ts';
import { getSync, syncRejects } from '../../src/db/sql/events.ts';
import { buildServer } from '../../src/http/server.ts';
import { eventUuid } from '../../src/pipelines/events/feed-event.ts';
import { syncEvents } from '../../src/pipelines/events/sync.ts';
import { testDb, type TestDb } from '../helpers/db.ts';
import { RESPONSE_1, feedXml, titles, type BaseSpec } from './feeds.ts';

let db: TestDb;
let app: FastifyInstance;
let sim: ProviderSimulator;
before(async () => {
  db = await testDb();
  app = await buildServer({ pool: db.pool });
  sim = await startProviderSimulator({ slowMs: 400 });
});
after(async () => {
  await app.close();
  await sim.close();
  await db.close();
});

const sync = (options: { retries?: number; idleTimeoutMs?: number } = {}) =>
  syncEvents(db.pool, { url: sim.url, trigger: 'test', backoffMs: 5, retries: 0, ...options });

async function search(query: string) {
  const res = await app.inject({ method: 'GET', url: `/search${query}` });
  assert.equal(res.statusCode, 200, res.body);
  return res.json() as { data: { events: Array<Record<string, unknown> & { title: string }> }; error: null };
}

const WINDOW = '?starts_at=2021-02-01T00:00:00Z&ends_at=2022-07-03T00:00:00Z';

/** response_1 after a while: 322 gone, 291 cheaper, 1591 offline now, new events. */
const LATER: BaseSpec[] = [
  {
    base_event_id: '291',
    sell_mode: 'online',
    title: 'Camela en concierto',
    events: [
      { event_id: '291', start: '2021-06-30T21:00:00', end: '2021-06-30T22:00:00', zones: [{ zone_id: '40', price: '12.00' }, { zone_id: '38', price: '15.00' }] },
      { event_id: '292', start: '2021-09-31T21:00:00', end: '2021-09-31T22:00:00', zones: [{ zone_id: '40', price: '20.00' }] },
    ],
  },
  {
    base_event_id: '1591',
    sell_mode: 'offline',
    title: 'Los Morancos',
    events: [{ event_id: '1642', start: '2021-07-31T20:00:00', end: '2021-07-31T21:00:00', zones: [{ zone_id: '186', price: '75.00' }, { zone_id: '186', price: '65.00' }] }],
  },
  {
    base_event_id: '444',
    sell_mode: 'offline',
    title: 'Only at the box office',
    events: [{ event_id: '1', start: '2021-08-01T20:00:00', end: '2021-08-01T21:00:00', zones: [{ zone_id: '1', price: '9.00' }] }],
  },
];

test('the issue example: response_1, then fetches in which 322 disappears', async () => {
  sim.setResponses([RESPONSE_1, feedXml(LATER), feedXml(LATER)]);
  const first = await sync();
  assert.equal(first.status, 'completed');
  assert.deepEqual([first.eventsSeen, first.eventsNew, first.eventsChanged, first.eventsRejected], [3, 3, 3, 0]);
  let body = await search(WINDOW);
  assert.deepEqual(titles(body), ['Pantomima Full', 'Camela en concierto', 'Los Morancos']);
  assert.deepEqual(body.data.events[1], {
    id: eventUuid('291', '291'),
    title: 'Camela en concierto',
    start_date: '2021-06-30',
    start_time: '21:00:00',
    end_date: '2021-06-30',
    end_time: '22:00:00',
    min_price: 15,
    max_price: 30,
  });
  assert.equal(body.error, null);

  const second = await sync();
  // Changed: the new event of 444, 291 (prices) and 1591's event (its zones' capacities and names).
  assert.deepEqual([second.eventsSeen, second.eventsNew, second.eventsChanged, second.eventsRejected], [4, 1, 3, 1]);
  body = await search(WINDOW);
  // 322 is gone from the feed and still served; 291 has its new prices; 1591 sells offline
  // now but was online before; 444 was never online.
  assert.deepEqual(titles(body), ['Pantomima Full', 'Camela en concierto', 'Los Morancos']);
  assert.deepEqual([body.data.events[0]!.id, body.data.events[0]!.min_price], [eventUuid('322', '1642'), 55]);
  assert.deepEqual([body.data.events[1]!.min_price, body.data.events[1]!.max_price], [12, 15]);
  assert.deepEqual([body.data.events[2]!.min_price, body.data.events[2]!.max_price], [65, 75]);

  // The invalid date: rejected with its reason, visible in the sync record.
  const record = await getSync(db.pool, second.syncId);
  assert.equal(record?.status, 'completed');
  assert.equal(record?.events_rejected, 1);
  const rejects = await syncRejects(db.pool, second.syncId);
  assert.equal(rejects.length, 1);
  assert.deepEqual([rejects[0]!.baseEventId, rejects[0]!.eventId], ['291', '292']);
  assert.equal(rejects[0]!.reason, 'event_start_date is an impossible date: 2021-09-31T21:00:00');
  assert.match(rejects[0]!.raw, /event_id="292"/);
});

test('an unchanged fetch writes no row and keeps the feed version', async () => {
  const tuples = async () => (await db.pool.query('SELECT base_event_id, event_id, xmin::text FROM provider_events ORDER BY 1, 2')).rows;
  const version = async () => (await db.pool.query('SELECT version FROM provider_feed_state')).rows[0].version as number;
  const [beforeTuples, beforeVersion] = [await tuples(), await version()];
  const third = await sync(); // the same feed as the second fetch
  assert.equal(third.status, 'completed');
  assert.deepEqual([third.eventsSeen, third.eventsChanged, third.eventsRejected], [4, 0, 1]);
  assert.equal(third.version, undefined);
  assert.deepEqual(await tuples(), beforeTuples, 'no new row versions');
  assert.equal(await version(), beforeVersion);
});

test('a base event going online serves its events, and its new title reaches events absent from the fetch', async () => {
  const later = structuredClone(LATER);
  later[2]!.sell_mode = 'online';
  later[0]!.title = 'Camela (nueva fecha)';
  later[0]!.events = [
    { event_id: '293', start: '2021-10-01T21:00:00', end: '2021-10-01T22:00:00', zones: [{ zone_id: '1', price: '5' }] },
    // The same pair twice in one feed: the later one wins.
    { event_id: '293', start: '2021-10-01T21:00:00', end: '2021-10-01T22:00:00', zones: [{ zone_id: '1', price: '7' }] },
  ];
  sim.setResponses([feedXml(later)]);
  const r = await sync();
  assert.equal(r.status, 'completed');
  const body = await search(WINDOW);
  assert.deepEqual(titles(body), ['Pantomima Full', 'Camela (nueva fecha)', 'Los Morancos', 'Only at the box office', 'Camela (nueva fecha)']);
  assert.equal(body.data.events[4]!.min_price, 7);
  // Events 291 (absent) and 293 took the new title; 1642 and 444's event were unchanged.
  assert.equal(r.eventsChanged, 3);
});

test('a failing provider: each failure recorded, retryable ones retried, data untouched', async () => {
  const before = await search('');
  sim.setResponses([feedXml(LATER)]);
  const cases: Array<{ mode: Parameters<ProviderSimulator['setMode']>[0]; count?: number; retries?: number; status: string; attempts: number; error?: RegExp }> = [
    { mode: 'error', count: 1, retries: 1, status: 'completed', attempts: 2 },
    { mode: 'error', retries: 2, status: 'failed', attempts: 3, error: /HTTP 500/ },
    { mode: 'timeout', status: 'failed', attempts: 1, error: /no response headers within 300 ms/ },
    { mode: 'slow', status: 'failed', attempts: 1, error: /stalled for 300 ms|no response headers/ },
    { mode: 'garbage', retries: 2, status: 'failed', attempts: 1, error: /malformed XML|UTF-8/ },
    { mode: 'empty', retries: 2, status: 'failed', attempts: 1, error: /empty/ },
    { mode: 'truncated', status: 'failed', attempts: 1, error: /reading the feed failed|malformed|unreachable/ },
  ];
  for (const c of cases) {
    sim.setMode(c.mode, c.count);
    const r = await sync({ retries: c.retries ?? 0, idleTimeoutMs: 300 });
    sim.setMode('ok');
    assert.equal(r.status, c.status, `${c.mode}: ${r.error}`);
    assert.equal(r.attempts, c.attempts, c.mode);
    const record = await getSync(db.pool, r.syncId);
    assert.equal(record?.status, c.status);
    assert.equal(record?.attempts, c.attempts);
    assert.ok(record?.finished_at, 'finished_at recorded');
    if (c.error) assert.match(record?.error ?? '', c.error, c.mode);
  }
  sim.setResponses(['<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><eventList>&e;</eventList>']);
  const dtd = await sync({ retries: 2 });
  assert.equal(dtd.status, 'failed');
  assert.equal(dtd.attempts, 1);
  assert.match(dtd.error ?? '', /DOCTYPE/);
  // The one successful sync above re-applied LATER: 291's title came back; otherwise the same.
  const afterBody = await search('');
  assert.equal(afterBody.data.events.length, before.data.events.length);
});
