/**
 * GET /search with the database out of reach: 503 `unavailable` in the search's error shape
 * (like every other endpoint's 503), not a 500 with a stack trace; and 200 again once the
 * database is back.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { openDb, type Pool } from '../../src/db/pool.ts';
import { buildServer } from '../../src/http/server.ts';
import { startTcpProxy, type TcpProxy } from '../helpers/tcp-proxy.ts';
import { SEARCH_FEED, searchStore, type SearchStore } from './search-store.ts';

let store: SearchStore;
let proxy: TcpProxy;
let pool: Pool;
const logged: Array<{ level: number; msg: string }> = [];

before(async () => {
  store = await searchStore(SEARCH_FEED);
  proxy = await startTcpProxy(store.db.url);
  pool = await openDb({ url: proxy.url, migrate: false, max: 2 });
});
after(async () => {
  await pool.end().catch(() => {});
  await proxy.close();
  await store.close();
});

test('the database down: /search answers 503 unavailable (every cache mode), then 200 once it is back', async () => {
  for (const mode of ['strict', 'off']) {
    process.env.SLUICE_SEARCH_CACHE = mode;
    const app: FastifyInstance = await buildServer({ pool });
    // What each request logs as an error (a 500 logs one, with its stack).
    app.addHook('onRequest', async (req) => {
      const log = req.log;
      req.log = Object.assign(Object.create(log), { error: (...args: unknown[]) => void logged.push({ level: 50, msg: JSON.stringify(args) }) });
    });
    delete process.env.SLUICE_SEARCH_CACHE;
    try {
      const url = `/search?starts_at=2021-06-30&mode=${mode}`;
      assert.equal((await app.inject({ method: 'GET', url })).statusCode, 200, mode);
      proxy.down();
      logged.length = 0;
      for (const query of [url, '/search?ends_at=2031-01-01']) {
        const res = await app.inject({ method: 'GET', url: query });
        assert.equal(res.statusCode, 503, `${mode} ${query}: ${res.body}`);
        assert.deepEqual(res.json(), { error: { code: 'unavailable', message: 'the database is unavailable; try again shortly' }, data: null });
      }
      assert.ok(!logged.some((l) => l.level >= 50), `no error logged: ${JSON.stringify(logged.filter((l) => l.level >= 50))}`);
      proxy.up();
      const back = await app.inject({ method: 'GET', url: '/search?ends_at=2031-01-01' });
      assert.equal(back.statusCode, 200, back.body);
      assert.equal(back.json().data.events.length, 4);
    } finally {
      proxy.up();
      await app.close();
    }
  }
});
