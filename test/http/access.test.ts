/**
 * Who may call what (src/http/auth.ts), on the whole server (buildServer) over real Postgres:
 * - isLoopback: `localhost` and literal loopback addresses only, never a DNS name that merely
 *   starts with `127.` or `localhost`;
 * - without a token, every route but the public ones and the beacons (POST /visits*) answers
 *   only a loopback `Host` (403 otherwise: DNS rebinding), /crm, /metrics and unknown paths
 *   included;
 * - with a token, every route but the public ones needs it, reads included (401 with
 *   `WWW-Authenticate`), under any Host; the public ones (/healthz, /, /docs,
 *   /docs/openapi.json, /search, /live, /live/snapshot, /live/stream) need nothing anywhere.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, test } from 'node:test';
import type { FastifyInstance, InjectOptions } from 'fastify';
import { hostName, isLoopback, listenUrl, nonLoopbackAddresses, PUBLIC_ROUTES } from '../../src/http/auth.ts';
import { buildServer } from '../../src/http/server.ts';
import { testDb, type TestDb } from '../helpers/db.ts';
import { leadsCsv, multipart, startIntake, waitFor, type Intake } from '../intake/http-helpers.ts';

const TOKEN = 'access-test-token';
let db: TestDb;
let intake: Intake;
/** No token: loopback Hosts only. */
let open: FastifyInstance;
/** SLUICE_API_TOKEN set. */
let guarded: FastifyInstance;
let importId: string;
let runId: number;

before(async () => {
  db = await testDb();
  intake = await startIntake(db, { workers: 1 });
  open = await buildServer(intake.ctx);
  guarded = await buildServer({ ...intake.ctx, apiToken: TOKEN });
  const form = multipart([{ name: 'pipeline', value: 'leads' }, { name: 'file', filename: 'access.csv', content: leadsCsv(3, 1) }]);
  const res = await open.inject({ method: 'POST', url: '/imports', payload: form.payload, headers: form.headers });
  assert.equal(res.statusCode, 202, res.body);
  importId = res.json().id;
  await waitFor('the import finished', async () => {
    const { rows } = await db.pool.query<{ status: string }>('SELECT status FROM imports WHERE id = $1', [importId]);
    return rows[0]!.status === 'completed' ? true : undefined;
  });
  const { rows } = await db.pool.query<{ id: number }>(
    `INSERT INTO crm_runs (pipeline, trigger, destination, config_hash, summary, sources, details)
     VALUES ('jaffle', 'cli', 'pipedrive', 'h', '{}', '{}', '{}') RETURNING id`,
  );
  runId = rows[0]!.id;
});
after(async () => {
  await open?.close();
  await guarded?.close();
  await intake?.stop();
  await db?.close();
});

test('isLoopback: localhost and literal loopback addresses, nothing else', () => {
  const yes = ['127.0.0.1', '127.1.2.3', '127.255.255.254', '::1', '[::1]', '0:0:0:0:0:0:0:1', '::ffff:127.0.0.1', '[::ffff:127.0.0.1]', '::ffff:7f00:1', 'localhost', 'LOCALHOST', 'localhost.', 'LocalHost.'];
  const no = [
    '127.attacker.example', '127.0.0.1.nip.io', '127.0.0.1.', 'localhost.evil.com', 'evil.localhost', 'localhost..', 'localhost:8080',
    '0.0.0.0', '::', '[::]', '10.0.0.1', '::ffff:10.0.0.1', '::127.0.0.1', '128.0.0.1', '127.1', '0127.0.0.1', '2130706433', '0x7f.0.0.1', 'fe80::1%lo', '',
  ];
  for (const h of yes) assert.equal(isLoopback(h), true, h);
  for (const h of no) assert.equal(isLoopback(h), false, h);
});

