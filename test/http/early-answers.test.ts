/**
 * Answers given before an upload's body was read to its end reach a client that writes its
 * whole request before it reads (Python's http.client does), on a raw socket: a 401 (no
 * token), a 400 (unknown pipeline) and a 413 found mid-body (no Content-Length) come after
 * the server has read and dropped the rest of the body, on a connection that then serves
 * the next request. A review saw the connection closed with the body unread instead: the
 * client got a broken pipe or a reset, not the answer. (The 400 and the 401 come before
 * anything reads the body, where Node itself would drain it; the 413 mid-body is where
 * src/http/drain.ts is needed, and its bounds have a test of their own.) An upload whose Content-Length is
 * already over the limit gets its 413 before a byte is read or stored, and the connection
 * is closed (its body is not read to be dropped).
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import { after, before, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { buildServer } from '../../src/http/server.ts';
import { testDb, type TestDb } from '../helpers/db.ts';
import { leadsCsv, startIntake, type Intake } from '../intake/http-helpers.ts';

const LIMIT = 1_000_000;
let db: TestDb;
let intake: Intake;
let open: FastifyInstance;
let small: FastifyInstance;
let guarded: FastifyInstance;
before(async () => {
  db = await testDb();
  intake = await startIntake(db);
  open = await buildServer(intake.ctx);
  small = await buildServer(intake.ctx, { imports: { maxUploadBytes: LIMIT } });
  guarded = await buildServer({ ...intake.ctx, apiToken: 'early-token' });
  for (const app of [open, small, guarded]) await app.listen({ port: 0, host: '127.0.0.1' });
});
after(async () => {
  for (const app of [open, small, guarded]) await app?.close();
  await intake?.stop();
  await db?.close();
});

const port = (app: FastifyInstance) => (app.server.address() as AddressInfo).port;
// A valid leads file of ~20 MB: refused for who sends it or how much, never for its content.
const BIG = Buffer.from(leadsCsv(420_000));

interface Exchange {
  /** Everything the server sent, as text. */
  text: string;
  /** The client's write failed (EPIPE, ECONNRESET). */
  writeError: string | undefined;
}

/**
 * Writes `head` and `body` (chunked when `chunked`), then, only once every byte was taken by
 * the server, `then` (a second request), and reads until the server closes or `until`
 * matches what it sent.
 */
function exchange(p: number, head: string, body: Buffer, o: { chunked?: boolean; then?: string; until: RegExp; readWhileWriting?: boolean }): Promise<Exchange> {
  return new Promise((resolve) => {
    const socket = net.connect(p, '127.0.0.1');
    let text = '';
    let writeError: string | undefined;
    let finished = false;
    const finish = () => {
      if (finished) return;
      finished = true;
      socket.destroy();
      resolve({ text, writeError });
    };
    const read = () =>
      socket.on('data', (d: Buffer) => {
        text += d.toString('latin1');
        if (o.until.test(text)) finish();
      });
    socket.on('error', (err: NodeJS.ErrnoException) => {
      writeError ??= err.code ?? err.message;
      finish();
    });
    socket.on('close', finish);
    if (o.readWhileWriting) read();
    socket.write(head);
    const pieces: Buffer[] = [];
    for (let at = 0; at < body.length; at += 1 << 20) {
      const piece = body.subarray(at, at + (1 << 20));
      pieces.push(o.chunked ? Buffer.concat([Buffer.from(`${piece.length.toString(16)}\r\n`), piece, Buffer.from('\r\n')]) : piece);
    }
    if (o.chunked) pieces.push(Buffer.from('0\r\n\r\n'));
    const next = (i: number): void => {
      if (finished) return;
      if (i === pieces.length) {
        if (o.then) socket.write(o.then);
        if (!o.readWhileWriting) read();
        return;
      }
      socket.write(pieces[i]!, (err) => (err ? undefined : next(i + 1)));
    };
    next(0);
  });
}

const upload = (query: string, headers: string[]) =>
  [`POST /imports?${query} HTTP/1.1`, 'Host: 127.0.0.1', 'Content-Type: text/csv', ...headers, '', ''].join('\r\n');
const HEALTH = 'GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n';
const TWO_ANSWERS = /HTTP\/1\.1 \d{3}[\s\S]*HTTP\/1\.1 200 OK[\s\S]*\{"status":"ok"\}/;

async function importRows(): Promise<number> {
  return (await db.pool.query('SELECT count(*)::int AS n FROM imports')).rows[0].n;
}

