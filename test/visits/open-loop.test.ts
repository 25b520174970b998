/**
 * The open-loop generator on its own (src/loadgen/): it sends exactly rate x duration
 * requests, counts answers, refusals and timeouts, and reads both response framings.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { test } from 'node:test';
import { startBareServer } from '../../src/loadgen/bare-server.ts';
import { runOpenLoop } from '../../src/loadgen/open-loop.ts';

const body = () => ({ path: '/visits', headers: { 'content-type': 'application/json' }, body: '{"page_path":"/"}' });
const urlOf = (s: http.Server) => `http://127.0.0.1:${(s.address() as AddressInfo).port}`;
const close = (s: http.Server) => new Promise<void>((r) => s.close(() => r()));

test('sends rate x duration requests and measures them', async () => {
  const server = await startBareServer();
  try {
    const seen: number[] = [];
    const r = await runOpenLoop({ url: urlOf(server), rate: 400, durationMs: 1000, request: body, onResult: (o) => seen.push(o.seq) });
    assert.equal(r.sent, 400);
    assert.equal(r.succeeded, 400);
    assert.equal(r.failed, 0);
    assert.deepEqual(r.statuses, { 202: 400 });
    assert.equal(r.achievedRps, 400);
    assert.deepEqual([...seen].sort((a, b) => a - b), Array.from({ length: 400 }, (_, i) => i));
    assert.ok(r.latency.p50 > 0 && r.latency.p99 >= r.latency.p50 && r.latency.max >= r.latency.p99);
  } finally {
    await close(server);
  }
});

test('a refused connection is an error, not a hang', async () => {
  const server = await startBareServer();
  const url = urlOf(server);
  await close(server);
  const r = await runOpenLoop({ url, rate: 100, durationMs: 300, request: body, timeoutMs: 2000 });
  assert.equal(r.sent, 30);
  assert.equal(r.failed, 30);
  assert.deepEqual(r.errors, { ECONNREFUSED: 30 });
});

test('an unanswered request fails as a timeout', async () => {
  const silent = http.createServer(() => {});
  await new Promise<void>((r) => silent.listen(0, '127.0.0.1', () => r()));
  try {
    const r = await runOpenLoop({ url: urlOf(silent), rate: 20, durationMs: 200, request: body, timeoutMs: 300 });
    assert.equal(r.sent, 4);
    assert.deepEqual(r.errors, { timeout: 4 });
  } finally {
    silent.closeAllConnections();
    await close(silent);
  }
});

test('chunked responses and non-2xx statuses are read', async () => {
  const server = http.createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      res.writeHead(req.url === '/bad' ? 400 : 202, { 'content-type': 'text/plain' });
      res.write('part one, ');
      res.end('part two');
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  try {
    const bodies: string[] = [];
    const r = await runOpenLoop({
      url: urlOf(server),
      rate: 50,
      durationMs: 200,
      request: (seq) => ({ path: seq % 2 ? '/bad' : '/ok', body: 'x' }),
      onResult: (o) => bodies.push(o.body?.toString() ?? ''),
    });
    assert.equal(r.succeeded, 5);
    assert.equal(r.failed, 5);
    assert.deepEqual(r.statuses, { 202: 5, 400: 5 });
    assert.deepEqual(new Set(bodies), new Set(['part one, part two']));
  } finally {
    await close(server);
  }
});