test('hostName, and the addresses serve reports and refuses', () => {
  assert.equal(hostName('LOCALHOST:8080'), 'localhost');
  assert.equal(hostName('[::1]:8080'), '::1');
  assert.equal(hostName('[::ffff:127.0.0.1]'), '::ffff:127.0.0.1');
  assert.equal(hostName('127.attacker.example:18080'), '127.attacker.example');
  const bound: AddressInfo[] = [
    { address: '127.0.0.1', family: 'IPv4', port: 8080 },
    { address: '::1', family: 'IPv6', port: 8080 },
  ];
  assert.deepEqual(bound.map(listenUrl), ['http://127.0.0.1:8080', 'http://[::1]:8080']);
  assert.deepEqual(nonLoopbackAddresses(bound), []);
  assert.deepEqual(
    nonLoopbackAddresses([...bound, { address: '0.0.0.0', family: 'IPv4', port: 8080 }, { address: '::', family: 'IPv6', port: 8080 }]),
    ['http://0.0.0.0:8080', 'http://[::]:8080'],
  );
});

const json = { 'content-type': 'application/json' };
/** Visits, from any site by design: the token when one is set, but no Host check. */
const beacons: Array<InjectOptions & { url: string }> = [
  { method: 'POST', url: '/visits', headers: json, payload: JSON.stringify({ page_path: '/access', visitor_id: 'v' }) },
  { method: 'POST', url: '/visits/batch', headers: json, payload: JSON.stringify([{ page_path: '/access', visitor_id: 'v' }]) },
];

/** The protected requests: every read of data, and the writes. */
function protectedRequests(): Array<InjectOptions & { url: string }> {
  return [
    { method: 'GET', url: '/imports' },
    { method: 'HEAD', url: '/imports' },
    { method: 'GET', url: `/imports/${importId}` },
    { method: 'GET', url: `/imports/${importId}/rejects` },
    { method: 'GET', url: `/imports/${importId}/rejects?format=ndjson` },
    { method: 'GET', url: '/crm/runs' },
    { method: 'GET', url: `/crm/runs/${runId}/failures` },
    { method: 'GET', url: '/metrics' },
    { method: 'POST', url: `/imports/${randomUUID()}/cancel` },
    { method: 'POST', url: '/imports?pipeline=nope', headers: { 'content-type': 'text/csv' }, payload: 'a\n1\n' },
    ...beacons,
    // Not a route: refused like one rather than telling which paths exist.
    { method: 'GET', url: '/nope' },
    { method: 'POST', url: '/search' },
  ];
}

/** The public requests: the same answer with a token or without, under any Host. */
const publicRequests: Array<InjectOptions & { url: string }> = [
  { method: 'GET', url: '/healthz' },
  { method: 'HEAD', url: '/healthz' },
  { method: 'GET', url: '/' },
  { method: 'GET', url: '/docs' },
  { method: 'GET', url: '/docs/openapi.json' },
  { method: 'GET', url: '/search?starts_at=2021-01-01' },
  { method: 'GET', url: '/live' },
  { method: 'GET', url: '/live/snapshot' },
];

const REBOUND = ['evil.example.com', '127.attacker.example:18080', '127.0.0.1.nip.io:8080', 'localhost.evil.com', '0.0.0.0:8080', '[::]:8080', '10.0.0.1'];
const LOOPBACK_HOSTS = ['127.0.0.1:8080', '127.1.2.3', 'localhost', 'LOCALHOST.:8080', '[::1]:8080', '[::ffff:127.0.0.1]:8080'];

function withHost(req: InjectOptions, host: string, extra: Record<string, string> = {}): InjectOptions {
  return { ...req, headers: { ...(req.headers as Record<string, string>), host, ...extra } };
}

