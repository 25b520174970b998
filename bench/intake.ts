/**
 * npm run bench:intake -- [--rows 2000000] [--workers 1,2,4] [--runs 3] [--timeout-s 900] [--idle-s S]   (--rows 0: the shared file only)
 *
 * The intake service end to end on loopback: `sluice serve` (no in-process workers) plus N
 * `sluice worker` processes, started fresh for each run; each run uploads the real file once
 * (the first import after a start, timed apart), then, into an emptied table, the timed
 * file over HTTP (with its Content-Length) and waits for `completed`: woken by the import's
 * finished NOTIFY, it then reads GET /imports/<id> (--poll-ms N: polls GET every N ms
 * instead, the old way; --idle-s S: the timed upload comes S seconds after the first import
 * ends, as to a service that sat idle, whose idle connections may have closed). Files:
 * the real shared file (49,998 rows; skipped when ../shared is absent) and a generated file
 * of --rows rows in the same format. Baseline in the same run: raw COPY of the same bytes
 * into a one-text-column table; and the hand-written floor (intake-floor.ts: one process,
 * the same row code, COPY into an unlogged table and one INSERT into an empty copy of
 * `purchases`, one transaction). Per run (stderr): a timeline and the CPU seconds of each
 * process. Last line: one JSON object.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { from as copyFrom } from 'pg-copy-streams';
import { repoRoot } from '../src/config.ts';
import { databaseUrl, ensureDatabase, openDb, withDatabase } from '../src/db/pool.ts';
import { handWrittenImport } from './intake-floor.ts';
import { dropDatabase, median, procCpuMs } from './lib.ts';
import { writePurchasesFile } from '../src/gen/purchases.ts';

const { values: args } = parseArgs({
  options: {
    rows: { type: 'string', default: '2000000' },
    workers: { type: 'string', default: '1,2,4' },
    runs: { type: 'string', default: '3' },
    // 0: wait for the import's NOTIFY, then read its status once; N: poll GET every N ms.
    'poll-ms': { type: 'string', default: '0' },
    // An import not completed after this many seconds fails the benchmark (a hang ends it).
    'timeout-s': { type: 'string', default: '900' },
    'idle-s': { type: 'string', default: '0' },
  },
});
const ROWS = Number(args.rows);
const WORKERS = args.workers!.split(',').map(Number);
const RUNS = Number(args.runs);
const POLL_MS = Number(args['poll-ms']);
const TIMEOUT_MS = Number(args['timeout-s']) * 1000;
const IDLE_MS = Number(args['idle-s']) * 1000;
const log = (s: string) => process.stderr.write(`${s}\n`);

const shared = path.resolve(repoRoot, '..', 'shared', 'data', 'neoway', 'base_teste.txt');
const work = path.join(repoRoot, '.sluice', 'bench');
fs.mkdirSync(work, { recursive: true });
const generated = path.join(work, `purchases-${ROWS}.txt`);

/** The generated file, written once and kept (src/gen/purchases.ts). */
function generate(file: string, rows: number): void {
  if (fs.existsSync(file)) return;
  writePurchasesFile(file, rows);
}

function sluice(args: string[], env: Record<string, string>): ChildProcess {
  return spawn(path.join(repoRoot, 'bin', 'sluice'), args, { env: { ...process.env, ...env }, stdio: ['ignore', 'ignore', 'pipe'] });
}

/** Resolves with what the process wrote once it has written a line matching `re` (fails after 60 s, with what it wrote). */
function waitLine(p: ChildProcess, re: RegExp): Promise<string> {
  return new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`no ${re} from ${p.spawnargs.join(' ')} in 60 s: ${out}`)), 60_000);
    p.stderr!.on('data', (d: Buffer) => {
      out += d.toString();
      if (re.test(out)) {
        clearTimeout(timer);
        resolve(out);
      }
    });
    p.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`exited ${code}: ${out}`));
    });
  });
}

function upload(port: number, file: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      // With its Content-Length, as `curl --data-binary @file` and browsers send a file.
      { host: '127.0.0.1', port, method: 'POST', path: '/imports?pipeline=purchases', headers: { 'content-type': 'text/plain', 'content-length': fs.statSync(file).size } },
      (res) => {
        let body = '';
        res.on('data', (d: Buffer) => (body += d.toString()));
        res.on('end', () => (res.statusCode === 202 ? resolve((JSON.parse(body) as { id: string }).id) : reject(new Error(body))));
      },
    );
    req.on('error', reject);
    fs.createReadStream(file).pipe(req);
  });
}

async function status(port: number, id: string): Promise<{ status: string; rows: { read: number }; error: string | null }> {
  const res = await fetch(`http://127.0.0.1:${port}/imports/${id}`);
  return (await res.json()) as { status: string; rows: { read: number }; error: string | null };
}

