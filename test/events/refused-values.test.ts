/**
 * Values the store's tables would refuse (a year 0000, a price that overflows numeric(14, 2),
 * ids too long for the primary-key index, ids whose UUID names collided) are rejects of their
 * own event, never a failed sync: one such event used to roll back every sync that listed it.
 * And a feed with a tag too long to hold fails as an invalid file, storing nothing.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, test } from 'node:test';
import { startProviderSimulator, type ProviderSimulator } from '../../src/dev/provider-simulator.ts';
import { syncRejects } from '../../src/db/sql/events.ts';
import { eventUuid, MAX_ID_CHARS } from '../../src/pipelines/events/feed-event.ts';
import { MAX_TOKEN_CHARS } from '../../src/formats/xml-events-reader.ts';
import { syncEvents } from '../../src/pipelines/events/sync.ts';
import { testDb, type TestDb } from '../helpers/db.ts';
import { feedXml, type BaseSpec, type EventSpec } from './feeds.ts';

let db: TestDb;
let sim: ProviderSimulator;
before(async () => {
  db = await testDb();
  sim = await startProviderSimulator();
});
after(async () => {
  await sim.close();
  await db.close();
});

const ev = (eventId: string, over: Partial<EventSpec> = {}): EventSpec => ({
  event_id: eventId,
  start: '2021-07-01T21:00:00',
  end: '2021-07-01T22:00:00',
  zones: [{ zone_id: '1', price: '10' }],
  ...over,
});
const base = (baseEventId: string, events: EventSpec[]): BaseSpec => ({ base_event_id: baseEventId, sell_mode: 'online', title: 'T', events });

/** 256 characters of 4 UTF-8 bytes each, pseudo-random so that Postgres cannot compress them. */
let seed = 7;
const WIDE_ID = Array.from({ length: MAX_ID_CHARS }, () => String.fromCodePoint(0x10000 + ((seed = (seed * 48_271) % 0x7fff_ffff) % 0xf_ffff))).join('');
const HEX_ID = randomBytes(3000).toString('hex');

const stored = async () =>
  (await db.pool.query<{ base_event_id: string; event_id: string; id: string; min_price: string; max_price: string }>(
    'SELECT base_event_id, event_id, id::text, min_price::text, max_price::text FROM provider_events ORDER BY starts_at, base_event_id, event_id',
  )).rows;

test('one good event and each value the tables would refuse: the sync completes, keeps the good ones and rejects the others with a reason', async () => {
  sim.setResponses([
    feedXml([
      base('good', [
        ev('1'),
        ev('first-and-last-year', { start: '0001-01-01T00:00:00', end: '9999-12-31T23:59:59' }),
        ev('dearest', { zones: [{ zone_id: '1', price: '999999999999.994' }] }),
        ev(WIDE_ID),
        ev('year0', { start: '0000-01-01T10:00:00', end: '0000-01-01T11:00:00' }),
        ev('overflow', { zones: [{ zone_id: '1', price: '10' }, { zone_id: '2', price: '999999999999.995' }] }),
        ev('x'.repeat(MAX_ID_CHARS + 1)),
        ev(HEX_ID),
      ]),
      // Both ids at the limit, in 4-byte characters: the widest key the primary-key index gets.
      base(WIDE_ID, [ev(WIDE_ID)]),
      base('b'.repeat(MAX_ID_CHARS + 1), [ev('1')]),
      // These two pairs once had one UUID name, "a:b:c".
      base('a:b', [ev('c')]),
      base('a', [ev('b:c')]),
    ]),
  ]);
  const r = await syncEvents(db.pool, { url: sim.url, trigger: 'test', retries: 0 });
  assert.equal(r.status, 'completed', r.error);
  assert.deepEqual([r.eventsSeen, r.eventsNew, r.eventsRejected], [12, 7, 5]);

  const rows = await stored();
  assert.deepEqual(
    rows.map((e) => [e.base_event_id, e.event_id]),
    [['good', 'first-and-last-year'], ['a', 'b:c'], ['a:b', 'c'], ['good', '1'], ['good', 'dearest'], ['good', WIDE_ID], [WIDE_ID, WIDE_ID]],
  );
  // The public id is the UUID of the pair, and the two colon pairs have two ids.
  for (const e of rows) assert.equal(e.id, eventUuid(e.base_event_id, e.event_id));
  assert.notEqual(eventUuid('a:b', 'c'), eventUuid('a', 'b:c'));
  assert.equal(rows.find((e) => e.event_id === 'dearest')?.max_price, '999999999999.99');

  const rejects = await syncRejects(db.pool, r.syncId);
  assert.deepEqual(
    rejects.map((j) => j.reason),
    [
      'event_start_date is outside the years 0001-9999: 0000-01-01T10:00:00',
      'zone 2 has a price above 999999999999.99 (rounded to cents): "999999999999.995"',
      `event_id is longer than ${MAX_ID_CHARS} characters: "${'x'.repeat(100)}…"`,
      `event_id is longer than ${MAX_ID_CHARS} characters: "${HEX_ID.slice(0, 100)}…"`,
      `base_event_id is longer than ${MAX_ID_CHARS} characters: "${'b'.repeat(100)}…"`,
    ],
  );
  // A reject records the ids it could, cut to the limit: it is not a dump of the feed.
  assert.equal(rejects[3]!.eventId, `${HEX_ID.slice(0, MAX_ID_CHARS)}…`);
  assert.ok(rejects.every((j) => j.raw.length <= 4001));
});

test('a tag longer than the reader holds fails the feed as an invalid file: not retried, nothing stored', async () => {
  const before = await stored();
  const version = async () => (await db.pool.query('SELECT version FROM provider_feed_state')).rows[0].version as string;
  const versionBefore = await version();
  const huge = { ...base('huge', [ev('1')]), title: 'h'.repeat(MAX_TOKEN_CHARS + 1) };
  sim.setResponses([feedXml([base('new', [ev('1')]), huge, base('after', [ev('1')])])]);
  const r = await syncEvents(db.pool, { url: sim.url, trigger: 'test', retries: 2, backoffMs: 5 });
  assert.equal(r.status, 'failed');
  assert.equal(r.attempts, 1);
  assert.match(r.error ?? '', new RegExp(`a tag of the feed \\(with the text or comments before it\\) is longer than ${MAX_TOKEN_CHARS} characters`));
  assert.deepEqual(await stored(), before, 'the event before the long tag was not stored either');
  assert.equal(await version(), versionBefore);
});
