/**
 * `sluice loadtest visits` as a subprocess: it loads its own `sluice serve` (or --url),
 * stops by itself, and ends with the JSON summary whose `stored` equals `acknowledged`.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { repoRoot } from '../../src/config.ts';
import { startServe } from '../../src/loadgen/serve-process.ts';
import { testDb, type TestDb } from '../helpers/db.ts';

let db: TestDb;
before(async () => {
  db = await testDb();
});
after(async () => {
  await db.close();
});

function sluice(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(path.join(repoRoot, 'bin', 'sluice'), args, { env: { ...process.env, DATABASE_URL: db.url } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

const KEYS = ['rate_target', 'sent', 'acknowledged', 'errors', 'p50_ms', 'p99_ms', 'stored'];

test('loads its own server, stops by itself, stored = acknowledged', async () => {
  const r = await sluice(['loadtest', 'visits', '--rate', '300', '--duration', '2', '--warmup', '0']);
  assert.equal(r.code, 0, r.stdout + r.stderr);
  const lines = r.stdout.trim().split('\n');
  const summary = JSON.parse(lines.at(-1)!) as Record<string, number>;
  assert.deepEqual(Object.keys(summary), KEYS);
  assert.equal(summary.rate_target, 300);
  assert.equal(summary.sent, 600);
  assert.equal(summary.acknowledged, 600);
  assert.equal(summary.errors, 0);
  assert.equal(summary.stored, 600);
  assert.ok(summary.p50_ms! > 0 && summary.p99_ms! >= summary.p50_ms!);
  assert.match(r.stdout, /achieved \d+ visits\/s/);
  assert.match(r.stdout, /verify: stored = acknowledged/);
});

test('--url and --batch: NDJSON batches against a running server', async () => {
  const server = await startServe({ env: { DATABASE_URL: db.url } });
  try {
    const r = await sluice(['loadtest', 'visits', '--rate', '2000', '--duration', '2', '--batch', '100', '--url', server.url]);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    const summary = JSON.parse(r.stdout.trim().split('\n').at(-1)!) as Record<string, number>;
    assert.equal(summary.sent, 4000);
    assert.equal(summary.acknowledged, 4000);
    assert.equal(summary.stored, 4000);
  } finally {
    await server.stop();
  }
});

test('bad usage exits 2 with a reason', async () => {
  const cases: Array<[string[], RegExp]> = [
    [['--rate', '0', '--duration', '1'], /--rate must be a positive number/],
    [['--rate', '10', '--duration', 'soon'], /--duration must be a positive number/],
    [['--rate', '10', '--duration', '1', '--url', 'http://203.0.113.9:8080'], /not loopback; pass --allow-remote/],
    [['--duration', '1'], /required option '--rate/],
    // A target no generator reaches only queued requests in memory (it grew 200 MB/s).
    [['--rate', '1e9', '--duration', '1'], /above 50000 requests\/s/],
    [['--rate', '10', '--duration', '1', '--url', 'notaurl'], /--url must be a URL/],
    [['--rate', '10', '--duration', '1', '--url', 'https://127.0.0.1:8080'], /--url must be http:\/\//],
  ];
  for (const [args, reason] of cases) {
    const r = await sluice(['loadtest', 'visits', ...args]);
    assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, reason);
  }
});