const loadStart = os.loadavg().map((l) => l.toFixed(2)).join(' ');
const server = await databaseUrl();
const DB = 'sluice_bench_intake';
await dropDatabase(server, DB);
await ensureDatabase(server, DB);
const url = withDatabase(server, DB);
const pool = await openDb({ url, max: 2 });

/**
 * The imports finished so far, told by Sluice's NOTIFY on sluice_imports (sent in the
 * transaction that records the outcome): waiting on it instead of polling GET every few ms
 * keeps the benchmark's own requests from competing with the import for the two cores.
 */
const listener = new pg.Client({ connectionString: url });
await listener.connect();
await listener.query('LISTEN sluice_imports');
const finishedIds = new Set<string>();
const finishWaiters = new Map<string, () => void>();
/**
 * Backend pid of each import's merge: the finished NOTIFY is sent in the merge's transaction,
 * so its process id is the merge's backend. Its CPU is reported as `pg:merge` (that backend
 * may have served a few part-job statements before the merge took it from the pool).
 */
const mergePids = new Set<number>();
listener.on('notification', (m) => {
  if (!m.payload) return;
  mergePids.add(m.processId);
  finishedIds.add(m.payload);
  finishWaiters.get(m.payload)?.();
});

function finishedSignal(id: string, ms: number): Promise<void> {
  if (finishedIds.has(id)) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      finishWaiters.delete(id);
      resolve();
    };
    const timer = setTimeout(done, ms);
    finishWaiters.set(id, done);
  });
}

async function rawCopy(file: string): Promise<number> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    await c.query('DROP TABLE IF EXISTS raw_copy; CREATE TABLE raw_copy (line text)');
    const t = performance.now();
    const copy = c.query(copyFrom(`COPY raw_copy FROM STDIN WITH (FORMAT text, DELIMITER E'\\x01')`));
    await new Promise<void>((resolve, reject) => fs.createReadStream(file).pipe(copy).on('finish', resolve).on('error', reject));
    const s = (performance.now() - t) / 1000;
    await c.query('DROP TABLE raw_copy');
    return s;
  } finally {
    await c.end();
  }
}

/**
 * Where one import's time went, in ms after the request was sent (`t0`, epoch ms), from the
 * timestamps Sluice stores: 202 answered, each part (worker start -> end), merge job queued ->
 * taken -> import finished, and the merge's own step timings.
 */
async function timeline(id: string, t0: number, acceptedAt: number): Promise<string> {
  const ms = (d: Date | null) => (d ? Math.round(d.getTime() - t0) : '-');
  const imp = (await pool.query(`SELECT created_at, started_at, finished_at, timings FROM imports WHERE id = $1`, [id])).rows[0];
  const parts = (await pool.query(`SELECT n, rows_read, started_at, finished_at, attempts, to_jsonb(p) -> 'timings' AS timings FROM import_parts p WHERE import_id = $1 ORDER BY n`, [id])).rows;
  const merge = (await pool.query(`SELECT created_on, started_on FROM pgboss.job WHERE name = 'sluice-merge' AND data->>'importId' = $1`, [id])).rows[0];
  const t = (j: Record<string, number> | null) => (j ? ` ${['start', 'parse', 'copy', 'lock'].map((k) => j[k] ?? '-').join('/')}` : '');
  const one = (r: (typeof parts)[number]) => `${r.n}:${ms(r.started_at)}-${ms(r.finished_at)}${t(r.timings)}${r.attempts > 1 ? ` (x${r.attempts})` : ''}`;
  // A long part list is cut to its first and last three.
  const p = parts.length <= 12 ? parts.map(one).join(', ') : `${parts.slice(0, 3).map(one).join(', ')} ... (${parts.length} parts) ... ${parts.slice(-3).map(one).join(', ')}`;
  return `created ${ms(imp.created_at)} | 202 ${Math.round(acceptedAt - t0)} | parts (start-end start/parse/copy/lock ms) ${p} | merge queued ${ms(merge?.created_on ?? null)} taken ${ms(merge?.started_on ?? null)} | finished ${ms(imp.finished_at)} | timings ${JSON.stringify(imp.timings)}`;
}

/** CPU ms (user + system) of each pid still there (bench/lib.ts; empty without /proc). */
function cpuMs(pids: number[]): Map<number, number> {
  const m = new Map<number, number>();
  for (const pid of pids) {
    const ms = procCpuMs(pid);
    if (ms !== undefined) m.set(pid, ms);
  }
  return m;
}