test('400 for an unknown pipeline reaches a client that sends its whole body first; the connection serves the next request', async () => {
  const r = await exchange(port(open), upload('pipeline=shoes', [`Content-Length: ${BIG.length}`]), BIG, { then: HEALTH, until: TWO_ANSWERS });
  assert.equal(r.writeError, undefined, r.text.slice(0, 300));
  assert.match(r.text, /^HTTP\/1\.1 400 Bad Request/);
  assert.match(r.text, /"code":"invalid_input","message":"unknown pipeline/);
  assert.match(r.text, TWO_ANSWERS, 'the next request on the connection is answered');
});

test('401 without the token, the same', async () => {
  const r = await exchange(port(guarded), upload('pipeline=leads', [`Content-Length: ${BIG.length}`]), BIG, { then: HEALTH, until: TWO_ANSWERS });
  assert.equal(r.writeError, undefined, r.text.slice(0, 300));
  assert.match(r.text, /^HTTP\/1\.1 401 Unauthorized/);
  assert.match(r.text, TWO_ANSWERS);
});

test('413 found mid-body (no Content-Length), the same; nothing of the upload is left', async () => {
  const before = await importRows();
  const r = await exchange(port(small), upload('pipeline=leads', ['Transfer-Encoding: chunked']), BIG, { chunked: true, then: HEALTH, until: TWO_ANSWERS });
  assert.equal(r.writeError, undefined, r.text.slice(0, 300));
  assert.match(r.text, /^HTTP\/1\.1 413 Payload Too Large/);
  assert.match(r.text, /"code":"too_large"/);
  assert.match(r.text, TWO_ANSWERS);
  assert.equal(await importRows(), before);
});

test('413 for a Content-Length over the limit: at once, nothing stored; the body (under 64 MiB) read and dropped for a client that writes it first', async () => {
  const before = await importRows();
  const r = await exchange(port(small), upload('pipeline=leads', [`Content-Length: ${BIG.length}`]), BIG, { then: HEALTH, until: TWO_ANSWERS });
  assert.equal(r.writeError, undefined, r.text.slice(0, 300));
  assert.match(r.text, /^HTTP\/1\.1 413 Payload Too Large/);
  assert.match(r.text, new RegExp(`upload larger than the limit of ${LIMIT} bytes \\(Content-Length: ${BIG.length}\\)`));
  assert.match(r.text, TWO_ANSWERS);
  assert.equal(await importRows(), before);
  assert.equal((await db.pool.query('SELECT count(*)::int AS n FROM import_parts')).rows[0].n, 0);
});

test("a request the HTTP parser cannot read gets Sluice's error form and a closed connection", async () => {
  const bad = await exchange(port(open), 'POST /imports?pipeline=leads HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: abc\r\n\r\n', Buffer.alloc(0), { readWhileWriting: true, until: /\}\}$/ });
  assert.match(bad.text, /^HTTP\/1\.1 400 Bad Request\r\n/);
  assert.match(bad.text, /\r\nConnection: close\r\n/);
  assert.match(bad.text, /\r\n\r\n\{"error":\{"code":"invalid_input","message":"malformed HTTP request \(HPE_[A-Z_]+\)"\}\}$/);
  const big = await exchange(port(open), `GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ${'a'.repeat(40_000)}\r\n\r\n`, Buffer.alloc(0), { readWhileWriting: true, until: /\}\}$/ });
  assert.match(big.text, /^HTTP\/1\.1 431 Request Header Fields Too Large\r\n/);
  assert.match(big.text, /\{"error":\{"code":"invalid_input","message":"the request headers are too large"\}\}$/);
});

test('a malformed request pipelined behind an upload is never answered as the upload: the connection is cut', async () => {
  const file = Buffer.from(leadsCsv(2000, 0, 'pipelined'));
  const both = Buffer.concat([Buffer.from(upload('pipeline=leads', [`Content-Length: ${file.length}`])), file, Buffer.from('POST /imports HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: x\r\n\r\n')]);
  const r = await exchange(port(open), '', both, { readWhileWriting: true, until: /HTTP\/1\.1 400/ });
  // Either nothing (cut while the upload was answered) or the upload's own 202: never a 400 first.
  assert.doesNotMatch(r.text, /^HTTP\/1\.1 400/, r.text.slice(0, 200));
});

test('a form that stops arriving before its file part is cut after the idle timeout, like a stalled file', async () => {
  const idleMs = 1000;
  const app = await buildServer(intake.ctx, { imports: { uploadIdleTimeoutMs: idleMs } });
  await app.listen({ port: 0, host: '127.0.0.1' });
  try {
    const since = new Date();
    const head = [
      'POST /imports HTTP/1.1', 'Host: 127.0.0.1', 'Content-Type: multipart/form-data; boundary=XyZ', 'Content-Length: 100000', '', '',
      '--XyZ\r\nContent-Disposition: form-data; name="pipeline"\r\n\r\nlea',
    ].join('\r\n');
    const started = Date.now();
    // Nothing more is sent: the server must end it (the wait below ends when the connection closes).
    const r = await exchange(port(app), head, Buffer.alloc(0), { readWhileWriting: true, until: /(?!)/ });
    const took = Date.now() - started;
    assert.ok(took >= idleMs - 100 && took < idleMs + 10_000, `cut after ${took} ms (idle timeout ${idleMs} ms)`);
    assert.equal(r.text, '', 'no answer: the request is destroyed, as a stalled raw body');
    assert.equal((await db.pool.query('SELECT count(*)::int AS n FROM imports WHERE created_at >= $1', [since])).rows[0].n, 0);
  } finally {
    await app.close();
  }
});

