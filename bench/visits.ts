/**
 * `npm run bench:visits`: how many visits per second Sluice takes with durable
 * acknowledgements, against a bare Node server that stores nothing, with the same
 * open-loop generator (src/loadgen/) on loopback, in the same run:
 *
 * 1. bare node:http, POST /visits: highest sustained rate (p99 < 300 ms, no errors)
 * 2. Sluice, POST /visits (one visit per request, 202 after commit): same criterion
 * 3. Sluice, POST /visits/batch (NDJSON, 1,000 visits per request): visits per second
 * 4. live lag at 1,000 visits/s: from a visit's send time until a /live/stream subscriber
 *    receives a snapshot that counts it
 *
 * Each search climbs by x1.25 from 3,000/s (20,000/s for batches) until a step fails twice
 * in a row (one retry absorbs a stall of the shared machine), then bisects twice.
 * Every Sluice step counts its visits in the database afterwards: `lost` is the number of
 * acknowledged visits not stored (must be 0). Options: --quick (short steps, for
 * development), --step <s> (seconds per step, default 10), --only bare,sluice,batch,lag
 * (a subset, for development). Ends with one JSON line.
 */
import { spawn } from 'node:child_process';
import path from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import pg from 'pg';
import { env, repoRoot } from '../src/config.ts';
import { ensureEmbedded } from '../src/db/embedded.ts';
import { openDb, withDatabase, type Pool } from '../src/db/pool.ts';
import { countVisitsByVisitorPrefix } from '../src/db/sql/visits.ts';
import { runOpenLoop, type OpenLoopResult } from '../src/loadgen/open-loop.ts';
import { startServe } from '../src/loadgen/serve-process.ts';
import { subscribeSse } from '../src/loadgen/sse-client.ts';
import { visitsWorkload } from '../src/loadgen/visits-workload.ts';
import type { LiveSnapshot } from '../src/pipelines/visits/live-view.ts';

const quick = process.argv.includes('--quick');
const stepArg = process.argv.indexOf('--step');
const STEP_MS = (stepArg > 0 ? Number(process.argv[stepArg + 1]) : quick ? 3 : 10) * 1000;
const LAG_MS = quick ? 10_000 : 30_000;
const onlyArg = process.argv.indexOf('--only');
const ONLY = new Set(onlyArg > 0 ? process.argv[onlyArg + 1]!.split(',') : ['bare', 'sluice', 'batch', 'lag']);
const P99_LIMIT_MS = 300;
const DB_NAME = 'sluice_bench_visits';

const log = (line: string) => process.stderr.write(`${line}\n`);

interface Step {
  target: string;
  batch: number;
  rate: number;
  result: OpenLoopResult;
  pass: boolean;
  lost: number;
}

const steps: Step[] = [];
let lost = 0;

async function benchDatabase(): Promise<{ url: string; pool: Pool }> {
  const admin = env('DATABASE_URL') ?? (await ensureEmbedded());
  const c = new pg.Client({ connectionString: admin });
  await c.connect();
  try {
    await c.query(`DROP DATABASE IF EXISTS ${DB_NAME} WITH (FORCE)`);
    await c.query(`CREATE DATABASE ${DB_NAME}`);
  } finally {
    await c.end();
  }
  const url = withDatabase(admin, DB_NAME);
  return { url, pool: await openDb({ url, max: 2 }) };
}

async function startBare(): Promise<{ url: string; stop: () => void }> {
  const child = spawn(process.execPath, [path.join(repoRoot, 'src', 'loadgen', 'bare-server.ts'), '--port', '0'], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const port = await new Promise<string>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (c: Buffer) => {
      out += c.toString();
      const m = /listening (\d+)/.exec(out);
      if (m) resolve(m[1]!);
    });
    child.once('exit', (code) => reject(new Error(`bare server exited (${code})`)));
  });
  return { url: `http://127.0.0.1:${port}`, stop: () => child.kill('SIGTERM') };
}