/** Every Postgres process (backends and background) by pid, with what it serves. */
async function pgProcesses(): Promise<Map<number, string>> {
  const { rows } = await pool.query<{ pid: number; who: string }>(
    `SELECT pid, CASE WHEN backend_type = 'client backend' THEN coalesce(nullif(application_name, ''), 'client') ELSE backend_type END AS who
       FROM pg_stat_activity`,
  );
  return new Map(rows.map((r) => [r.pid, `pg:${r.who}`]));
}

/**
 * CPU seconds spent between two samples by each group of processes (Sluice's processes by
 * role, Postgres backends by application_name): less sensitive to what else runs on the
 * machine than the elapsed time, and it shows who does the work.
 */
function cpuSpent(before: Map<number, number>, after: Map<number, number>, who: Map<number, string>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [pid, t] of after) {
    const k = mergePids.has(pid) ? 'pg:merge' : who.get(pid) ?? '?';
    out[k] = (out[k] ?? 0) + (t - (before.get(pid) ?? 0)) / 1000;
  }
  for (const k of Object.keys(out)) out[k] = Number(out[k]!.toFixed(2));
  return out;
}

/** Uploads `file` and waits for `completed`; returns the import id and the seconds from the first byte sent. */
async function importFile(port: number, file: string): Promise<{ id: string; secs: number; t0: number; acceptedAt: number }> {
  const t = performance.now();
  const t0 = Date.now();
  const id = await upload(port, file);
  const acceptedAt = Date.now();
  for (;;) {
    // Between two looks: the import's finished NOTIFY (backstop 500 ms), or --poll-ms.
    if (POLL_MS === 0) await finishedSignal(id, 500);
    const s = await status(port, id);
    if (s.status === 'completed') break;
    if (s.status === 'failed' || s.status === 'cancelled') throw new Error(`import ${s.status}: ${s.error}`);
    if (performance.now() - t > TIMEOUT_MS) throw new Error(`import ${id} not completed after ${TIMEOUT_MS / 1000} s (--timeout-s): ${s.status}`);
    if (POLL_MS > 0) await new Promise((r) => setTimeout(r, POLL_MS));
  }
  return { id, secs: (performance.now() - t) / 1000, t0, acceptedAt };
}

/**
 * Fresh `sluice serve` and `workers` worker processes; first an import of `first` (the
 * first import after a start: fresh connections, cold code), then, into an emptied table,
 * the timed import of `file` by the same, now running, service. Seconds from the first byte
 * sent to completed, of both. Logs (stderr) the timed import's CPU seconds by process and
 * its timeline.
 */
async function timed(file: string, workers: number, first: string | undefined): Promise<{ secs: number; firstSecs: number | undefined }> {
  await pool.query('TRUNCATE purchases');
  await pool.query('CHECKPOINT');
  const env = { DATABASE_URL: url, SLUICE_WORKERS: '0' };
  // Port 0: a port the system picks free (a random one could be taken: 1 run in ~30 here).
  const srv = sluice(['serve', '--port', '0'], env);
  const procs = [srv, ...Array.from({ length: workers }, () => sluice(['worker', '--concurrency', '1'], env))];
  const [said] = await Promise.all([waitLine(srv, /listening on http:\/\/[^:]+:\d+/), ...procs.slice(1).map((p) => waitLine(p, /ready/))]);
  const port = Number(/listening on http:\/\/[^:]+:(\d+)/.exec(said)![1]);
  try {
    let firstSecs: number | undefined;
    if (first) {
      firstSecs = (await importFile(port, first)).secs;
      await pool.query('TRUNCATE purchases');
      await pool.query('CHECKPOINT');
    }
    if (IDLE_MS > 0) await new Promise((r) => setTimeout(r, IDLE_MS));
    const who = new Map<number, string>(procs.map((p, i) => [p.pid!, i === 0 ? 'serve' : 'workers']));
    const cpuPids = async () => {
      for (const [pid, w] of await pgProcesses()) who.set(pid, w);
      return [...who.keys()];
    };
    const cpu0 = cpuMs(await cpuPids());
    const { id, secs, t0, acceptedAt } = await importFile(port, file);
    const cpu = cpuSpent(cpu0, cpuMs(await cpuPids()), who);
    const total = Object.values(cpu).reduce((a, b) => a + b, 0);
    for (const k of Object.keys(cpu)) if (cpu[k] === 0) delete cpu[k];
    const before = firstSecs === undefined ? '' : `first import after start ${firstSecs.toFixed(3)} s; then `;
    log(`  ${before}${secs.toFixed(3)} s (load ${os.loadavg()[0]!.toFixed(2)}; cpu s ${total.toFixed(2)} ${JSON.stringify(cpu)}): ${await timeline(id, t0, acceptedAt)}`);
    return { secs, firstSecs };
  } finally {
    for (const p of procs) p.kill('SIGTERM');
    await Promise.all(procs.map((p) => new Promise((r) => (p.exitCode !== null || p.signalCode !== null ? r(null) : p.once('exit', r)))));
  }
}

