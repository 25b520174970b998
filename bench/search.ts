/**
 * Benchmark of the provider feed (`npm run bench:search`), on loopback:
 * 1. a sync of a generated 5,000-event x 200-zone feed (~100 MB) from the simulator (in its
 *    own process): first load, then a re-fetch in which one event in ten changed;
 * 2. GET /search of `sluice serve` processes (their own processes, as in production) on a
 *    store of 10,000 events, with the cache in its default (strict) mode, in notify mode and
 *    off (30 distinct searches, and 600 distinct ones so that few concurrent searches are
 *    identical), and a bare Node HTTP server answering a constant body of the same size (the
 *    baseline), each loaded by the same tool for a fixed duration, in interleaved rounds.
 *    Besides req/s and latency, each case reports CPU time per request of the load tool, the
 *    server process and the Postgres backends: on a shared 2-core machine those are steadier
 *    than req/s, and they show what the load tool itself takes from the server.
 * Ends with one JSON line {"search_rps","search_p99_ms","bare_node_rps","ratio","uncached_rps"}.
 *
 * Load tool (BENCH_TOOL): `wrk` (Debian's wrk, one thread, in its own process; C, so it takes
 * about half of autocannon's CPU per request) when it is on PATH, else `autocannon` (in this
 * process). Both are bounded by duration, and every case of a run uses the same tool.
 *
 * Env: BENCH_TOOL (wrk if installed, else autocannon), BENCH_DURATION_S (5, per case and round),
 * BENCH_ROUNDS (3), BENCH_CONNECTIONS (50), BENCH_EVENTS (10000), BENCH_SYNC_EVENTS (5000),
 * BENCH_SYNC_ZONES (200), BENCH_SKIP_SYNC (unset; 1 skips the sync part). Uses its own databases
 * (sluice_bench_search, sluice_bench_sync) on DATABASE_URL's server or the embedded one.
 */
