/**
 * Benchmark of the provider feed (`npm run bench:search`), on loopback:
 * 1. a sync of a generated 5,000-event x 200-zone feed (~100 MB) from the simulator (in its
 *    own process): first load, then a re-fetch in which one event in ten changed;
 * 2. GET /search of `sluice serve` processes (their own processes, as in production) on a
 *    store of 10,000 events, with the cache in its default (strict) mode, in notify mode and
 *    off, and a bare Node HTTP server answering a constant body of the same size (the
 *    baseline), each loaded by autocannon for a fixed duration, in interleaved rounds.
 * Ends with one JSON line {"search_rps","search_p99_ms","bare_node_rps","ratio","uncached_rps"}.
 *
 * Env: BENCH_DURATION_S (5, per case and round), BENCH_ROUNDS (3), BENCH_CONNECTIONS (50), BENCH_EVENTS (10000),
 * BENCH_SYNC_EVENTS (5000), BENCH_SYNC_ZONES (200). Uses its own databases
 * (sluice_bench_search, sluice_bench_sync) on DATABASE_URL's server or the embedded one.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import autocannon from 'autocannon';
import pg from 'pg';
import { env, intEnv, repoRoot } from '../src/config.ts';
import { ensureEmbedded } from '../src/db/embedded.ts';
import { openDb, withDatabase } from '../src/db/pool.ts';
import { startProviderSimulator } from '../src/dev/provider-simulator.ts';
import { syncEvents } from '../src/pipelines/events/sync.ts';

const DURATION = intEnv('BENCH_DURATION_S', 5);
const ROUNDS = intEnv('BENCH_ROUNDS', 3);
const WARMUP_S = 2;
const CONNECTIONS = intEnv('BENCH_CONNECTIONS', 50);
const EVENTS = intEnv('BENCH_EVENTS', 10_000);
const SYNC_EVENTS = intEnv('BENCH_SYNC_EVENTS', 5000);
const SYNC_ZONES = intEnv('BENCH_SYNC_ZONES', 200);

const log = (s: string) => process.stderr.write(`${s}\n`);

async function freshDatabase(server: string, name: string): Promise<string> {
  const admin = new pg.Client({ connectionString: withDatabase(server, 'postgres') });
  await admin.connect();
  try {
    await admin.query(`DROP DATABASE IF EXISTS ${admin.escapeIdentifier(name)} WITH (FORCE)`);
    await admin.query(`CREATE DATABASE ${admin.escapeIdentifier(name)}`);
  } finally {
    await admin.end();
  }
  return withDatabase(server, name);
}

/** The simulator in its own process, as the real provider is (its generation costs CPU). */
function startSimulatorProcess(generate: { events: number; zones: number; offlinePercent?: number }) {
  const module = path.join(repoRoot, 'src/dev/provider-simulator.ts');
  const code = `import { startProviderSimulator } from ${JSON.stringify(module)};
const s = await startProviderSimulator({ generate: ${JSON.stringify(generate)} });
process.stderr.write('listening on ' + s.url.replace(/\\/feed$/, '') + '\\n');
process.on('SIGTERM', () => process.exit(0));`;
  return startServer(process.execPath, ['--input-type=module', '-e', code], {});
}

async function benchSync(server: string) {
  const url = await freshDatabase(server, 'sluice_bench_sync');
  const pool = await openDb({ url, max: 2 });
  const sim = await startSimulatorProcess({ events: SYNC_EVENTS, zones: SYNC_ZONES });
  const feed = `${sim.url}/feed`;
  // Peak heap of this process while syncing: bounded by two batches and a chunk, not by
  // the feed's size (includes garbage not yet collected).
  const heapBefore = process.memoryUsage().heapUsed;
  let heapPeak = 0;
  const sampler = setInterval(() => (heapPeak = Math.max(heapPeak, process.memoryUsage().heapUsed - heapBefore)), 20);
  try {
    const first = await syncEvents(pool, { url: feed, trigger: 'test' });
    const second = await syncEvents(pool, { url: feed, trigger: 'test' });
    for (const r of [first, second]) if (r.status !== 'completed') throw new Error(`sync failed: ${r.error}`);
    log(`sync ${SYNC_EVENTS}x${SYNC_ZONES} (${(first.bytes / 1e6).toFixed(1)} MB): first ${(first.durationMs / 1000).toFixed(2)} s (${first.eventsNew} new), re-fetch ${(second.durationMs / 1000).toFixed(2)} s (${second.eventsChanged} changed), peak heap growth ${(heapPeak / 1e6).toFixed(0)} MB`);
    return { bytes: first.bytes, firstMs: first.durationMs, refetchMs: second.durationMs, refetchChanged: second.eventsChanged, heapPeak };
  } finally {
    clearInterval(sampler);
    await stop(sim.child);
    await pool.end();
  }
}

/** Starts a server process and resolves with its base URL (from "listening on <url>"). */
function startServer(cmd: string, args: string[], extraEnv: NodeJS.ProcessEnv): Promise<{ child: ChildProcess; url: string }> {
  const childEnv: NodeJS.ProcessEnv = { ...process.env, ...extraEnv };
  delete childEnv.SLUICE_PROVIDER_URL;
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env: childEnv, stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr!.on('data', (d) => {
      err += d;
      const m = /listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(err);
      if (m) resolve({ child, url: m[1]! });
    });
    child.once('exit', (code) => reject(new Error(`${cmd} exited ${code}: ${err}`)));
  });
}

async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  await exited;
}