const results: Record<string, unknown> = {};
const lines: string[] = [
  '| file | rows | workers | upload to completed (s, median), running service | first import after start (s, median) | raw COPY (s) | ratio (running) | hand-written floor (s) | ratio to the floor |',
  '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
];
let sharedS: number | undefined;
let sharedFirst: number | undefined;
let sharedCopy: number | undefined;
let sharedFloor: number | undefined;

/** The hand-written floor's seconds for `file` of `rows` rows (fails when it did not insert them all). */
async function floor(file: string, rows: number): Promise<number> {
  const r = await handWrittenImport(url, file);
  if (r.rows !== rows) throw new Error(`hand-written floor: ${r.rows} records inserted from ${file}, expected ${rows}`);
  return r.secs;
}

if (fs.existsSync(shared)) {
  const times: number[] = [];
  const firsts: number[] = [];
  const copies: number[] = [];
  const floors: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    copies.push(await rawCopy(shared));
    floors.push(await floor(shared, 49998));
    const r = await timed(shared, 2, shared);
    times.push(r.secs);
    firsts.push(r.firstSecs!);
  }
  sharedS = median(times);
  sharedFirst = median(firsts);
  sharedCopy = median(copies);
  sharedFloor = median(floors);
  lines.push(`| base_teste.txt | 49998 | 2 | ${sharedS.toFixed(2)} | ${sharedFirst.toFixed(2)} | ${sharedCopy.toFixed(2)} | ${(sharedS / sharedCopy).toFixed(1)} | ${sharedFloor.toFixed(2)} | ${(sharedS / sharedFloor).toFixed(2)} |`);
  log(`shared file: ${times.map((t) => t.toFixed(2)).join(', ')} s (first import after start ${firsts.map((t) => t.toFixed(2)).join(', ')} s); raw copy ${copies.map((t) => t.toFixed(2)).join(', ')} s; hand-written floor ${floors.map((t) => t.toFixed(2)).join(', ')} s; per run, Sluice / floor ${times.map((t, i) => (t / floors[i]!).toFixed(2)).join(', ')} (median ${median(times.map((t, i) => t / floors[i]!)).toFixed(2)})`);
}
const byWorkers: Record<string, number> = {};
const genCopy = ROWS > 0 ? (generate(generated, ROWS), await rawCopy(generated)) : 0;
const genFloor = ROWS > 0 ? await floor(generated, ROWS) : 0;
for (const w of ROWS > 0 ? WORKERS : []) {
  // The service warmed up by the real file first, when there is one.
  const s = (await timed(generated, w, fs.existsSync(shared) ? shared : undefined)).secs;
  byWorkers[String(w)] = Number(s.toFixed(2));
  lines.push(`| generated | ${ROWS} | ${w} | ${s.toFixed(2)} | - | ${genCopy.toFixed(2)} | ${(s / genCopy).toFixed(1)} | ${genFloor.toFixed(2)} | ${(s / genFloor).toFixed(2)} |`);
  log(`generated ${ROWS} rows, ${w} workers: ${s.toFixed(2)} s`);
}
await pool.end();
await listener.end();
if (!process.env.SLUICE_BENCH_KEEP) await dropDatabase(server, DB);

results.file_rows = 49998;
results.upload_to_completed_s = sharedS === undefined ? null : Number(sharedS.toFixed(3));
results.first_after_start_s = sharedFirst === undefined ? null : Number(sharedFirst.toFixed(3));
results.raw_copy_s = sharedCopy === undefined ? null : Number(sharedCopy.toFixed(3));
results.ratio = sharedS && sharedCopy ? Number((sharedS / sharedCopy).toFixed(1)) : null;
results.handwritten_s = sharedFloor === undefined ? null : Number(sharedFloor.toFixed(3));
results.ratio_handwritten = sharedS && sharedFloor ? Number((sharedS / sharedFloor).toFixed(2)) : null;
results.by_workers = { rows: ROWS, raw_copy_s: Number(genCopy.toFixed(2)), handwritten_s: Number(genFloor.toFixed(2)), ...byWorkers };
process.stdout.write(`${lines.join('\n')}\n`);
process.stdout.write(`load average at start ${loadStart}, at end ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}\n`);
process.stdout.write(`machine: ${os.cpus().length} cores (${os.cpus()[0]?.model ?? '?'}), ${Math.round(os.totalmem() / 2 ** 30)} GiB, Node ${process.version}\n`);
process.stdout.write(`${JSON.stringify(results)}\n`);