/** Sends `head` (with `Expect: 100-continue`) and waits for the first thing the server says; the socket, to go on. */
function expectContinue(p: number, head: string): Promise<{ first: string; socket: net.Socket; closed: Promise<void> }> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(p, '127.0.0.1');
    const closed = new Promise<void>((r) => socket.once('close', () => r()));
    socket.on('error', () => {});
    socket.once('data', (d: Buffer) => resolve({ first: d.toString('latin1'), socket, closed }));
    socket.once('close', () => reject(new Error('closed before any answer')));
    socket.write(head);
  });
}

test('Expect: 100-continue: a refused upload is answered without 100 Continue and closed; an accepted one gets 100 Continue, then its 202', async () => {
  const expecting = (query: string, extra: string[] = []) => upload(query, [`Content-Length: ${BIG.length}`, 'Expect: 100-continue', ...extra]);
  const refused = await expectContinue(port(guarded), expecting('pipeline=leads'));
  assert.match(refused.first, /^HTTP\/1\.1 401 Unauthorized\r\n/, 'no 100 Continue before the token is checked');
  assert.match(refused.first, /\r\nConnection: close\r\n/i);
  await refused.closed;
  const unknown = await expectContinue(port(open), expecting('pipeline=shoes'));
  assert.match(unknown.first, /^HTTP\/1\.1 400 Bad Request\r\n/);
  await unknown.closed;
  // A form: its fields are in the body, so only what the headers say is checked first.
  const form = await expectContinue(port(small), upload('', ['Content-Type: multipart/form-data; boundary=B', `Content-Length: ${50 * LIMIT}`, 'Expect: 100-continue']).replace('Content-Type: text/csv\r\n', ''));
  assert.match(form.first, /^HTTP\/1\.1 413 Payload Too Large\r\n/, 'a form over the limit: no 100 Continue first');
  await form.closed;

  const file = Buffer.from(leadsCsv(100, 0, 'continued'));
  const ok = await expectContinue(port(open), upload('pipeline=leads', [`Content-Length: ${file.length}`, 'Expect: 100-continue']));
  assert.match(ok.first, /^HTTP\/1\.1 100 Continue\r\n\r\n/);
  let rest = ok.first.replace(/^HTTP\/1\.1 100 Continue\r\n\r\n/, '');
  const answered = new Promise<string>((resolve) => {
    ok.socket.on('data', (d: Buffer) => {
      rest += d.toString('latin1');
      if (/\r\n\r\n\{.*\}$/.test(rest)) resolve(rest);
    });
  });
  ok.socket.write(file);
  assert.match(await answered, /^HTTP\/1\.1 202 Accepted\r\n/);
  ok.socket.destroy();
});

test('drainRequest is bounded: past its bytes, or its time without the body ending, the connection is cut', async () => {
  const { drainRequest } = await import('../../src/http/drain.ts');
  const http = await import('node:http');
  const bare = http.createServer((req, res) => {
    res.writeHead(400, { 'content-type': 'text/plain' }).end('no');
    drainRequest(req, { bytes: 1 << 20, ms: 300 });
  });
  await new Promise<void>((r) => bare.listen(0, '127.0.0.1', () => r()));
  const p = (bare.address() as AddressInfo).port;
  try {
    // 20 MB against a 1 MiB bound: cut part way, so the writer fails.
    const big = await exchange(p, `POST / HTTP/1.1\r\nHost: x\r\nContent-Length: ${BIG.length}\r\n\r\n`, BIG, { until: /(?!)/ });
    assert.ok(big.writeError, 'cut before 20 MB were read');
    // A body that stops coming: cut after ~300 ms, not kept open.
    const started = Date.now();
    const slow = await exchange(p, 'POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc', Buffer.alloc(0), { readWhileWriting: true, until: /(?!)/ });
    const took = Date.now() - started;
    assert.match(slow.text, /^HTTP\/1\.1 400 Bad Request/);
    assert.ok(took >= 250 && took < 10_000, `cut after ${took} ms`);
  } finally {
    bare.closeAllConnections();
    await new Promise<void>((r) => bare.close(() => r()));
  }
});