import { execFile, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import autocannon from 'autocannon';
import pg from 'pg';
import { env, intEnv, repoRoot } from '../src/config.ts';
import { ensureEmbedded } from '../src/db/embedded.ts';
import { openDb, withDatabase } from '../src/db/pool.ts';
import { startProviderSimulator } from '../src/dev/provider-simulator.ts';
import { syncEvents } from '../src/pipelines/events/sync.ts';
import { median, procCpuMs, statFields } from './lib.ts';

const DURATION = intEnv('BENCH_DURATION_S', 5);
const ROUNDS = intEnv('BENCH_ROUNDS', 3);
const WARMUP_S = 2;
const CONNECTIONS = intEnv('BENCH_CONNECTIONS', 50);
const EVENTS = intEnv('BENCH_EVENTS', 10_000);
const SYNC_EVENTS = intEnv('BENCH_SYNC_EVENTS', 5000);
const SYNC_ZONES = intEnv('BENCH_SYNC_ZONES', 200);
const SKIP_SYNC = env('BENCH_SKIP_SYNC') === '1';
const hasWrk = spawnSync('wrk', ['--version']).error === undefined;
const TOOL = env('BENCH_TOOL') ?? (hasWrk ? 'wrk' : 'autocannon');
if (TOOL !== 'wrk' && TOOL !== 'autocannon') throw new Error(`BENCH_TOOL must be wrk or autocannon; got ${TOOL}`);
if (TOOL === 'wrk' && !hasWrk) throw new Error('BENCH_TOOL=wrk but wrk is not installed (apt-get install wrk)');

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

interface Measure {
  rps: number;
  p99: number;
  avgMs: number;
  requests: number;
  /** CPU ms per request of the load tool (its process, or this one for autocannon). */
  toolCpu: number;
}

/** autocannon, in this process: its CPU is this process's CPU during the run. */
async function autocannonLoad(url: string, paths: string[], duration: number): Promise<Measure> {
  const cpu0 = process.cpuUsage();
  const r = await autocannon({
    url,
    connections: CONNECTIONS,
    duration,
    requests: paths.map((p) => ({ method: 'GET' as const, path: p })),
  });
  const cpu = process.cpuUsage(cpu0);
  if (r.non2xx || r.errors) throw new Error(`load against ${url}: ${r.non2xx} non-2xx, ${r.errors} errors`);
  return { rps: r.requests.average, p99: r.latency.p99, avgMs: r.latency.average, requests: r.requests.total, toolCpu: (cpu.user + cpu.system) / 1000 / Math.max(r.requests.total, 1) };
}

const ms = (v: string, unit: string) => Number(v) * (unit === 'us' ? 0.001 : unit === 's' ? 1000 : unit === 'm' ? 60_000 : 1);

/**
 * wrk, one thread, cycling through `paths` (a Lua script with the requests formatted once).
 * It runs under `sh`, which prints its own /proc stat after wrk exits: the children's CPU
 * (cutime, cstime) is wrk's.
 */
async function wrkLoad(url: string, paths: string[], duration: number): Promise<Measure> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-bench-search-'));
  const script = path.join(dir, 'paths.lua');
  fs.writeFileSync(
    script,
    `local paths = {${paths.map((p) => JSON.stringify(p)).join(',')}}
local reqs, i = {}, 0
init = function() for k, p in ipairs(paths) do reqs[k] = wrk.format("GET", p) end end
request = function() i = i % #reqs + 1 return reqs[i] end
`,
  );
  try {
    const out = await new Promise<string>((resolve, reject) =>
      execFile(
        'sh',
        ['-c', 'wrk -t1 -c"$1" -d"$2"s --timeout 10s --latency -s "$3" "$4"; s=$?; read -r stat < /proc/$$/stat; echo "STAT $stat"; exit $s', 'sh', String(CONNECTIONS), String(duration), script, url],
        (err, stdout, stderr) => (err ? reject(new Error(`wrk: ${err.message} ${stderr}`)) : resolve(stdout)),
      ),
    );
    const m = /(\d+) requests in ([\d.]+)(\w+)/.exec(out);
    const p99 = /^\s+99%\s+([\d.]+)(us|ms|s|m)/m.exec(out);
    const avg = /^\s+Latency\s+([\d.]+)(us|ms|s|m)/m.exec(out);
    const stat = /^STAT (.*)$/m.exec(out)?.[1];
    if (!m || !p99 || !avg || !stat) throw new Error(`unexpected wrk output: ${out}`);
    const total = Number(m[1]);
    const errors = /Socket errors: (.*)/.exec(out)?.[1];
    const non2xx = Number(/Non-2xx or 3xx responses: (\d+)/.exec(out)?.[1] ?? 0);
    if (errors || non2xx) throw new Error(`load against ${url}: ${non2xx} non-2xx, socket errors: ${errors ?? 'none'}`);
    // The shell's reaped child (wrk): cutime + cstime, in clock ticks (USER_HZ = 100 on Linux).
    const f = statFields(stat);
    const cpuMs = (Number(f[13]) + Number(f[14])) * 10;
    return { rps: (total / ms(m[2]!, m[3]!)) * 1000, p99: ms(p99[1]!, p99[2]!), avgMs: ms(avg[1]!, avg[2]!), requests: total, toolCpu: cpuMs / Math.max(total, 1) };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** CPU ms of a process (bench/lib.ts), checking its name first; undefined where /proc does not show it. */
function cpuMsOf(pid: number, comm?: string): number | undefined {
  try {
    // A remote (or containerised) Postgres's pids mean nothing here: check the name.
    if (comm && !fs.readFileSync(`/proc/${pid}/comm`, 'utf8').startsWith(comm)) return undefined;
    return procCpuMs(pid);
  } catch {
    return undefined;
  }
}

/** Loads one case and measures its CPU: the tool's, the server process's and the database's backends'. */
async function load(target: { child: ChildProcess; url: string }, paths: string[], duration: number, admin?: pg.Client) {
  const backends = async () => (admin ? (await admin.query<{ pid: number }>('SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()')).rows.map((r) => r.pid) : []);
  const pgCpu = async () => {
    const per = new Map<number, number>();
    for (const pid of await backends()) {
      const c = cpuMsOf(pid, 'postgres');
      if (c === undefined) return undefined;
      per.set(pid, c);
    }
    return per;
  };
  const server0 = cpuMsOf(target.child.pid!);
  const pg0 = await pgCpu();
  const m = TOOL === 'wrk' ? await wrkLoad(target.url, paths, duration) : await autocannonLoad(target.url, paths, duration);
  const requests = Math.max(m.requests, 1);
  const server1 = cpuMsOf(target.child.pid!);
  const pg1 = await pgCpu();
  // Backends that ended during the run are missed, new ones counted from zero: the pool keeps its connections, so this is rare.
  const pgMs = pg0 && pg1 ? [...pg1].reduce((s, [pid, c]) => s + c - (pg0.get(pid) ?? 0), 0) : undefined;
  return {
    ...m,
    /** CPU ms per request of the server process and of the database's backends. */
    serverCpu: server0 !== undefined && server1 !== undefined ? (server1 - server0) / requests : undefined,
    pgCpu: pgMs === undefined ? undefined : pgMs / requests,
  };
}

const server = env('DATABASE_URL') ?? (await ensureEmbedded());
const sync = SKIP_SYNC ? undefined : await benchSync(server);

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
const dayWindow = (startMs: number) => {
  const from = new Date(startMs).toISOString().slice(0, 19);
  const to = new Date(startMs + 86_400_000).toISOString().slice(0, 19);
  return `/search?starts_at=${from}Z&ends_at=${to}Z`;
};
const paths = Array.from({ length: 30 }, (_, i) => dayWindow(Date.UTC(2021, 0, 1) + i * 24 * 86_400_000));
// 600 distinct one-day windows (starting 29 h apart): concurrent searches are rarely identical,
// so the uncached path cannot lean on reading one range for several requests.
const distinctPaths = Array.from({ length: 600 }, (_, i) => dayWindow(Date.UTC(2021, 0, 1) + i * 29 * 3_600_000));

const sluice = path.join(repoRoot, 'bin/sluice');
type Case = 'strict' | 'notify' | 'off' | 'off-distinct' | 'bare';
const servers = new Map<'strict' | 'notify' | 'off' | 'bare', { child: ChildProcess; url: string }>();
const cases = new Map<Case, { server: 'strict' | 'notify' | 'off' | 'bare'; paths: string[] }>([
  ['strict', { server: 'strict', paths }],
  ['notify', { server: 'notify', paths }],
  ['off', { server: 'off', paths }],
  ['off-distinct', { server: 'off', paths: distinctPaths }],
  ['bare', { server: 'bare', paths }],
]);
const runs = new Map<Case, Array<Awaited<ReturnType<typeof load>>>>();
const admin = new pg.Client({ connectionString: searchUrl });
await admin.connect();
let bodyBytes = 0;
try {
  for (const mode of ['strict', 'notify', 'off'] as const) {
    servers.set(mode, await startServer(sluice, ['serve', '--port', '0'], { DATABASE_URL: searchUrl, SLUICE_SEARCH_CACHE: mode }));
  }
  const sampleBody = await (await fetch(`${servers.get('strict')!.url}${paths[0]}`)).text();
  bodyBytes = sampleBody.length;
  // The baseline: bare node:http answering a constant body the size of a search response.
  const bareCode = `import http from 'node:http';
const body = Buffer.from(process.env.BENCH_BODY);
const srv = http.createServer((req, res) => { res.writeHead(200, { 'content-type': 'application/json; charset=utf-8', 'content-length': body.length }); res.end(body); });
srv.listen(0, '127.0.0.1', () => process.stderr.write('listening on http://127.0.0.1:' + srv.address().port + '\\n'));
process.on('SIGTERM', () => process.exit(0));`;
  servers.set('bare', await startServer(process.execPath, ['--input-type=module', '-e', bareCode], { BENCH_BODY: sampleBody }));
  for (const [name, c] of cases) await load(servers.get(c.server)!, c.paths, WARMUP_S).catch((err) => Promise.reject(new Error(`warm-up ${name}: ${err.message}`)));
  // Rounds of every case back to back: on a shared machine the noise hits all cases of a
  // round alike, so each round's ratio compares like with like; medians are reported.
  for (let r = 1; r <= ROUNDS; r++) {
    for (const [name, c] of cases) {
      const m = await load(servers.get(c.server)!, c.paths, DURATION, c.server === 'bare' ? undefined : admin);
      runs.set(name, [...(runs.get(name) ?? []), m]);
      log(`round ${r} ${name}: ${Math.round(m.rps)} req/s, p99 ${m.p99} ms (load average ${os.loadavg()[0]!.toFixed(1)})`);
    }
  }
  log(`(${TOOL}: ${ROUNDS} rounds of ${DURATION} s per case after a ${WARMUP_S} s warm-up, ${CONNECTIONS} connections, ${paths.length} distinct one-day searches (${distinctPaths.length} for off-distinct), ${bodyBytes}-byte bodies)`);
} finally {
  for (const s of servers.values()) await stop(s.child);
  await admin.end();
}

const round = (n: number, d = 0) => Math.round(n * 10 ** d) / 10 ** d;
const med = (c: Case, f: (r: Awaited<ReturnType<typeof load>>) => number) => median(runs.get(c)!.map(f));
const medOpt = (c: Case, f: (r: Awaited<ReturnType<typeof load>>) => number | undefined) => {
  const xs = runs.get(c)!.map(f);
  return xs.every((x) => x !== undefined) ? median(xs as number[]) : undefined;
};
const us = (msPerReq: number | undefined) => (msPerReq === undefined ? 'n/a' : String(Math.round(msPerReq * 1000)));
const ratios = runs.get('strict')!.map((r, i) => r.rps / runs.get('bare')![i]!.rps);
log('');
log(`| case | req/s (median) | p99 ms (median) | mean ms (median) | CPU µs/req: ${TOOL} | server | Postgres |`);
log('| --- | ---: | ---: | ---: | ---: | ---: | ---: |');
for (const c of runs.keys()) {
  log(`| ${c} | ${round(med(c, (r) => r.rps))} | ${med(c, (r) => r.p99)} | ${round(med(c, (r) => r.avgMs), 2)} | ${us(med(c, (r) => r.toolCpu))} | ${us(medOpt(c, (r) => r.serverCpu))} | ${c === 'bare' ? '-' : us(medOpt(c, (r) => r.pgCpu))} |`);
}
log(`strict/bare ratio per round: ${ratios.map((x) => x.toFixed(2)).join(', ')}`);
process.stdout.write(
  `${JSON.stringify({
    load_tool: TOOL,
    ...(sync && { sync_events: SYNC_EVENTS, sync_zones: SYNC_ZONES, sync_mb: round(sync.bytes / 1e6, 1), sync_first_s: round(sync.firstMs / 1000, 2), sync_refetch_s: round(sync.refetchMs / 1000, 2), sync_peak_heap_mb: round(sync.heapPeak / 1e6) }),
    notify_rps: round(med('notify', (r) => r.rps)),
    notify_p99_ms: med('notify', (r) => r.p99),
    uncached_p99_ms: med('off', (r) => r.p99),
    uncached_distinct_rps: round(med('off-distinct', (r) => r.rps)),
    uncached_distinct_p99_ms: med('off-distinct', (r) => r.p99),
  })}\n`,
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