test('without a token: every protected route answers loopback Hosts only (403 otherwise), the beacons aside', async () => {
  for (const req of protectedRequests()) {
    for (const host of REBOUND) {
      const res = await open.inject(withHost(req, host));
      if (beacons.includes(req)) {
        assert.equal(res.statusCode, 202, `${req.method} ${req.url} Host ${host}: ${res.body}`);
        continue;
      }
      assert.equal(res.statusCode, 403, `${req.method} ${req.url} Host ${host}: ${res.body}`);
      if (req.method !== 'HEAD') assert.equal(res.json().error.code, 'forbidden');
    }
    for (const host of LOOPBACK_HOSTS) {
      const res = await open.inject(withHost(req, host));
      assert.ok(res.statusCode !== 403 && res.statusCode !== 401, `${req.method} ${req.url} Host ${host}: ${res.statusCode} ${res.body}`);
    }
  }
  // The reads' real answers under a loopback Host.
  assert.equal((await open.inject({ method: 'GET', url: '/crm/runs', headers: { host: '127.0.0.1' } })).json().runs.length, 1);
  assert.equal((await open.inject({ method: 'GET', url: '/metrics', headers: { host: '[::1]:8080' } })).statusCode, 200);
  const rejects = await open.inject({ method: 'GET', url: `/imports/${importId}/rejects?format=ndjson`, headers: { host: 'localhost:8080' } });
  assert.equal(rejects.statusCode, 200);
});

test('without a token: the public routes answer any Host', async () => {
  for (const req of publicRequests) {
    for (const host of [...REBOUND, ...LOOPBACK_HOSTS]) {
      const res = await open.inject(withHost(req, host));
      assert.equal(res.statusCode, 200, `${req.method} ${req.url} Host ${host}: ${res.body.slice(0, 200)}`);
    }
  }
});

test('with a token: every protected route needs it (401, WWW-Authenticate), reads included, under any Host', async () => {
  for (const req of protectedRequests()) {
    for (const auth of [undefined, 'Bearer wrong', `Bearer ${TOKEN}x`, TOKEN, `Basic ${Buffer.from(`u:${TOKEN}`).toString('base64')}`]) {
      const res = await guarded.inject(withHost(req, '127.0.0.1:8080', auth === undefined ? {} : { authorization: auth }));
      assert.equal(res.statusCode, 401, `${req.method} ${req.url} ${auth}: ${res.body}`);
      assert.equal(res.headers['www-authenticate'], 'Bearer realm="sluice"');
      if (req.method !== 'HEAD') {
        assert.deepEqual(res.json(), { error: { code: 'unauthorized', message: 'missing or wrong API token (send Authorization: Bearer <token>)' } });
      }
    }
    // The token opens it under any Host: the Host is checked only on servers without one.
    for (const host of ['sluice.example.com', '127.0.0.1:8080']) {
      const res = await guarded.inject(withHost(req, host, { authorization: `Bearer ${TOKEN}` }));
      assert.ok(res.statusCode !== 401 && res.statusCode !== 403, `${req.method} ${req.url} Host ${host}: ${res.statusCode} ${res.body}`);
    }
  }
  const rejects = await guarded.inject({ method: 'GET', url: `/imports/${importId}/rejects`, headers: { authorization: `bearer ${TOKEN}` } });
  assert.equal(rejects.statusCode, 200);
  assert.match(rejects.body, /not-an-email-0/);
  const runs = await guarded.inject({ method: 'GET', url: '/crm/runs', headers: { host: 'sluice.example.com', authorization: `Bearer ${TOKEN}` } });
  assert.equal(runs.json().runs.length, 1);
});

test('with a token: the public routes need none, and a wrong one does not matter', async () => {
  for (const req of publicRequests) {
    for (const auth of [undefined, 'Bearer wrong']) {
      const res = await guarded.inject(withHost(req, 'sluice.example.com', auth === undefined ? {} : { authorization: auth }));
      assert.equal(res.statusCode, 200, `${req.method} ${req.url} ${auth}: ${res.body.slice(0, 200)}`);
    }
  }
});

test('the public routes are exactly these, and /live/stream is one of them (a stream under any Host, no token)', async () => {
  assert.deepEqual([...PUBLIC_ROUTES].sort(), ['/', '/docs', '/docs/openapi.json', '/healthz', '/live', '/live/snapshot', '/live/stream', '/search']);
  await guarded.listen({ port: 0, host: '127.0.0.1' });
  const { port } = guarded.server.address() as AddressInfo;
  const status = await new Promise<number>((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: '/live/stream', headers: { host: 'live.example.com' } }, (res) => {
      resolve(res.statusCode!);
      res.destroy();
    });
    req.on('error', reject);
  });
  assert.equal(status, 200);
});
