/**
 * The search batcher: concurrent reads share statements, identical ranges are read once, a
 * search never joins a statement already sent (so it sees every sync committed before it),
 * and a failed statement fails each of its searches. Also /search with the cache off,
 * where every request goes through it.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { openDb, withDatabase, type Pool } from '../../src/db/pool.ts';
import { searchEventsBatch, type SearchRange } from '../../src/db/sql/events.ts';
import { buildServer } from '../../src/http/server.ts';
import { SearchBatcher } from '../../src/pipelines/events/search-batcher.ts';
import { syncEvents } from '../../src/pipelines/events/sync.ts';
import { feedXml, titles } from './feeds.ts';
import { SEARCH_FEED as FEED, searchStore, zone, type SearchStore } from './search-store.ts';

let store: SearchStore;

const MORNING = 'Morning "quoted" \\ ñ';
const RANGES: SearchRange[] = [
  { startsAt: null, endsAt: null },
  { startsAt: '2021-06-30T00:00:00', endsAt: '2021-07-01T00:00:00' },
  { startsAt: '2021-06-30T21:00:00', endsAt: null },
  { startsAt: null, endsAt: '2021-06-30T12:00:00' },
  { startsAt: '2030-01-01T00:00:00', endsAt: null },
];
const EXPECTED = [[MORNING, 'Evening', 'Evening', 'Next year'], [MORNING, 'Evening', 'Evening'], ['Evening', 'Evening', 'Next year'], [MORNING], []];

before(async () => {
  store = await searchStore(FEED);
});
after(() => store.close());

const parse = (body: Buffer) => JSON.parse(body.toString()) as { data: { events: Array<{ title: string; min_price: number }> }; error: null };

test('searches gathered while waiting share one statement; identical ranges are read once', async () => {
  const batcher = new SearchBatcher(store.db.pool);
  store.statements.length = 0;
  // 50 searches issued together (10 of each range): one statement answers them all.
  const answers = await Promise.all(Array.from({ length: 50 }, (_, i) => batcher.search(RANGES[i % RANGES.length]!)));
  assert.deepEqual(store.statements, ['provider_search_batch']);
  answers.forEach((a, i) => {
    const body = parse(a.body);
    assert.equal(body.error, null);
    assert.deepEqual(titles(body), EXPECTED[i % RANGES.length], `range ${i % RANGES.length}`);
    // Identical searches of one batch share the body.
    if (i >= RANGES.length) assert.equal(a.body, answers[i - RANGES.length]!.body);
  });

  // Searches arriving while store.statements are in flight wait and go together in the next one.
  store.statements.length = 0;
  const first = [batcher.search(RANGES[0]!), batcher.search(RANGES[1]!)];
  await new Promise((r) => setImmediate(r)); // the first statement is sent
  const later = Array.from({ length: 20 }, (_, i) => batcher.search(RANGES[i % RANGES.length]!));
  const all = await Promise.all([...first, ...later]);
  assert.ok(store.statements.length >= 2 && store.statements.length <= 3, `${store.statements.length} store.statements for 22 searches`);
  all.slice(2).forEach((a, i) => assert.deepEqual(titles(parse(a.body)), EXPECTED[i % RANGES.length]));
});

test('a search never joins a statement already sent: it sees a sync committed before it', async () => {
  // A pool whose first statement is held after Postgres answered it (its snapshot is taken).
  let release!: () => void;
  const held = new Promise<void>((r) => (release = r));
  let calls = 0;
  const gated = {
    query: async (...args: unknown[]) => {
      const result = await (store.db.pool.query as (...a: unknown[]) => Promise<unknown>)(...args);
      if (calls++ === 0) await held;
      return result;
    },
  } as unknown as Pool;
  const batcher = new SearchBatcher(gated, { concurrency: 1 });
  const range = RANGES[1]!;
  const before = batcher.search(range);
  while (calls === 0) await new Promise((r) => setImmediate(r));

  const changed = structuredClone(FEED);
  changed[0]!.events[0]!.zones = zone('4');
  store.sim.setResponses([feedXml(changed)]);
  const sync = await syncEvents(store.other, { url: store.sim.url, trigger: 'test' });
  assert.equal(sync.eventsChanged, 1);

  // Same range, issued after the commit, while the statement read before it is in flight.
  const afterSync = batcher.search(range);
  release();
  const [a, b] = await Promise.all([before, afterSync]);
  assert.deepEqual(parse(a.body).data.events.map((e) => e.min_price), [0, 8, 10.5]);
  assert.deepEqual(parse(b.body).data.events.map((e) => e.min_price), [0, 8, 4]);
  assert.ok(b.version > a.version, `version ${b.version} after ${a.version}`);
});

test('the statement is planned once per connection, whatever the number and shape of its ranges', async () => {
  const client = await store.db.pool.connect();
  try {
    for (let n = 1; n <= 10; n++) {
      const r = await searchEventsBatch(client, Array.from({ length: n }, (_, i) => RANGES[(n + i) % RANGES.length]!));
      assert.deepEqual(r.bodies.map((b) => titles(JSON.parse(b))), Array.from({ length: n }, (_, i) => EXPECTED[(n + i) % RANGES.length]));
    }
    const { rows } = await client.query<{ generic_plans: number; custom_plans: number }>(
      "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE name = 'provider_search_batch'",
    );
    // Postgres tries five custom plans first, then keeps the generic one when it costs no more
    // (this connection may have run the statement before: at least our 10 executions count).
    assert.equal(rows.length, 1);
    assert.equal(rows[0]!.custom_plans, 5);
    assert.ok(rows[0]!.generic_plans >= 5, `${rows[0]!.generic_plans} generic plans`);
  } finally {
    client.release();
  }
});

test('a statement failed by the database, not by its values, fails each of its searches at once, and the batcher goes on', async () => {
  const broken = await openDb({ url: withDatabase(store.db.url, 'sluice_no_such_db'), migrate: false, max: 1 });
  try {
    const batcher = new SearchBatcher(broken);
    const results = await Promise.allSettled([batcher.search(RANGES[0]!), batcher.search(RANGES[1]!), batcher.search(RANGES[1]!)]);
    assert.deepEqual(results.map((r) => r.status), ['rejected', 'rejected', 'rejected']);
    const again = await Promise.allSettled([batcher.search(RANGES[2]!)]);
    assert.equal(again[0]!.status, 'rejected');
  } finally {
    await broken.end();
  }
  const healthy = new SearchBatcher(store.db.pool);
  assert.deepEqual(titles(parse((await healthy.search(RANGES[2]!)).body)), EXPECTED[2]);
});

test('a search that Postgres refuses fails alone: the other searches of its statement are answered one by one', async () => {
  const batcher = new SearchBatcher(store.db.pool);
  // /search refuses year 0000 itself now; the batcher must not rely on it.
  const bad: SearchRange = { startsAt: '0000-01-01T00:00:00', endsAt: null };
  store.statements.length = 0;
  const results = await Promise.allSettled([batcher.search(RANGES[1]!), batcher.search(bad), batcher.search(RANGES[2]!), batcher.search(RANGES[1]!)]);
  assert.deepEqual(results.map((r) => r.status), ['fulfilled', 'rejected', 'fulfilled', 'fulfilled']);
  const reason = (results[1] as PromiseRejectedResult).reason as { code?: string };
  assert.equal(reason.code, '22008', 'date/time field value out of range');
  const body = (i: number) => parse((results[i] as PromiseFulfilledResult<{ body: Buffer }>).value.body);
  assert.deepEqual([titles(body(0)), titles(body(2)), titles(body(3))], [EXPECTED[1], EXPECTED[2], EXPECTED[1]]);
  // One statement for the batch, then one per distinct range (the identical two share theirs).
  assert.deepEqual(store.statements, Array(4).fill('provider_search_batch'));
  // The batcher goes on as before: one statement for a new batch.
  store.statements.length = 0;
  assert.deepEqual(titles(parse((await batcher.search(RANGES[3]!)).body)), EXPECTED[3]);
  assert.deepEqual(store.statements, ['provider_search_batch']);
});

test('/search with the cache off: concurrent requests get the same answers as single ones, in few store.statements', async () => {
  process.env.SLUICE_SEARCH_CACHE = 'off';
  let app: FastifyInstance;
  try {
    app = await buildServer({ pool: store.db.pool });
  } finally {
    delete process.env.SLUICE_SEARCH_CACHE;
  }
  try {
    const urls = ['/search', '/search?starts_at=2021-06-30&ends_at=2021-07-01', '/search?starts_at=2021-06-30T21:00:00Z', '/search?ends_at=2021-06-30T12:00:00', '/search?starts_at=2030-01-01'];
    const single: string[] = [];
    for (const url of urls) single.push((await app.inject({ method: 'GET', url })).body);
    store.statements.length = 0;
    const many = await Promise.all(Array.from({ length: 60 }, (_, i) => app.inject({ method: 'GET', url: urls[i % urls.length]! })));
    many.forEach((res, i) => {
      assert.equal(res.statusCode, 200);
      assert.equal(res.body, single[i % urls.length]);
    });
    const batches = store.statements.filter((s) => s === 'provider_search_batch').length;
    assert.ok(batches >= 1 && batches < 60, `${batches} store.statements for 60 requests`);
    // Still exactly the provider spec's shape.
    assert.deepEqual(titles(JSON.parse(single[0]!)), EXPECTED[0]);
  } finally {
    await app.close();
  }
});