/** One step at `rate` visits/s; Sluice steps are verified against the database. */
async function step(target: string, url: string, rate: number, batch: number, pool?: Pool): Promise<Step> {
  const workload = visitsWorkload({ batch });
  const since = new Date(Date.now() - 60_000);
  const result = await runOpenLoop({
    url,
    rate: rate / batch,
    durationMs: STEP_MS,
    timeoutMs: 10_000,
    request: workload.request,
    isSuccess: (s) => s === 202,
  });
  let stepLost = 0;
  if (pool) {
    const stored = await countVisitsByVisitorPrefix(pool, workload.visitorPrefix, since);
    stepLost = Math.max(0, result.succeeded * batch - stored);
    lost += stepLost;
  }
  const pass = result.failed === 0 && result.latency.p99 < P99_LIMIT_MS && result.achievedRps >= 0.97 * (rate / batch) && stepLost === 0;
  const s: Step = { target, batch, rate, result, pass, lost: stepLost };
  steps.push(s);
  log(
    `  ${target.padEnd(14)} ${String(rate).padStart(7)}/s  achieved ${String(result.achievedRps * batch).padStart(7)}/s  ` +
      `p50 ${result.latency.p50} p99 ${result.latency.p99} ms  errors ${result.failed}  conns ${result.maxConnections}  ` +
      `generator busy ${Math.round(result.generatorBusy * 100)}%  ${pass ? 'ok' : 'FAIL'}`,
  );
  // Let the server settle before the next step: the visitor queue of this step applied
  // (a failed step leaves a backlog that would slow the next one), GC, connection teardown.
  if (pool) {
    const deadline = Date.now() + 120_000;
    while (Date.now() < deadline && (await pool.query<{ n: number }>('SELECT count(*)::int AS n FROM visitor_batches')).rows[0]!.n > 0) {
      await delay(250);
    }
  }
  await delay(1500);
  return s;
}

/**
 * A step at `rate`, run a second time when the first fails: on a machine shared with other
 * work, one stall (another process's burst, a GC) can sink a 10 s step. Both targets get
 * the same second chance, and the table lists every attempt.
 */
async function attempt(target: string, url: string, rate: number, batch: number, pool?: Pool): Promise<Step> {
  const first = await step(target, url, rate, batch, pool);
  return first.pass ? first : step(target, url, rate, batch, pool);
}

/** Highest passing rate: climb by x1.25 until a step fails (twice), then bisect twice. */
async function highestRate(target: string, url: string, start: number, batch: number, pool?: Pool): Promise<Step | undefined> {
  log(`${target}: searching the highest rate with p99 < ${P99_LIMIT_MS} ms and no errors (${STEP_MS / 1000} s steps)`);
  let best: Step | undefined;
  let rate = start;
  let failed: number | undefined;
  for (let i = 0; i < 14; i++) {
    const s = await attempt(target, url, rate, batch, pool);
    if (!s.pass) {
      failed = rate;
      break;
    }
    best = s;
    rate = Math.round((rate * 1.25) / batch) * batch;
  }
  if (failed === undefined) return best;
  let low = best?.rate ?? 0;
  let high = failed;
  for (let i = 0; i < 2 && high - low > batch; i++) {
    const mid = Math.round((low + high) / 2 / batch) * batch;
    const s = await attempt(target, url, mid, batch, pool);
    if (s.pass) {
      best = s;
      low = mid;
    } else {
      high = mid;
    }
  }
  return best;
}

/** Send-to-shown lag at `rate` visits/s, measured by a live page subscriber. */
interface LagResult {
  p50: number;
  p99: number;
  max: number;
  /** Receipt to commit during the run, from visit_lag_seconds: mean and maximum. */
  commitAvgMs: number | null;
  commitMaxMs: number | null;
}

