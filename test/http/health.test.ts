import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { openDb } from '../../src/db/pool.ts';
import { buildServer } from '../../src/http/server.ts';
import { testDb, type TestDb } from '../helpers/db.ts';

let db: TestDb;
let app: FastifyInstance;
before(async () => {
  db = await testDb();
  app = await buildServer({ pool: db.pool });
});
after(async () => {
  await app.close();
  await db.close();
});

test('GET /healthz answers ok when the database is reachable', async () => {
  const res = await app.inject({ method: 'GET', url: '/healthz' });
  assert.equal(res.statusCode, 200);
  assert.deepEqual(res.json(), { status: 'ok' });
});

test('GET /metrics serves Prometheus text with Sluice metrics', async () => {
  await app.inject({ method: 'GET', url: '/healthz' });
  const res = await app.inject({ method: 'GET', url: '/metrics' });
  assert.equal(res.statusCode, 200);
  assert.match(res.headers['content-type'] as string, /text\/plain/);
  assert.match(res.body, /sluice_http_requests_total\{route="\/healthz",status="200"\} \d+/);
});

test('unknown routes get the JSON error shape', async () => {
  const res = await app.inject({ method: 'GET', url: '/nope' });
  assert.equal(res.statusCode, 404);
  assert.deepEqual(res.json(), { error: { code: 'not_found', message: 'no route GET /nope' } });
});

test('a database out of reach is a 503 "unavailable" on every route, not a 500', async () => {
  // Nothing listens on port 1: every query fails with ECONNREFUSED, as while Postgres restarts.
  const down = await buildServer({ pool: await openDb({ url: 'postgres://sluice:x@127.0.0.1:1/none', migrate: false }) });
  try {
    for (const url of ['/imports', '/imports/00000000-0000-4000-8000-000000000000', '/crm/runs']) {
      const res = await down.inject({ method: 'GET', url });
      assert.equal(res.statusCode, 503, `${url}: ${res.body}`);
      assert.deepEqual(res.json(), { error: { code: 'unavailable', message: 'the database is unavailable; try again shortly' } });
    }
  } finally {
    await down.close();
  }
});
