/**
 * Shutdown of the HTTP server (src/http/server.ts): a request that arrives on an open
 * keep-alive connection once close() has begun gets 503 in Sluice's {"error":{"code",
 * "message"}} form (not Fastify's own body), while the request in progress finishes.
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, test } from 'node:test';
import { buildServer } from '../../src/http/server.ts';
import { testDb, type TestDb } from '../helpers/db.ts';

let db: TestDb;
before(async () => {
  db = await testDb();
});
after(async () => {
  await db.close();
});

interface Response {
  status: number;
  headers: string;
  body: string;
}

/** Splits the bytes a socket received into HTTP/1.1 responses framed by Content-Length. */
function responses(raw: string): Response[] {
  const out: Response[] = [];
  let rest = raw;
  for (;;) {
    const end = rest.indexOf('\r\n\r\n');
    if (end < 0) return out;
    const head = rest.slice(0, end);
    const length = Number(/content-length: *(\d+)/i.exec(head)?.[1] ?? 0);
    out.push({ status: Number(head.split(' ')[1]), headers: head, body: rest.slice(end + 4, end + 4 + length) });
    rest = rest.slice(end + 4 + length);
  }
}

test('a request arriving while the server closes gets 503 in the Sluice error form', async () => {
  const app = await buildServer({ pool: db.pool });
  await app.listen({ port: 0, host: '127.0.0.1' });
  const { port } = app.server.address() as net.AddressInfo;
  const body = JSON.stringify({ page_path: '/closing', visitor_id: 'closing-1' });
  const request = (b: string) => `POST /visits HTTP/1.1\r\nHost: sluice\r\nContent-Type: application/json\r\nContent-Length: ${b.length}\r\n\r\n`;

  const socket = net.connect(port, '127.0.0.1');
  let received = '';
  socket.setEncoding('utf8');
  socket.on('data', (d) => (received += d));
  const ended = new Promise<void>((resolve) => socket.on('close', () => resolve()));
  // Request 1 is in progress (headers read, body not complete) when close() begins.
  const inProgress = new Promise<void>((resolve) => app.server.once('request', () => resolve()));
  socket.write(request(body) + body.slice(0, 5));
  await inProgress;
  const closed = app.close();
  // Fastify stops listening once the preClose hooks (which mark the server as closing) ran.
  while (app.server.listening) await new Promise((resolve) => setImmediate(resolve));
  // The rest of request 1, and request 2 pipelined behind it on the same connection.
  const second = JSON.stringify({ page_path: '/closing', visitor_id: 'closing-2' });
  socket.write(body.slice(5) + request(second) + second);
  await ended;
  await closed;

  const [first, late] = responses(received);
  assert.equal(first?.status, 202, received);
  assert.equal(late?.status, 503, received);
  assert.deepEqual(Object.keys(JSON.parse(late!.body)), ['error']);
  assert.equal(JSON.parse(late!.body).error.code, 'unavailable');
  assert.match(JSON.parse(late!.body).error.message, /shutting down/);
  assert.match(late!.headers, /connection: close/i);
  const { rows } = await db.pool.query<{ visitor_id: string }>("SELECT visitor_id FROM visits WHERE page_path = '/closing'");
  assert.deepEqual(rows.map((r) => r.visitor_id), ['closing-1'], 'the request in progress was stored, the late one not');
});
