/**
 * The CLI as subprocesses: `sluice sync events --once`, `sluice dev provider`, and two
 * `sluice serve` processes on one database whose caches never hide a committed sync.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { repoRoot } from '../../src/config.ts';
import { startProviderSimulator, type ProviderSimulator } from '../../src/dev/provider-simulator.ts';
import { testDb, type TestDb } from '../helpers/db.ts';
import { RESPONSE_1 } from './feeds.ts';

const SLUICE = path.join(repoRoot, 'bin/sluice');
let db: TestDb;
let sim: ProviderSimulator;
const children: ChildProcess[] = [];

before(async () => {
  db = await testDb();
  sim = await startProviderSimulator({ responses: [RESPONSE_1] });
});
after(async () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGTERM');
  await Promise.all(children.map((c) => (c.exitCode === null && c.signalCode === null ? new Promise((r) => c.once('exit', r)) : undefined)));
  await sim.close();
  await db.close();
});

function childEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, DATABASE_URL: db.url };
  delete env.SLUICE_PROVIDER_URL;
  delete env.SLUICE_SEARCH_CACHE;
  return env;
}

function run(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(SLUICE, args, { env: childEnv() });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/** Starts a long-running command and resolves with the first stderr match of `ready`. */
function start(args: string[], ready: RegExp): Promise<{ child: ChildProcess; match: RegExpExecArray }> {
  return new Promise((resolve, reject) => {
    const child = spawn(SLUICE, args, { env: childEnv() });
    children.push(child);
    let stderr = '';
    child.stderr!.on('data', (d) => {
      stderr += d;
      const m = ready.exec(stderr);
      if (m) resolve({ child, match: m });
    });
    child.on('exit', (code) => reject(new Error(`${args.join(' ')} exited ${code}: ${stderr}`)));
  });
}

test('sync events --once: a JSON summary, exit 0; a failed sync exits 1; no URL exits 2', async () => {
  const ok = await run(['sync', 'events', '--once', '--url', sim.url]);
  assert.equal(ok.code, 0, ok.stderr);
  const summary = JSON.parse(ok.stdout);
  assert.equal(summary.status, 'completed');
  assert.deepEqual([summary.events_seen, summary.events_new, summary.events_rejected], [3, 3, 0]);

  sim.setMode('error');
  const failed = await run(['sync', 'events', '--once', '--url', sim.url, '--retries', '0']);
  sim.setMode('ok');
  assert.equal(failed.code, 1);
  assert.equal(JSON.parse(failed.stdout).status, 'failed');
  assert.match(JSON.parse(failed.stdout).error, /HTTP 500/);

  const usage = await run(['sync', 'events', '--once']);
  assert.equal(usage.code, 2);
  assert.match(usage.stderr, /--url|SLUICE_PROVIDER_URL/);
});

test('dev provider: serves the given responses and fails on demand', async () => {
  const fixture = path.join(repoRoot, 'test/fixtures/fever/response_1.xml');
  const { child, match } = await start(['dev', 'provider', '--port', '0', '--responses', fixture], /serving (http:\/\/127\.0\.0\.1:\d+\/feed)/);
  const url = match[1]!;
  const feed = await fetch(url);
  assert.equal(feed.status, 200);
  assert.equal(await feed.text(), RESPONSE_1);
  const control = await fetch(url.replace('/feed', '/_control/mode?mode=error&count=1'), { method: 'POST' });
  assert.equal(control.status, 200);
  assert.equal((await fetch(url)).status, 500);
  assert.equal((await fetch(url)).status, 200);
  child.kill('SIGTERM');
  await new Promise((r) => child.once('exit', r));
});

test('two serve processes: warm caches never hide a sync committed by another process', async () => {
  const servers = await Promise.all([0, 1].map(() => start(['serve', '--port', '0'], /listening on (http:\/\/127\.0\.0\.1:\d+)/)));
  const urls = servers.map((s) => s.match[1]!);
  const prices = async (u: string) => {
    const res = await fetch(`${u}/search?starts_at=2021-06-30T00:00:00Z&ends_at=2021-07-01T00:00:00Z`);
    assert.equal(res.status, 200);
    return ((await res.json()) as { data: { events: Array<{ max_price: number }> } }).data.events.map((e) => e.max_price);
  };
  for (const u of urls) for (let i = 0; i < 3; i++) assert.deepEqual(await prices(u), [30]);

  sim.setResponses([RESPONSE_1.replace('price="30.00"', 'price="31.50"')]);
  const r = await run(['sync', 'events', '--once', '--url', sim.url]);
  assert.equal(JSON.parse(r.stdout).events_changed, 1);
  // Right after the CLI process exits, with no wait, both servers answer the new price.
  assert.deepEqual(await Promise.all(urls.map(prices)), [[31.5], [31.5]]);
});
