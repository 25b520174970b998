/**
 * npm run bench:http-api -- [--mb 100] [--runs 3] [--seconds 5] [--rejects 200000]
 *
 * The HTTP layer of the intake service on loopback, against `sluice serve` as a subprocess
 * with no workers (SLUICE_WORKERS=0), so what is timed is HTTP + splitting + storing parts:
 *  (a) uploads of an --mb MB leads CSV, streamed as a raw body and as multipart/form-data:
 *      seconds from the first byte to the 202, and the server's peak RSS (VmHWM, which
 *      stays flat if nothing buffers the file);
 *  (b) the floor: the same bytes POSTed to a bare Node server that discards them;
 *  (c) reads under load (autocannon, 10 connections, --seconds each): GET /imports/:id of
 *      an uploaded import, GET /imports?limit=20;
 *  (d) streaming --rejects rejects as CSV from GET /imports/:id/rejects.
 * Medians over --runs. Last line: one JSON object.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { Readable } from 'node:stream';
import { parseArgs } from 'node:util';
import autocannon from 'autocannon';
import { repoRoot } from '../src/config.ts';
import { databaseUrl, ensureDatabase, openDb, withDatabase } from '../src/db/pool.ts';
import { dropDatabase, median } from './lib.ts';

const { values: args } = parseArgs({
  options: {
    mb: { type: 'string', default: '100' },
    runs: { type: 'string', default: '3' },
    seconds: { type: 'string', default: '5' },
    rejects: { type: 'string', default: '200000' },
  },
});
const MB = Number(args.mb);
const RUNS = Number(args.runs);
const SECONDS = Number(args.seconds);
const REJECTS = Number(args.rejects);
const log = (s: string) => process.stderr.write(`${s}\n`);

const work = path.join(repoRoot, '.sluice', 'bench');
fs.mkdirSync(work, { recursive: true });
const file = path.join(work, `http-leads-${MB}mb.csv`);

/** A leads CSV of about `mb` MB (written once, kept for reruns). */
function generate(target: string, mb: number): void {
  if (fs.existsSync(target)) return;
  const fd = fs.openSync(target, 'w');
  fs.writeSync(fd, 'Email,Name,Cidade,UF,Tags\n');
  let bytes = 0;
  for (let i = 0; bytes < mb * 1024 * 1024; ) {
    let chunk = '';
    for (let j = 0; j < 10_000; j++, i++) chunk += `bench${i}@example.com,Lead Number ${i},Recife,PE,"a, b"\n`;
    bytes += fs.writeSync(fd, chunk);
  }
  fs.closeSync(fd);
}

function peakRssMb(pid: number): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : NaN;
}

function startServer(url: string): Promise<{ child: ChildProcess; base: string }> {
  const child = spawn(path.join(repoRoot, 'bin', 'sluice'), ['serve', '--port', '0'], {
    env: { ...process.env, DATABASE_URL: url, SLUICE_WORKERS: '0', SLUICE_MAX_UPLOAD_BYTES: String(4 * 1024 ** 3) },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  return new Promise((resolve, reject) => {
    let out = '';
    child.stderr!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /listening on (http:\/\/\S+)/.exec(out);
      if (m) resolve({ child, base: m[1]! });
    });
    child.once('exit', (code) => reject(new Error(`sluice serve exited ${code}: ${out}`)));
  });
}

/** POSTs `body` chunks as a stream; seconds to the response, which must be `expect`. */
async function post(url: string, type: string, body: AsyncIterable<Uint8Array>, expect: number): Promise<{ s: number; json: unknown }> {
  const t = performance.now();
  const res = await fetch(url, {
    method: 'POST', headers: { 'content-type': type }, body: Readable.toWeb(Readable.from(body)) as ReadableStream, duplex: 'half',
  } as RequestInit);
  const text = await res.text();
  if (res.status !== expect) throw new Error(`${url} answered ${res.status}: ${text.slice(0, 300)}`);
  return { s: (performance.now() - t) / 1000, json: text ? JSON.parse(text) : null };
}

async function* fileChunks(): AsyncGenerator<Uint8Array> {
  yield* fs.createReadStream(file, { highWaterMark: 256 * 1024 }) as AsyncIterable<Buffer>;
}

const BOUNDARY = '----sluicebench7d1f';
async function* multipartChunks(): AsyncGenerator<Uint8Array> {
  yield Buffer.from(`--${BOUNDARY}\r\nContent-Disposition: form-data; name="pipeline"\r\n\r\nleads\r\n` +
    `--${BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="bench.csv"\r\nContent-Type: text/csv\r\n\r\n`);
  yield* fileChunks();
  yield Buffer.from(`\r\n--${BOUNDARY}--\r\n`);
}

