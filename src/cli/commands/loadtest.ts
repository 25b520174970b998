/**
 * `sluice loadtest visits --rate R --duration S [--url U] [--batch B]`: a bounded open-loop
 * load of page visits (src/loadgen/). Without --url it starts its own `sluice serve` on a
 * loopback port and stops it afterwards. Reports the achieved rate, latency percentiles and
 * errors, then counts the run's visits in the database: stored must equal acknowledged.
 * The last stdout line is one JSON object:
 * {"rate_target","sent","acknowledged","errors","p50_ms","p99_ms","stored"} (visits, except
 * errors, which counts failed requests). Exit 1 when a visit was lost or a request failed.
 */
import type { Command } from 'commander';
import { env } from '../../config.ts';
import { InvalidInputError } from '../../core/errors.ts';
import { openDb } from '../../db/pool.ts';
import { countVisitsByVisitorPrefix } from '../../db/sql/visits.ts';
import { isLoopback } from '../../http/auth.ts';
import { runOpenLoop } from '../../loadgen/open-loop.ts';
import { startServe, type ServeProcess } from '../../loadgen/serve-process.ts';
import { visitsWorkload } from '../../loadgen/visits-workload.ts';

interface LoadtestOptions {
  rate: string;
  duration: string;
  url?: string;
  batch: string;
  connections: string;
  visitors: string;
  timeout: string;
  verify: boolean;
  allowRemote?: boolean;
  warmup?: string;
}

export function registerLoadtest(program: Command): void {
  const loadtest = program.command('loadtest').description('bounded load generators (open loop, loopback by default)');
  loadtest
    .command('visits')
    .description('POST page visits at a fixed rate, then check that every acknowledged visit is stored')
    .requiredOption('--rate <visits/s>', 'target visits per second')
    .requiredOption('--duration <seconds>', 'how long to send')
    .option('--url <url>', 'Sluice to load (default: start a `sluice serve` on a free loopback port)')
    .option('--batch <n>', 'visits per request: 1 posts /visits, more posts NDJSON to /visits/batch', '1')
    .option('--connections <n>', 'most connections open at once', '4000')
    .option('--visitors <n>', 'distinct visitors the visits are spread over', '20000')
    .option('--timeout <seconds>', 'a request unanswered this long fails', '10')
    .option('--warmup <seconds>', 'unmeasured load first, at up to 1,000 visits/s (default 2 with the own server, 0 with --url)')
    .option('--no-verify', 'skip counting the stored visits (when the server uses another database)')
    .option('--allow-remote', 'allow a --url that is not loopback')
    .action(async (opts: LoadtestOptions) => {
      const rate = positive('--rate', opts.rate);
      const duration = positive('--duration', opts.duration);
      const batch = Math.floor(positive('--batch', opts.batch));
      if (rate / batch < 0.1) throw new InvalidInputError('--rate / --batch is below one request per 10 s');
      // One Node process sends some 10-20 thousand requests/s here; a higher target only
      // queues requests in memory (--rate 1e9 grew by 200 MB/s and never ended).
      if (rate / batch > MAX_REQUESTS_PER_S) {
        throw new InvalidInputError(`--rate / --batch is above ${MAX_REQUESTS_PER_S} requests/s, more than one load generator sends: raise --batch, or run several`);
      }
      if (duration > 3600) throw new InvalidInputError('--duration is at most 3600 seconds');
      if (opts.warmup !== undefined && !(Number(opts.warmup) >= 0 && Number(opts.warmup) <= 60)) {
        throw new InvalidInputError('--warmup is between 0 and 60 seconds');
      }
      if (opts.url !== undefined) checkUrl(opts.url);
      if (opts.url && !opts.allowRemote && !isLoopback(new URL(opts.url).hostname.replace(/^\[|\]$/g, ''))) {
        throw new InvalidInputError(`${opts.url} is not loopback; pass --allow-remote to load another machine`);
      }
      const code = await loadtestVisits({
        rate,
        durationMs: duration * 1000,
        url: opts.url,
        batch,
        connections: Math.floor(positive('--connections', opts.connections)),
        visitors: Math.floor(positive('--visitors', opts.visitors)),
        timeoutMs: positive('--timeout', opts.timeout) * 1000,
        verify: opts.verify,
        warmupMs: (opts.warmup !== undefined ? Number(opts.warmup) : opts.url ? 0 : 2) * 1000,
      });
      process.exitCode = code;
    });
}

/** Requests per second one load generator is asked for at most. */
const MAX_REQUESTS_PER_S = 50_000;

