/**
 * GET /search compares its bounds as instants: `starts_at` equal to `ends_at` in another
 * spelling (`21:00:00.000` and `21:00:00`, `.50` and `.5`) was refused with 400, because the
 * bounds were compared as strings.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { buildServer } from '../../src/http/server.ts';
import { parseSearchBound } from '../../src/http/routes/search.ts';
import { titles } from './feeds.ts';
import { SEARCH_FEED, searchStore, type SearchStore } from './search-store.ts';

let store: SearchStore;
let app: FastifyInstance;
before(async () => {
  store = await searchStore(SEARCH_FEED);
  app = await buildServer({ pool: store.db.pool });
});
after(async () => {
  await app.close();
  await store.close();
});

async function get(query: string) {
  const res = await app.inject({ method: 'GET', url: `/search?${query}` });
  return { status: res.statusCode, body: res.json() as Record<string, any> };
}

test('equal bounds in two spellings are equal: 200, not "starts_at must not be after ends_at"', async () => {
  const cases = [
    'starts_at=2021-06-30T21:00:00.000&ends_at=2021-06-30T21:00:00',
    'starts_at=2021-06-30T21:00:00.50&ends_at=2021-06-30T21:00:00.5',
    'starts_at=2021-06-30T21:00:00.000000000Z&ends_at=2021-06-30T21:00',
    'starts_at=2021-06-30T21:00:00.1&ends_at=2021-06-30T21:00:00.100001',
  ];
  for (const query of cases) {
    const res = await get(query);
    assert.equal(res.status, 200, `${query}: ${JSON.stringify(res.body)}`);
    assert.deepEqual(res.body.data.events, [], query);
  }
  // The same instant spelt two ways selects the same events (and shares a cache key).
  const a = await get('starts_at=2021-06-30T21:00:00.000&ends_at=2021-06-30T22:00:00.000000');
  const b = await get('starts_at=2021-06-30T21:00:00&ends_at=2021-06-30T22:00');
  assert.equal(a.status, 200);
  assert.deepEqual(a.body, b.body);
  assert.deepEqual(titles(a.body as never), ['Evening', 'Evening']);
  assert.equal(parseSearchBound('starts_at', '2021-06-30T21:00:00.000'), parseSearchBound('starts_at', '2021-06-30T21:00:00'));
  assert.equal(parseSearchBound('starts_at', '2021-06-30T21:00:00.50'), '2021-06-30T21:00:00.5');
});

test('starts_at after ends_at is still 400, by any fraction', async () => {
  const cases = [
    'starts_at=2021-06-30T21:00:00.5&ends_at=2021-06-30T21:00:00.49',
    'starts_at=2021-06-30T21:00:00.000001&ends_at=2021-06-30T21:00:00.000',
    'starts_at=2021-06-30T21:00:01&ends_at=2021-06-30T21:00:00.999999',
    'starts_at=2021-07-01&ends_at=2021-06-30T23:59:59.9',
  ];
  for (const query of cases) {
    const res = await get(query);
    assert.equal(res.status, 400, query);
    assert.deepEqual(res.body.error, { code: 'invalid_input', message: 'starts_at must not be after ends_at' }, query);
  }
});
