import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { openDb } from '../../src/db/pool.ts';
import { buildServer } from '../../src/http/server.ts';
import { testDb, type TestDb } from '../helpers/db.ts';
import { until } from '../helpers/processes.ts';
import { startTcpProxy, type TcpProxy } from '../helpers/tcp-proxy.ts';

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

/** The one 503 body of /healthz, whatever the cause: exactly `{"error":{"code":"unavailable","message"}}`. */
function assertUnavailable(body: unknown, message: string): void {
  assert.deepEqual(body, { error: { code: 'unavailable', message } });
}

/**
 * A server listening on 127.0.0.1 whose database is behind a TCP proxy; `use` gets the proxy
 * and a GET /healthz. Afterwards `/healthz` must answer 200 again (the proxy back to normal
 * by then); the proxy is closed before the pool, whose connections opened during a stall
 * would otherwise wait for ever (pg has no connect timeout here), and its end with them.
 */
async function proxiedHealthz(
  options: { healthTimeoutMs?: number },
  use: (proxy: TcpProxy, healthz: () => Promise<Response>) => Promise<void>,
): Promise<void> {
  const proxy = await startTcpProxy(db.url);
  const pool = await openDb({ url: proxy.url, migrate: false });
  const server = await buildServer({ pool }, options);
  try {
    await server.listen({ port: 0, host: '127.0.0.1' });
    const { port } = server.server.address() as net.AddressInfo;
    const healthz = () => fetch(`http://127.0.0.1:${port}/healthz`);
    await use(proxy, healthz);
    const back = await until(async () => {
      const res = await healthz();
      return res.status === 200 ? res : void (await res.body?.cancel());
    }, '/healthz to answer 200 again', 10_000);
    assert.deepEqual(await back.json(), { status: 'ok' });
  } finally {
    await server.close();
    await proxy.close();
    await pool.end();
  }
}

test('GET /healthz over HTTP with the database cut (a TCP proxy gone down): 503 in the API error form; 200 once it is back', async () => {
  await proxiedHealthz({}, async (proxy, healthz) => {
    const up = await healthz();
    assert.equal(up.status, 200);
    assert.deepEqual(await up.json(), { status: 'ok' });

    // Open connections cut, new ones reset: as while Postgres restarts or the network is down.
    proxy.down();
    const down = await healthz();
    assert.equal(down.status, 503);
    assert.match(down.headers.get('content-type') ?? '', /^application\/json/);
    assertUnavailable(await down.json(), 'the database is unavailable; try again shortly');
    proxy.up();
  });
});

test('GET /healthz on a keep-alive connection once close() has begun: 503 in the same form, with Connection: close', async () => {
  const server = await buildServer({ pool: db.pool });
  await server.listen({ port: 0, host: '127.0.0.1' });
  const { port } = server.server.address() as net.AddressInfo;
  // A request in progress (headers read, body not complete) keeps the connection, and so the
  // server, open while close() begins; a request pipelined behind it arrives during the close.
  const visit = JSON.stringify({ page_path: '/healthz-closing', visitor_id: 'healthz-closing' });
  const socket = net.connect(port, '127.0.0.1');
  let received = '';
  socket.setEncoding('utf8');
  socket.on('data', (d) => (received += d));
  const ended = new Promise<void>((resolve) => socket.on('close', () => resolve()));
  const inProgress = new Promise<void>((resolve) => server.server.once('request', () => resolve()));
  socket.write(`POST /visits HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: ${visit.length}\r\n\r\n${visit.slice(0, 5)}`);
  await inProgress;
  const closed = server.close();
  // Fastify stops listening once the preClose hooks (which mark the server as closing) ran.
  while (server.server.listening) await new Promise((resolve) => setImmediate(resolve));
  socket.write(`${visit.slice(5)}GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`);
  await ended;
  await closed;

  // Two responses framed by Content-Length: the visit's, then the health check's.
  const split = received.indexOf('\r\n\r\n');
  const firstLength = Number(/content-length: *(\d+)/i.exec(received.slice(0, split))![1]);
  const rest = received.slice(split + 4 + firstLength);
  assert.match(received, /^HTTP\/1\.1 202 /, received);
  const [head, body] = [rest.slice(0, rest.indexOf('\r\n\r\n')), rest.slice(rest.indexOf('\r\n\r\n') + 4)];
  assert.match(head, /^HTTP\/1\.1 503 /, received);
  assert.match(head, /\r\nconnection: close\r\n/i);
  assert.match(head, /\r\ncontent-type: application\/json/i);
  assertUnavailable(JSON.parse(body), 'the server is shutting down; retry on another instance');
});

test('GET /healthz with the database not answering (a TCP proxy that drops everything): 503 within its timeout, not a hang; 200 once packets flow', async () => {
  await proxiedHealthz({ healthTimeoutMs: 500 }, async (proxy, healthz) => {
    assert.equal((await healthz()).status, 200);
    proxy.stall();
    for (let i = 0; i < 3; i++) {
      const started = Date.now();
      const res = await healthz();
      const took = Date.now() - started;
      assert.equal(res.status, 503);
      assertUnavailable(await res.json(), 'the database is unavailable; try again shortly');
      assert.ok(took >= 450 && took < 5000, `answered after ${took} ms`);
    }
    proxy.flow();
  });
});
