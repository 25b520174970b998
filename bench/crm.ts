/**
 * `npm run bench:crm -- [--orders N] [--customers C] [--rate-limit 80/2s|none]
 *                       [--initial-rate-limit 80/2s|none] [--concurrency K]`
 *
 * The CRM sync against the Pipedrive simulator (`sluice dev pipedrive`, its own process) with
 * generated CSVs served over local HTTP: an initial sync, a re-sync with 1% of the orders'
 * values changed, a forced re-sync with nothing changed, and an unforced one (skipped).
 * Prints requests used against the minimum possible, wall time against the rate bound
 * (requests / allowed rate), peak RSS, and one JSON line (for other sizes at a limit, also a
 * projection for 100,000 orders). The default is the issue's: 100,000 orders at 80 requests
 * / 2 s, about 1.4 h for the initial sync; `--orders 3000` takes about 3 minutes.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { repoRoot } from '../src/config.ts';
import { openDb } from '../src/db/pool.ts';
import { parseRateLimit, validateCrmConfig } from '../src/pipelines/crm/config.ts';
import { runCrmSync, type RunOutcome } from '../src/pipelines/crm/sync.ts';

const { values: args } = parseArgs({
  options: {
    orders: { type: 'string', default: '100000' },
    customers: { type: 'string' },
    'rate-limit': { type: 'string', default: '80/2s' },
    // The initial sync at another limit (e.g. none), so the re-syncs of a big CRM can be
    // measured at 80/2s without hours of creates first.
    'initial-rate-limit': { type: 'string' },
    concurrency: { type: 'string', default: '8' },
  },
});
const ORDERS = Number(args.orders);
const CUSTOMERS = Number(args.customers ?? ORDERS);
const RATE = args['rate-limit'] === 'none' ? undefined : parseRateLimit(args['rate-limit'] as string);
if (!Number.isInteger(ORDERS) || ORDERS < 1 || !Number.isInteger(CUSTOMERS) || CUSTOMERS < 1) throw new Error('--orders and --customers must be positive integers');
if (args['rate-limit'] !== 'none' && !RATE) throw new Error('--rate-limit: like 80/2s, or none');
const INITIAL_LABEL = (args['initial-rate-limit'] ?? args['rate-limit']) as string;
const INITIAL_RATE = INITIAL_LABEL === 'none' ? undefined : parseRateLimit(INITIAL_LABEL);
if (INITIAL_LABEL !== 'none' && !INITIAL_RATE) throw new Error('--initial-rate-limit: like 80/2s, or none');
const TOKEN = 'bench-token';
const STARTED_AT = new Date().toISOString();
const PAGE = 500;

/** Deterministic PRNG (mulberry32): the same files for the same sizes. */
function rng(seed: number): () => number {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const FIRST = ['Ana', 'Bruno', 'Carla', 'Diego', 'Elisa', 'Fábio', 'Gina', 'Hugo', 'Iris', 'João', 'Kátia', 'Lucas'];
const LAST = ['A.', 'B.', 'C.', 'D.', 'E.', 'F.', 'G.', 'H.', 'I.', 'J.', 'K.', 'L.', 'M.', 'N.'];
const STATUSES = ['placed', 'shipped', 'completed', 'completed', 'completed', 'return_pending', 'returned'];

async function writeLines(file: string, header: string, count: number, line: (i: number) => string): Promise<void> {
  const out = fs.createWriteStream(file);
  out.write(`${header}\n`);
  for (let i = 1; i <= count; i++) if (!out.write(`${line(i)}\n`)) await once(out, 'drain');
  out.end();
  await once(out, 'finish');
}

/** customers, orders, payments (1-3 per order); `bump` orders get one more payment. */
async function generate(dir: string, bump: Set<number>): Promise<void> {
  const r = rng(42);
  await writeLines(path.join(dir, 'customers.csv'), 'id,first_name,last_name', CUSTOMERS,
    (i) => `${i},${FIRST[Math.floor(r() * FIRST.length)]},${LAST[Math.floor(r() * LAST.length)]}`);
  const r2 = rng(7);
  await writeLines(path.join(dir, 'orders.csv'), 'id,user_id,order_date,status', ORDERS, (i) => {
    const day = new Date(Date.UTC(2024, 0, 1) + Math.floor(r2() * 365) * 86_400_000).toISOString().slice(0, 10);
    return `${i},${1 + Math.floor(r2() * CUSTOMERS)},${day},${STATUSES[Math.floor(r2() * STATUSES.length)]}`;
  });
  const r3 = rng(99);
  const payments: string[] = [];
  let id = 0;
  const out = fs.createWriteStream(path.join(dir, 'payments.csv'));
  out.write('id,order_id,payment_method,amount\n');
  for (let o = 1; o <= ORDERS; o++) {
    const n = 1 + Math.floor(r3() * r3() * 3);
    for (let k = 0; k < n; k++) payments.push(`${++id},${o},credit_card,${100 + Math.floor(r3() * 9900)}`);
    if (bump.has(o)) payments.push(`${++id},${o},coupon,500`);
    if (payments.length >= 5000 && !out.write(`${payments.splice(0).join('\n')}\n`)) await once(out, 'drain');
  }
  if (payments.length) out.write(`${payments.join('\n')}\n`);
  out.end();
  await once(out, 'finish');
}

/** Static files with ETag (mtime-size) and 304s: the "any HTTP endpoint" source. */
async function fileServer(dir: string): Promise<{ url: string; close: () => void }> {
  const server = http.createServer((req, res) => {
    const file = path.join(dir, path.basename(req.url ?? ''));
    fs.stat(file, (err, st) => {
      if (err) return void res.writeHead(404).end();
      const etag = `"${st.mtimeMs}-${st.size}"`;
      if (req.headers['if-none-match'] === etag) return void res.writeHead(304, { etag }).end();
      res.writeHead(200, { etag, 'content-type': 'text/csv', 'content-length': st.size });
      fs.createReadStream(file).pipe(res);
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, close: () => server.close() };
}

async function simulator(): Promise<{ url: string; stop: () => Promise<void> }> {
  const child = spawn(path.join(repoRoot, 'bin/sluice'), ['dev', 'pipedrive', '--port', '0', '--rate-limit', INITIAL_LABEL, '--token', TOKEN], {
    cwd: repoRoot,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const [chunk] = (await once(child.stdout, 'data')) as [Buffer];
  const url = chunk.toString().trim().split('\n')[0] as string;
  return {
    url,
    stop: async () => {
      child.kill('SIGTERM');
      await once(child, 'exit');
    },
  };
}

// Pages overlap by one record (src/pipelines/crm/pipedrive-lists.ts): the first holds 500, each next one 499 more.
const pages = (n: number) => (n <= PAGE ? 1 : 1 + Math.ceil((n - PAGE) / (PAGE - 1)));

interface Phase {
  phase: string;
  rate_limit: string;
  status: string;
  requests: number;
  minimum: number;
  sim_requests: number;
  retries_429: number;
  wall_s: number;
  bound_s: number | null;
  wall_vs_bound: number | null;
  created: number;
  updated: number;
  unchanged: number;
  failed: number;
  peak_rss_mb: number;
  /** The machine's 1-minute load average at the phase's start and end (shared machine). */
  load_start: number;
  load_end: number;
}

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-bench-crm-'));
const pool = await openDb({ max: 8, applicationName: 'bench crm' });
const files = await fileServer(work);
const sim = await simulator();
const simRoot = sim.url.replace(/\/v1$/, '');
const simRequests = async () => ((await (await fetch(`${simRoot}/_sim/stats`)).json()) as { requests: number }).requests;
process.env.PIPEDRIVE_API_TOKEN = TOKEN;
const pipeline = `bench_${Date.now().toString(36)}`;
/** The pipeline config, with the client told the account's limit ("none": a rate nobody reaches). */
const configFor = (rate: string) =>
  validateCrmConfig({
    name: pipeline,
    sources: { customers: `${files.url}/customers.csv`, orders: `${files.url}/orders.csv`, payments: `${files.url}/payments.csv` },
    destination: { base_url: sim.url, concurrency: Number(args.concurrency), rate_limit: rate === 'none' ? '1000000/1s' : rate },
  });
process.stderr.write(`bench crm: ${ORDERS} orders, ${CUSTOMERS} customers, simulator ${INITIAL_LABEL} (initial) then ${args['rate-limit']}, concurrency ${args.concurrency}\n`);

const phases: Phase[] = [];
async function phase(name: string, minimum: number, force: boolean, rateLabel: string): Promise<RunOutcome> {
  const rate = rateLabel === 'none' ? undefined : parseRateLimit(rateLabel);
  await fetch(`${simRoot}/_sim/rate-limit`, { method: 'PUT', body: JSON.stringify(rate ?? {}) });
  const before = await simRequests();
  const loadStart = Number((os.loadavg()[0] as number).toFixed(2));
  const t0 = performance.now();
  // A line a minute on stderr: a long phase (1.4 h at 100k) shows it is moving.
  const ticker = setInterval(() => {
    void simRequests().then(
      (n) => process.stderr.write(`  ${name}: ${((performance.now() - t0) / 1000).toFixed(0)} s, ${n - before} requests so far\n`),
      () => {},
    );
  }, 60_000);
  let o: RunOutcome;
  try {
    o = await runCrmSync(pool, configFor(rateLabel), { trigger: 'cli', force });
  } finally {
    clearInterval(ticker);
  }
  const wall = (performance.now() - t0) / 1000;
  const s = o.summary;
  const bound = rate ? s.requests / (rate.limit / (rate.windowMs / 1000)) : null;
  const p: Phase = {
    phase: name,
    rate_limit: rateLabel,
    status: o.status,
    requests: s.requests,
    minimum,
    sim_requests: (await simRequests()) - before,
    retries_429: s.retries_429,
    wall_s: Number(wall.toFixed(2)),
    bound_s: bound === null ? null : Number(bound.toFixed(2)),
    wall_vs_bound: bound ? Number((wall / bound).toFixed(3)) : null,
    created: s.persons.created + s.deals.created,
    updated: s.persons.updated + s.deals.updated,
    unchanged: s.persons.unchanged + s.deals.unchanged,
    failed: s.persons.failed + s.deals.failed,
    peak_rss_mb: Math.round(process.resourceUsage().maxRSS / 1024),
    load_start: loadStart,
    load_end: Number((os.loadavg()[0] as number).toFixed(2)),
  };
  phases.push(p);
  const timings = JSON.stringify((o as { details?: unknown }).details ?? '');
  process.stderr.write(`  ${name}: ${p.status}, ${p.requests} requests (minimum ${minimum}), ${p.wall_s} s ${timings}\n`);
  return o;
}

try {
  await generate(work, new Set());
  // Initial: 2 field lists + 2 field creates + one (empty) page each + every create.
  await phase('initial', 2 + 2 + 1 + 1 + CUSTOMERS + ORDERS, false, INITIAL_LABEL);
  // 1%: one more payment for 1% of the orders -> exactly those deals differ.
  const r = rng(1234);
  const bump = new Set<number>();
  while (bump.size < Math.max(1, Math.round(ORDERS / 100))) bump.add(1 + Math.floor(r() * ORDERS));
  await generate(work, bump);
  const lists = 2 + pages(CUSTOMERS) + pages(ORDERS);
  const resync = args['rate-limit'] as string;
  await phase('resync-1pct', lists + bump.size, false, resync);
  await phase('resync-none-forced', lists, true, resync);
  await phase('resync-none', 0, false, resync);
} finally {
  await sim.stop();
  files.close();
  for (const t of ['crm_customers', 'crm_orders', 'crm_payments', 'crm_sources', 'crm_links']) {
    await pool.query(`DELETE FROM ${t} WHERE pipeline = $1`, [pipeline]);
  }
  await pool.end();
  fs.rmSync(work, { recursive: true, force: true });
}

const head = ['phase', 'rate_limit', 'status', 'requests', 'minimum', 'sim_requests', 'retries_429', 'wall_s', 'bound_s', 'wall_vs_bound', 'created', 'updated', 'unchanged', 'failed', 'peak_rss_mb', 'load_start', 'load_end'] as const;
console.log(`| ${head.join(' | ')} |`);
console.log(`|${head.map(() => '---').join('|')}|`);
for (const p of phases) console.log(`| ${head.map((h) => String(p[h] ?? '-')).join(' | ')} |`);

const initial = phases[0] as Phase;
let projection: Record<string, number> | undefined;
if (RATE && INITIAL_RATE && initial.wall_vs_bound && ORDERS !== 100_000) {
  // 100k orders with as many customers as here per order: every create at the rate bound,
  // times the adherence measured on the initial sync.
  const customers = Math.round((100_000 * CUSTOMERS) / ORDERS);
  const requests = 2 + 2 + 1 + 1 + customers + 100_000;
  const bound = requests / (INITIAL_RATE.limit / (INITIAL_RATE.windowMs / 1000));
  projection = { orders: 100_000, customers, requests, bound_s: Math.round(bound), projected_s: Math.round(bound * initial.wall_vs_bound) };
  console.log(`\nprojection for 100,000 orders (${customers} customers): ${requests} requests, rate bound ${(bound / 3600).toFixed(2)} h, ` +
    `projected ${((bound * initial.wall_vs_bound) / 3600).toFixed(2)} h at the measured ${initial.wall_vs_bound}x`);
}
const ok = phases.every((p) => p.requests === p.minimum && p.failed === 0);
console.log(JSON.stringify({ bench: 'crm', started_at: STARTED_AT, finished_at: new Date().toISOString(), cpu: os.cpus()[0]?.model ?? null, cores: os.cpus().length, orders: ORDERS, customers: CUSTOMERS, initial_rate_limit: INITIAL_LABEL, rate_limit: args['rate-limit'], concurrency: Number(args.concurrency), requests_equal_minimum: ok, phases, projection_100k: projection ?? null }));
