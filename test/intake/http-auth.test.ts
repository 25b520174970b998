/**
 * The API token (SLUICE_API_TOKEN): with it set, every request to the imports API, reads
 * included (the rejects are the customers' rows), needs `Authorization: Bearer <token>`
 * (401 JSON error otherwise, body never read); the dashboard's page stays open. Without it
 * the token is not checked. (Every other route: test/http/access.test.ts.)
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { bearerToken, sameSecret } from '../../src/http/auth.ts';
import { buildServer } from '../../src/http/server.ts';
import { testDb, type TestDb } from '../helpers/db.ts';
import { leadsCsv, multipart, startIntake, type Intake } from './http-helpers.ts';

const TOKEN = 's3cret-token-for-tests';
let db: TestDb;
let intake: Intake;
let app: FastifyInstance;
before(async () => {
  db = await testDb();
  intake = await startIntake(db, { apiToken: TOKEN });
  app = await buildServer(intake.ctx);
});
after(async () => {
  await app.close();
  await intake.stop();
  await db.close();
});

function upload(headers: Record<string, string> = {}) {
  const form = multipart([{ name: 'pipeline', value: 'leads' }, { name: 'file', filename: 'auth.csv', content: leadsCsv(3) }]);
  return app.inject({ method: 'POST', url: '/imports', payload: form.payload, headers: { ...form.headers, ...headers } });
}

function assert401(res: { statusCode: number; headers: Record<string, unknown>; json(): unknown }) {
  assert.equal(res.statusCode, 401);
  assert.deepEqual(res.json(), { error: { code: 'unauthorized', message: 'missing or wrong API token (send Authorization: Bearer <token>)' } });
  assert.equal(res.headers['www-authenticate'], 'Bearer realm="sluice"');
}

test('uploads without the token, or with a wrong one, get 401 and create nothing', async () => {
  assert401(await upload());
  assert401(await upload({ authorization: 'Bearer nope' }));
  assert401(await upload({ authorization: `Bearer ${TOKEN}x` }));
  assert401(await upload({ authorization: `Bearer ${TOKEN.slice(0, -1)}` }));
  assert401(await upload({ authorization: TOKEN }));
  assert401(await upload({ authorization: `Basic ${Buffer.from(`u:${TOKEN}`).toString('base64')}` }));
  assert401(await app.inject({ method: 'POST', url: '/imports?pipeline=leads', headers: { 'content-type': 'text/csv' }, payload: leadsCsv(2) }));
  assert401(await app.inject({ method: 'POST', url: '/imports', payload: { pipeline: 'leads', url: 'http://127.0.0.1:9/x.csv' } }));
  assert401(await app.inject({ method: 'POST', url: `/imports/${randomUUID()}/cancel` }));
  const { rows } = await db.pool.query<{ n: number }>('SELECT count(*)::int AS n FROM imports');
  assert.equal(rows[0]!.n, 0);
});

test('the right token passes (any case of "Bearer"), for reads too; the page needs none', async () => {
  const ok = await upload({ authorization: `Bearer ${TOKEN}` });
  assert.equal(ok.statusCode, 202, ok.body);
  const { id } = ok.json();
  assert.equal((await upload({ authorization: `bearer ${TOKEN}` })).statusCode, 202);

  const auth = { authorization: `Bearer ${TOKEN}` };
  for (const url of [`/imports/${id}`, '/imports', `/imports/${id}/rejects`, `/imports/${id}/rejects?format=ndjson`]) {
    assert401(await app.inject({ method: 'GET', url }));
    assert401(await app.inject({ method: 'GET', url, headers: { authorization: 'Bearer nope' } }));
    assert.equal((await app.inject({ method: 'GET', url, headers: auth })).statusCode, 200, url);
  }
  assert.equal((await app.inject({ method: 'HEAD', url: '/imports' })).statusCode, 401);
  assert.equal((await app.inject({ method: 'HEAD', url: '/imports', headers: auth })).statusCode, 200);
  assert.equal((await app.inject({ method: 'GET', url: '/' })).statusCode, 200);

  const cancel = await app.inject({ method: 'POST', url: `/imports/${id}/cancel`, headers: auth });
  assert.equal(cancel.statusCode, 200, cancel.body);
  assert.equal(cancel.json().status, 'cancelled');
});

test('without a token configured, reads and writes are open (loopback-only servers)', async () => {
  const open = await buildServer({ pool: db.pool, boss: intake.ctx.boss } as typeof intake.ctx);
  try {
    const res = await open.inject({ method: 'POST', url: '/imports?pipeline=nope', headers: { 'content-type': 'text/csv' }, payload: 'a\n1\n' });
    assert.equal(res.statusCode, 400, 'past the token check, refused for the unknown pipeline');
    assert.equal((await open.inject({ method: 'GET', url: '/imports' })).statusCode, 200);
  } finally {
    await open.close();
  }
});

test('bearerToken and sameSecret', () => {
  assert.equal(bearerToken('Bearer abc'), 'abc');
  assert.equal(bearerToken('bearer   abc  '), 'abc');
  assert.equal(bearerToken('Bearer'), undefined);
  assert.equal(bearerToken('Bearer a b'), undefined);
  assert.equal(bearerToken('Token abc'), undefined);
  assert.equal(bearerToken(undefined), undefined);
  assert.equal(sameSecret('abc', 'abc'), true);
  assert.equal(sameSecret('abc', 'abd'), false);
  assert.equal(sameSecret('abc', 'abcd'), false);
  assert.equal(sameSecret('', 'abc'), false);
});