async function load(url: string): Promise<{ rps: number; p50: number; p99: number; errors: number }> {
  const r = await autocannon({ url, connections: 10, duration: SECONDS });
  return { rps: Math.round(r.requests.average), p50: r.latency.p50, p99: r.latency.p99, errors: r.errors + r.non2xx };
}

// ---------------------------------------------------------------------------------------
generate(file, MB);
const size = fs.statSync(file).size;
const sizeMb = size / 1024 / 1024;
log(`file: ${file} (${sizeMb.toFixed(1)} MB)`);

const server = await databaseUrl();
const DB = 'sluice_bench_http';
await dropDatabase(server, DB);
await ensureDatabase(server, DB);
const url = withDatabase(server, DB);
const pool = await openDb({ url, max: 2 });
const { child, base } = await startServer(url);
const startRss = peakRssMb(child.pid!);
log(`server ${base}, RSS after start ${startRss.toFixed(0)} MB`);

// (b) the floor: a bare server that discards the body.
const bare = http.createServer((req, res) => req.resume().on('end', () => res.writeHead(202).end('{}')));
await new Promise<void>((r) => bare.listen(0, '127.0.0.1', r));
const bareUrl = `http://127.0.0.1:${(bare.address() as AddressInfo).port}/`;

const times = { raw: [] as number[], multipart: [] as number[], floor: [] as number[] };
let lastId = '';
try {
  for (let i = 0; i < RUNS; i++) {
    times.floor.push((await post(bareUrl, 'text/csv', fileChunks(), 202)).s);
    const raw = await post(`${base}/imports?pipeline=leads&file_name=bench.csv`, 'text/csv', fileChunks(), 202);
    times.raw.push(raw.s);
    const mp = await post(`${base}/imports`, `multipart/form-data; boundary=${BOUNDARY}`, multipartChunks(), 202);
    times.multipart.push(mp.s);
    lastId = (mp.json as { id: string }).id;
    log(`run ${i + 1}: floor ${times.floor[i]!.toFixed(2)} s, raw ${raw.s.toFixed(2)} s, multipart ${mp.s.toFixed(2)} s, peak RSS ${peakRssMb(child.pid!).toFixed(0)} MB`);
  }
  const peakRss = peakRssMb(child.pid!);
  const { rows } = await pool.query<{ parts: number }>('SELECT count(*)::int AS parts FROM import_parts WHERE import_id = $1', [lastId]);
  const parts = rows[0]!.parts;

  // (c) reads under load.
  const one = await load(`${base}/imports/${lastId}`);
  log(`GET /imports/:id (${parts} parts): ${one.rps} req/s, p50 ${one.p50} ms, p99 ${one.p99} ms`);
  const list = await load(`${base}/imports?limit=20`);
  log(`GET /imports?limit=20: ${list.rps} req/s, p50 ${list.p50} ms, p99 ${list.p99} ms`);

  // (d) rejects streamed as CSV.
  await pool.query(
    `INSERT INTO import_rejects (import_id, line, field, reason, raw)
     SELECT $1, g, NULL, 'email: not an email: "x' || g || '"', 'x' || g || ',Lead Number ' || g || ',Recife,PE,"a, b"'
       FROM generate_series(2, $2 + 1) g`,
    [lastId, REJECTS],
  );
  const t = performance.now();
  const res = await fetch(`${base}/imports/${lastId}/rejects?format=csv`);
  let bytes = 0;
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) bytes += chunk.length;
  const rejectsS = (performance.now() - t) / 1000;
  log(`rejects: ${REJECTS} as CSV (${(bytes / 1048576).toFixed(1)} MB) in ${rejectsS.toFixed(2)} s`);

  const r2 = (x: number) => Math.round(x * 100) / 100;
  const mbps = (s: number) => Math.round((sizeMb / s) * 10) / 10;
  const result = {
    file_mb: Math.round(sizeMb * 10) / 10,
    parts_per_upload: parts,
    upload_s: { floor: r2(median(times.floor)), raw: r2(median(times.raw)), multipart: r2(median(times.multipart)) },
    upload_mb_per_s: { floor: mbps(median(times.floor)), raw: mbps(median(times.raw)), multipart: mbps(median(times.multipart)) },
    server_rss_mb: { after_start: Math.round(startRss), peak: Math.round(peakRss) },
    get_import: one,
    list_imports: list,
    rejects: { rows: REJECTS, mb: Math.round((bytes / 1048576) * 10) / 10, s: Math.round(rejectsS * 100) / 100, rows_per_s: Math.round(REJECTS / rejectsS) },
  };
  process.stdout.write(`${JSON.stringify(result)}\n`);
} finally {
  bare.close();
  child.kill('SIGTERM');
  await new Promise((r) => child.once('exit', r));
  await pool.end();
  await dropDatabase(server, DB);
}