async function liveLag(url: string, pool: Pool, rate: number): Promise<LagResult> {
  log(`live lag: ${rate} visits/s for ${LAG_MS / 1000} s, watched over /live/stream`);
  const snapshots: Array<{ at: number; today: number }> = [];
  const sub = subscribeSse(`${url}/live/stream`, (data, at) => {
    const s = JSON.parse(data) as LiveSnapshot;
    if (typeof s.visits_today === 'number') snapshots.push({ at, today: s.visits_today });
  });
  while (snapshots.length < 2) await delay(50);
  const base = snapshots[snapshots.length - 1]!.today;
  const workload = visitsWorkload();
  const since = new Date(Date.now() - 60_000);
  const start = Date.now();
  const result = await runOpenLoop({ url, rate, durationMs: LAG_MS, request: workload.request, isSuccess: (s) => s === 202 });
  // Wait until the page has shown every visit (or 10 s).
  const deadline = Date.now() + 10_000;
  while (snapshots[snapshots.length - 1]!.today - base < result.succeeded && Date.now() < deadline) await delay(100);
  sub.close();
  const stored = await countVisitsByVisitorPrefix(pool, workload.visitorPrefix, since);
  lost += Math.max(0, result.succeeded - stored);
  // Visit i was scheduled at start + i/rate; it is on screen from the first snapshot that
  // counts more than i of the run's visits (visits become visible in arrival order, one
  // flush at a time).
  const lags: number[] = [];
  let k = 0;
  for (let i = 0; i < result.succeeded; i++) {
    while (k < snapshots.length && snapshots[k]!.today - base <= i) k++;
    if (k === snapshots.length) break;
    lags.push(snapshots[k]!.at - (start + (i * 1000) / rate));
  }
  lags.sort((a, b) => a - b);
  const q = (p: number) => Math.round(lags[Math.min(lags.length - 1, Math.ceil(p * lags.length) - 1)] ?? NaN);
  // Receipt to commit over exactly this run's commit-seconds (the page's own figure covers
  // the last 60 s, which would reach back into the previous steps).
  const { rows } = await pool.query<{ avg: number | null; max: number | null }>(
    `SELECT round(sum(lag_ms_sum)::numeric / nullif(sum(visits), 0))::int AS avg, max(lag_ms_max) AS max
       FROM visit_lag_seconds WHERE second >= $1 AND second <= $2`,
    [new Date(start).toISOString(), new Date(start + LAG_MS + 2000).toISOString()],
  );
  const out = { p50: q(0.5), p99: q(0.99), max: q(1), commitAvgMs: rows[0]!.avg, commitMaxMs: rows[0]!.max };
  log(
    `  shown ${lags.length} of ${result.succeeded} acknowledged; lag p50 ${out.p50} p99 ${out.p99} max ${out.max} ms ` +
      `(receipt to commit: mean ${out.commitAvgMs} ms, max ${out.commitMaxMs} ms)`,
  );
  return out;
}

function table(): string {
  const rows = steps.map((s) => {
    const r = s.result;
    return `| ${s.target} | ${s.batch} | ${s.rate} | ${r.achievedRps * s.batch} | ${r.latency.p50} | ${r.latency.p99} | ${r.failed} | ${s.target === 'bare node' ? '-' : s.lost} | ${s.pass ? 'yes' : 'no'} |`;
  });
  return ['| target | visits/request | target visits/s | achieved visits/s | p50 ms | p99 ms | errors | lost | pass |', '|---|---|---|---|---|---|---|---|---|', ...rows].join('\n');
}

const { url: dbUrl, pool } = await benchDatabase();
const bare = await startBare();
const sluice = await startServe({ env: { DATABASE_URL: dbUrl } });
try {
  log(`bare node at ${bare.url}, sluice at ${sluice.url} (database ${DB_NAME}); warming up`);
  await runOpenLoop({ url: bare.url, rate: 2000, durationMs: 2000, request: visitsWorkload().request });
  await runOpenLoop({ url: sluice.url, rate: 2000, durationMs: 2000, request: visitsWorkload().request });
  await runOpenLoop({ url: sluice.url, rate: 20, durationMs: 2000, request: visitsWorkload({ batch: 1000 }).request });

  const bareBest = ONLY.has('bare') ? await highestRate('bare node', bare.url, 3000, 1) : undefined;
  bare.stop();
  const sluiceBest = ONLY.has('sluice') ? await highestRate('sluice', sluice.url, 3000, 1, pool) : undefined;
  const batchBest = ONLY.has('batch') ? await highestRate('sluice batch', sluice.url, 20_000, 1000, pool) : undefined;
  const lag: LagResult = ONLY.has('lag')
    ? await liveLag(sluice.url, pool, 1000)
    : { p50: Number.NaN, p99: Number.NaN, max: Number.NaN, commitAvgMs: null, commitMaxMs: null };

  const visitsRps = sluiceBest ? sluiceBest.result.achievedRps : 0;
  const bareRps = bareBest ? bareBest.result.achievedRps : 0;
  process.stdout.write(`\n${table()}\n\n`);
  process.stdout.write(
    `live lag at 1,000 visits/s (send to shown on /live/stream): p50 ${lag.p50} ms, p99 ${lag.p99} ms, max ${lag.max} ms; ` +
      `receipt to commit mean ${lag.commitAvgMs} ms, max ${lag.commitMaxMs} ms\n`,
  );
  process.stdout.write(
    `${JSON.stringify({
      visits_rps: visitsRps,
      bare_node_rps: bareRps,
      ratio: bareRps ? Math.round((visitsRps / bareRps) * 100) / 100 : null,
      p99_ms: sluiceBest?.result.latency.p99 ?? null,
      batch_visits_per_s: batchBest ? batchBest.result.achievedRps * 1000 : 0,
      lag_p99_ms: lag.p99,
      lost,
    })}\n`,
  );
} finally {
  bare.stop();
  await sluice.stop();
  await pool.end();
}