async function load(url: string, paths: string[], duration: number) {
  const r = await autocannon({
    url,
    connections: CONNECTIONS,
    duration,
    requests: paths.map((p) => ({ method: 'GET' as const, path: p })),
  });
  if (r.non2xx || r.errors) throw new Error(`load against ${url}: ${r.non2xx} non-2xx, ${r.errors} errors`);
  return { rps: r.requests.average, p99: r.latency.p99, avgMs: r.latency.average, bytesPerReq: r.throughput.average / Math.max(r.requests.average, 1) };
}

const server = env('DATABASE_URL') ?? (await ensureEmbedded());
const sync = await benchSync(server);

// The search store: EVENTS events (10 zones each) over two years, ~14 a day.
const searchUrl = await freshDatabase(server, 'sluice_bench_search');
{
  const pool = await openDb({ url: searchUrl, max: 2 });
  const sim = await startProviderSimulator({ generate: { events: EVENTS, zones: 10, offlinePercent: 0 } });
  const r = await syncEvents(pool, { url: sim.url, trigger: 'test' });
  await sim.close();
  await pool.end();
  if (r.status !== 'completed') throw new Error(`loading the store failed: ${r.error}`);
  log(`store: ${r.eventsNew} events`);
}

// 30 one-day windows spread over the two years: a typical "what is on that day" search.
const paths = Array.from({ length: 30 }, (_, i) => {
  const d = new Date(Date.UTC(2021, 0, 1) + i * 24 * 86_400_000);
  const day = d.toISOString().slice(0, 10);
  const next = new Date(d.getTime() + 86_400_000).toISOString().slice(0, 10);
  return `/search?starts_at=${day}T00:00:00Z&ends_at=${next}T00:00:00Z`;
});

const sluice = path.join(repoRoot, 'bin/sluice');
type Case = 'strict' | 'notify' | 'off' | 'bare';
const servers = new Map<Case, { child: ChildProcess; url: string }>();
const runs = new Map<Case, Array<Awaited<ReturnType<typeof load>>>>();
try {
  for (const mode of ['strict', 'notify', 'off'] as const) {
    servers.set(mode, await startServer(sluice, ['serve', '--port', '0'], { DATABASE_URL: searchUrl, SLUICE_SEARCH_CACHE: mode }));
  }
  const sampleBody = await (await fetch(`${servers.get('strict')!.url}${paths[0]}`)).text();
  // The baseline: bare node:http answering a constant body the size of a search response.
  const bareCode = `import http from 'node:http';
const body = Buffer.from(process.env.BENCH_BODY);
const srv = http.createServer((req, res) => { res.writeHead(200, { 'content-type': 'application/json; charset=utf-8', 'content-length': body.length }); res.end(body); });
srv.listen(0, '127.0.0.1', () => process.stderr.write('listening on http://127.0.0.1:' + srv.address().port + '\\n'));
process.on('SIGTERM', () => process.exit(0));`;
  servers.set('bare', await startServer(process.execPath, ['--input-type=module', '-e', bareCode], { BENCH_BODY: sampleBody }));
  for (const [name, s] of servers) await load(s.url, paths, WARMUP_S).catch((err) => Promise.reject(new Error(`warm-up ${name}: ${err.message}`)));
  // Rounds of every case back to back: on a shared machine the noise hits all cases of a
  // round alike, so each round's ratio compares like with like; medians are reported.
  for (let r = 1; r <= ROUNDS; r++) {
    for (const [name, s] of servers) {
      const m = await load(s.url, paths, DURATION);
      runs.set(name, [...(runs.get(name) ?? []), m]);
      log(`round ${r} ${name}: ${Math.round(m.rps)} req/s, p99 ${m.p99} ms`);
    }
  }
  log(`(${ROUNDS} rounds of ${DURATION} s per case after a ${WARMUP_S} s warm-up, ${CONNECTIONS} connections, ${paths.length} distinct one-day searches, ${sampleBody.length}-byte bodies)`);
} finally {
  for (const s of servers.values()) await stop(s.child);
}

const round = (n: number, d = 0) => Math.round(n * 10 ** d) / 10 ** d;
const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};
const med = (c: Case, f: (r: Awaited<ReturnType<typeof load>>) => number) => median(runs.get(c)!.map(f));
const ratios = runs.get('strict')!.map((r, i) => r.rps / runs.get('bare')![i]!.rps);
log('');
log('| case | req/s (median) | p99 ms (median) | mean ms (median) |');
log('| --- | ---: | ---: | ---: |');
for (const c of runs.keys()) log(`| ${c} | ${round(med(c, (r) => r.rps))} | ${med(c, (r) => r.p99)} | ${round(med(c, (r) => r.avgMs), 2)} |`);
log(`strict/bare ratio per round: ${ratios.map((x) => x.toFixed(2)).join(', ')}`);
process.stdout.write(
  `${JSON.stringify({ sync_events: SYNC_EVENTS, sync_zones: SYNC_ZONES, sync_mb: round(sync.bytes / 1e6, 1), sync_first_s: round(sync.firstMs / 1000, 2), sync_refetch_s: round(sync.refetchMs / 1000, 2), sync_peak_heap_mb: round(sync.heapPeak / 1e6), notify_rps: round(med('notify', (r) => r.rps)), notify_p99_ms: med('notify', (r) => r.p99) })}\n`,
);
process.stdout.write(
  `${JSON.stringify({
    search_rps: round(med('strict', (r) => r.rps)),
    search_p99_ms: med('strict', (r) => r.p99),
    bare_node_rps: round(med('bare', (r) => r.rps)),
    ratio: round(median(ratios), 2),
    uncached_rps: round(med('off', (r) => r.rps)),
  })}\n`,
);