/** --url: an http:// URL (the generator speaks plain HTTP/1.1). */
function checkUrl(url: string): void {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new InvalidInputError(`--url must be a URL such as http://127.0.0.1:8080, got ${JSON.stringify(url)}`);
  }
  if (u.protocol !== 'http:') throw new InvalidInputError(`--url must be http:// (the load generator speaks plain HTTP/1.1), got ${JSON.stringify(url)}`);
}

function positive(flag: string, value: string): number {
  const n = Number(value);
  if (!Number.isFinite(n) || n <= 0) throw new InvalidInputError(`${flag} must be a positive number, got ${JSON.stringify(value)}`);
  return n;
}

interface RunOptions {
  rate: number;
  durationMs: number;
  url: string | undefined;
  batch: number;
  connections: number;
  visitors: number;
  timeoutMs: number;
  verify: boolean;
  warmupMs: number;
}

async function loadtestVisits(o: RunOptions): Promise<number> {
  const say = (line: string) => process.stdout.write(`${line}\n`);
  let server: ServeProcess | undefined;
  const url = o.url ?? (server = await startServe()).url;
  if (server) say(`started sluice serve at ${url} (pid ${server.child.pid})`);
  const token = env('SLUICE_API_TOKEN');
  const workload = visitsWorkload({
    batch: o.batch,
    visitors: o.visitors,
    headers: token ? { authorization: `Bearer ${token}` } : {},
  });
  if (o.warmupMs > 0) {
    // A fresh process runs its first thousands of requests unoptimised (JIT) while it also
    // accepts every new connection: not what a steady rate is about.
    say(`warming up for ${o.warmupMs / 1000} s (not measured)`);
    const warm = visitsWorkload({ batch: o.batch, visitors: o.visitors, headers: token ? { authorization: `Bearer ${token}` } : {} });
    await runOpenLoop({ url, rate: Math.min(o.rate, 1000) / o.batch, durationMs: o.warmupMs, request: warm.request, maxConnections: o.connections });
  }
  const since = new Date(Date.now() - 60_000);
  say(`loading ${url}: ${o.rate} visits/s for ${o.durationMs / 1000} s, ${o.batch} per request, run ${workload.runId}`);
  try {
    const result = await runOpenLoop({
      url,
      rate: o.rate / o.batch,
      durationMs: o.durationMs,
      request: workload.request,
      maxConnections: o.connections,
      timeoutMs: o.timeoutMs,
      isSuccess: (s) => s === 202,
      onProgress: (p) =>
        process.stderr.write(
          `  ${(p.elapsedMs / 1000).toFixed(0)}s sent ${p.sent * o.batch} acknowledged ${p.succeeded * o.batch} ` +
            `failed ${p.failed} in flight ${p.inFlight} (${p.rps * o.batch}/s)\n`,
        ),
    });
    const acknowledged = result.succeeded * o.batch;
    let stored: number | null = null;
    if (o.verify) {
      // A 202 means committed, so the count is final at once (no waiting for flushes).
      const pool = await openDb({ max: 1 });
      try {
        stored = await countVisitsByVisitorPrefix(pool, workload.visitorPrefix, since);
      } finally {
        await pool.end();
      }
    }
    const l = result.latency;
    say(`achieved ${result.achievedRps * o.batch} visits/s (${result.achievedRps} requests/s) of ${o.rate} targeted`);
    say(`latency ms: p50 ${l.p50}  p90 ${l.p90}  p99 ${l.p99}  p99.9 ${l.p999}  max ${l.max}  (from scheduled send time)`);
    say(
      `requests: ${result.sent} sent, ${result.succeeded} acknowledged (202), ${result.failed} failed; ` +
        `peak connections ${result.maxConnections}; generator busy ${Math.round(result.generatorBusy * 100)}%`,
    );
    if (result.failed) say(`errors: ${JSON.stringify({ ...result.errors, ...statusErrors(result.statuses) })}; e.g. ${result.sampleErrors.join(' | ')}`);
    if (stored !== null) {
      const verdict =
        stored < acknowledged ? `LOST ${acknowledged - stored} acknowledged visits` : stored === acknowledged ? 'stored = acknowledged' : `stored ${stored - acknowledged} more than acknowledged (from failed requests)`;
      say(`verify: ${verdict}`);
    }
    say(
      JSON.stringify({
        rate_target: o.rate,
        sent: result.sent * o.batch,
        acknowledged,
        errors: result.failed,
        p50_ms: l.p50,
        p99_ms: l.p99,
        stored,
      }),
    );
    return result.failed > 0 || (stored !== null && stored < acknowledged) ? 1 : 0;
  } finally {
    await server?.stop();
  }
}

function statusErrors(statuses: Record<string, number>): Record<string, number> {
  return Object.fromEntries(Object.entries(statuses).filter(([s]) => s !== '202'));
}
