/**
 * GET /search: parameters, bounds, order, the published OpenAPI document, and the cache
 * (hits skip Postgres; a sync committed elsewhere is never hidden by it).
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { openDb, withDatabase } from '../../src/db/pool.ts';
import { buildServer } from '../../src/http/server.ts';
import { syncEvents } from '../../src/pipelines/events/sync.ts';
import { feedXml, titles } from './feeds.ts';
import { checkSchema } from './openapi-check.ts';
import { SEARCH_FEED, searchStore, zone, type SearchStore } from './search-store.ts';

let store: SearchStore;
let app: FastifyInstance;
const FEED = SEARCH_FEED;

before(async () => {
  store = await searchStore(FEED);
  app = await buildServer({ pool: store.db.pool });
});
after(async () => {
  await app.close();
  await store.close();
});

async function get(url: string) {
  const res = await app.inject({ method: 'GET', url });
  return { status: res.statusCode, body: res.json() as Record<string, any>, type: res.headers['content-type'] };
}

test('no bounds: every served event, sorted by start then end', async () => {
  const res = await get('/search');
  assert.equal(res.status, 200);
  assert.match(String(res.type), /^application\/json/);
  assert.deepEqual(titles(res.body as never), ['Morning "quoted" \\ ñ', 'Evening', 'Evening', 'Next year']);
  assert.deepEqual(
    res.body.data.events.map((e: { end_time: string; min_price: number }) => [e.end_time, e.min_price]),
    [['12:00:00', 0], ['21:30:00', 8], ['22:00:00', 10.5], ['00:00:00', 99.99]],
  );
});

test('bounds are inclusive, either may be omitted, and offsets are read as local wall-clock time', async () => {
  const cases: Array<[string, string[]]> = [
    ['?starts_at=2021-06-30T21:00:00', ['Evening', 'Evening', 'Next year']],
    ['?starts_at=2021-06-30T21:00:01', ['Next year']],
    ['?ends_at=2021-06-30T21:30:00', ['Morning "quoted" \\ ñ', 'Evening']],
    ['?starts_at=2021-06-30&ends_at=2021-07-01', ['Morning "quoted" \\ ñ', 'Evening', 'Evening']],
    ['?starts_at=2021-06-30T21:00:00Z&ends_at=2021-06-30T22:00:00%2B02:00', ['Evening', 'Evening']],
    ['?starts_at=2021-06-30T20:59&ends_at=2021-06-30T21:59:59.999', ['Evening']],
    ['?starts_at=&ends_at=2021-06-30T12:00:00', ['Morning "quoted" \\ ñ']],
    ['?starts_at=2030-01-01T00:00:00Z', []],
  ];
  for (const [query, expected] of cases) {
    const res = await get(`/search${query}`);
    assert.equal(res.status, 200, query);
    assert.deepEqual(titles(res.body as never), expected, query);
  }
});

test('bad parameters: 400 with the error shape and data null; the years 0001 and 9999 are good ones', async () => {
  const cases: Array<[string, RegExp]> = [
    ['?starts_at=yesterday', /starts_at must be an ISO 8601 date-time/],
    ['?ends_at=2021-02-30T10:00:00Z', /ends_at is not a real date-time/],
    ['?starts_at=2021-13-01', /not a real date-time/],
    ['?starts_at=2021-01-01T24:00:00', /not a real date-time/],
    ['?starts_at=2021-01-01&starts_at=2021-01-02', /starts_at must be given once/],
    ['?starts_at=2021-07-01&ends_at=2021-06-01', /starts_at must not be after ends_at/],
    ["?starts_at=2021-01-01'%3B DROP TABLE provider_events;--", /ISO 8601/],
    // Postgres has no year 0: these were 500s, and failed the searches sharing their statement.
    ['?starts_at=0000-01-01', /starts_at must be in the years 0001-9999: 0000-01-01/],
    ['?ends_at=0000-12-31T23:59:59', /ends_at must be in the years 0001-9999/],
  ];
  for (const [query, message] of cases) {
    const res = await get(`/search${query}`);
    assert.equal(res.status, 400, query);
    assert.deepEqual(Object.keys(res.body).sort(), ['data', 'error']);
    assert.equal(res.body.data, null);
    assert.equal(res.body.error.code, 'invalid_input');
    assert.match(res.body.error.message, message, query);
  }
  const widest = await get('/search?starts_at=0001-01-01&ends_at=9999-12-31T23:59:59.999999');
  assert.equal(widest.status, 200);
  assert.equal(widest.body.data.events.length, 4);
});

test('a UTC offset is held to the rule of /visits (hours 00-23, minutes 00-59), with or without its colon', async () => {
  for (const offset of ['+25:00', '+24:00', '-24:00', '+23:60', '+2500', '+99:99']) {
    const res = await get(`/search?starts_at=2021-06-30T21:00:00${encodeURIComponent(offset)}`);
    assert.equal(res.status, 400, offset);
    assert.equal(res.body.error.code, 'invalid_input');
    assert.match(res.body.error.message, /starts_at has an impossible UTC offset/, offset);
    const end = await get(`/search?ends_at=2021-06-30T21:00:00${encodeURIComponent(offset)}`);
    assert.equal(end.status, 400, offset);
    assert.match(end.body.error.message, /ends_at has an impossible UTC offset/, offset);
  }
  for (const offset of ['+23:59', '-23:59', '+00:00', '-0000', '+0530', 'Z']) {
    const res = await get(`/search?starts_at=2021-06-30T21:00:00${encodeURIComponent(offset)}`);
    assert.equal(res.status, 200, offset);
    assert.deepEqual(titles(res.body as never), ['Evening', 'Evening', 'Next year'], offset);
  }
});

test('the OpenAPI document publishes /search, and the responses match it (200, 400, 500)', async () => {
  const docRes = await app.inject({ method: 'GET', url: '/docs/openapi.json' });
  assert.equal(docRes.statusCode, 200);
  const doc = docRes.json() as Record<string, any>;
  assert.match(doc.openapi, /^3\.0\./);
  const op = doc.paths['/search'].get;
  assert.deepEqual(op.parameters.map((p: { name: string }) => p.name), ['starts_at', 'ends_at']);
  assert.match(doc.tags.find((t: { name: string }) => t.name === 'events').description, /"Fever Providers API" 1\.0\.0/);
  const schemaOf = (status: string) => op.responses[status].content['application/json'].schema;

  const ok = await get('/search?starts_at=2021-01-01T00:00:00Z');
  assert.deepEqual(checkSchema(doc, schemaOf('200'), ok.body), []);
  assert.ok(ok.body.data.events.length > 0);
  const bad = await get('/search?starts_at=nope');
  assert.deepEqual(checkSchema(doc, schemaOf('400'), bad.body), []);
  // The checker itself catches a wrong shape.
  assert.notDeepEqual(checkSchema(doc, schemaOf('200'), { data: { events: [{ id: 'x', min_price: '1' }] }, error: null }), []);

  // A 500: a server whose database does not exist; the cause stays out of the response.
  const broken = await openDb({ url: withDatabase(store.db.url, 'sluice_no_such_db'), migrate: false, max: 1 });
  const brokenApp = await buildServer({ pool: broken });
  try {
    const res = await brokenApp.inject({ method: 'GET', url: '/search' });
    assert.equal(res.statusCode, 500);
    assert.deepEqual(res.json(), { error: { code: 'internal', message: 'internal error' }, data: null });
    assert.deepEqual(checkSchema(doc, schemaOf('500'), res.json()), []);
  } finally {
    await brokenApp.close();
    await broken.end();
  }

  const html = await app.inject({ method: 'GET', url: '/docs' });
  assert.equal(html.statusCode, 200);
  assert.match(String(html.headers['content-type']), /text\/html/);
  assert.match(html.body, /GET \/search/);
  assert.match(html.body, /starts_at/);
});

test('cache: repeated searches do not query the events; a sync committed elsewhere shows at once', async () => {
  const url = '/search?starts_at=2021-06-30T00:00:00&ends_at=2021-07-01T00:00:00';
  await get(url);
  store.statements.length = 0;
  const answers = await Promise.all(Array.from({ length: 50 }, () => get(url)));
  assert.ok(answers.every((a) => a.status === 200 && a.body.data.events.length === 3));
  assert.equal(store.statements.filter((q) => q === 'provider_search_batch').length, 0, 'no search query on hits');
  // Strict mode checks the version, but 50 concurrent requests share a few checks.
  const checks = store.statements.filter((q) => q === 'provider_feed_version').length;
  assert.ok(checks >= 1 && checks < 10, `${checks} version checks`);

  // "Another process" commits a sync: the very next request sees it.
  const changed = structuredClone(FEED);
  changed[0]!.events[0]!.zones = zone('3');
  store.sim.setResponses([feedXml(changed)]);
  const r = await syncEvents(store.other, { url: store.sim.url, trigger: 'test' });
  assert.equal(r.eventsChanged, 1);
  const after = await get(url);
  assert.deepEqual(after.body.data.events.map((e: { min_price: number }) => e.min_price), [0, 8, 3]);
});

test('cache in notify mode: no database work on hits; a NOTIFY from another process invalidates', async () => {
  process.env.SLUICE_SEARCH_CACHE = 'notify';
  const notifyApp = await buildServer({ pool: store.db.pool });
  delete process.env.SLUICE_SEARCH_CACHE;
  try {
    await notifyApp.ready();
    const url = '/search?ends_at=2021-07-01T00:00:00';
    const read = async () => (await notifyApp.inject({ method: 'GET', url })).json().data.events.map((e: { min_price: number }) => e.min_price);
    assert.deepEqual(await read(), [0, 8, 3]);
    store.statements.length = 0;
    for (let i = 0; i < 20; i++) await read();
    assert.deepEqual(store.statements, [], 'hits touch no database');

    const changed = structuredClone(FEED);
    changed[0]!.events[0]!.zones = zone('4');
    store.sim.setResponses([feedXml(changed)]);
    await syncEvents(store.other, { url: store.sim.url, trigger: 'test' });
    // The notification arrives asynchronously (sub-millisecond here): poll with a deadline.
    const deadline = Date.now() + 5000;
    let prices = await read();
    while (prices[2] !== 4 && Date.now() < deadline) {
      await new Promise((r) => setImmediate(r));
      prices = await read();
    }
    assert.deepEqual(prices, [0, 8, 4]);
  } finally {
    await notifyApp.close();
  }
});
