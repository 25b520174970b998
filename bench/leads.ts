/**
 * npm run bench:leads -- [--base N] [--rows M] [--runs R] [--existing F] [--per-row-sample S]
 *
 * In one run on one server: build a base of N leads, write an M-row file (fraction F of
 * its emails already in the base), then on identical fresh copies of the base time
 *  (a) `sluice import` end to end, as a subprocess (its peak RSS measured),
 *  (b) the floor: the same file COPYed into a temp table and merged by one hand-written
 *      INSERT ... ON CONFLICT into leads (overwrite fields only; no lead_infos),
 *  (c) the original per-row approach (lookup + save per row, lead_info, city, state) on an
 *      S-row sample, extrapolated to M rows.
 * (a) and (b) alternate R times; medians are reported. Last line: one JSON object.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { from as copyFrom } from 'pg-copy-streams';
import { repoRoot } from '../src/config.ts';
import { databaseUrl, ensureDatabase, openDb, withDatabase } from '../src/db/pool.ts';
import { generateLeads, writeLeadsCsv } from '../src/gen/leads.ts';
import { median, admin, dropDatabase, cloneDatabase } from './lib.ts';

const { values: args } = parseArgs({
  options: {
    base: { type: 'string', default: '1000000' },
    rows: { type: 'string', default: '300000' },
    runs: { type: 'string', default: '3' },
    existing: { type: 'string', default: '0.5' },
    'per-row-sample': { type: 'string', default: '2000' },
  },
});
const N = Number(args.base);
const M = Number(args.rows);
const RUNS = Number(args.runs);
const EXISTING = N === 0 ? 0 : Number(args.existing);
const SAMPLE = Number(args['per-row-sample']);

const server = await databaseUrl();
const TEMPLATE = 'sluice_bench_base';
const work = path.join(repoRoot, '.sluice', 'bench');
fs.mkdirSync(work, { recursive: true });
const file = path.join(work, `leads-${M}.csv`);
const sampleFile = path.join(work, `leads-sample-${SAMPLE}.csv`);

const log = (s: string) => process.stderr.write(`${s}\n`);

// 1. The base, built once per run of this script, kept as a template database.
await dropDatabase(server, TEMPLATE);
await ensureDatabase(server, TEMPLATE);
{
  const pool = await openDb({ url: withDatabase(server, TEMPLATE), max: 2 });
  let t = performance.now();
  if (N > 0) await generateLeads(pool, N);
  log(`base: ${N} leads in ${((performance.now() - t) / 1000).toFixed(1)}s`);
  t = performance.now();
  await writeLeadsCsv(pool, M, file, EXISTING);
  await writeLeadsCsv(pool, SAMPLE, sampleFile, EXISTING);
  log(`file: ${M} rows (${(fs.statSync(file).size / 1048576).toFixed(1)} MB) in ${((performance.now() - t) / 1000).toFixed(1)}s`);
  await pool.query('CHECKPOINT');
  await pool.end();
}

/** (a) `sluice import` as a subprocess; wall time and peak RSS (VmHWM, polled). */
async function sluiceImport(url: string): Promise<{ s: number; rssMb: number; result: Record<string, unknown> }> {
  const t = performance.now();
  const child = spawn(path.join(repoRoot, 'bin', 'sluice'), ['import', file, '--pipeline', 'leads', '--json', '--no-progress'], {
    env: { ...process.env, DATABASE_URL: url },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  let peakKb = 0;
  const poll = setInterval(() => {
    try {
      const status = fs.readFileSync(`/proc/${child.pid}/status`, 'utf8');
      const m = /VmHWM:\s+(\d+) kB/.exec(status);
      if (m) peakKb = Math.max(peakKb, Number(m[1]));
    } catch {
      // exited
    }
  }, 20);
  const code = await new Promise<number | null>((r) => child.on('exit', r));
  clearInterval(poll);
  const s = (performance.now() - t) / 1000;
  if (code !== 0) throw new Error(`sluice import exited ${code}: ${out}`);
  return { s, rssMb: Math.round(peakKb / 1024), result: JSON.parse(out) as Record<string, unknown> };
}

/** (b) The floor: client COPY into a temp table + one INSERT ... ON CONFLICT. */
async function floor(url: string): Promise<number> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    const t = performance.now();
    await client.query('BEGIN');
    await client.query(`CREATE TEMP TABLE t (email text, nome text, twitter text, website text, facebook text,
      linkedin text, phone text, city text, state text, tags text, opportunity text, job_title text, available text) ON COMMIT DROP`);
    const copy = client.query(copyFrom(`COPY t FROM STDIN WITH (FORMAT csv, HEADER true)`));
    await new Promise<void>((resolve, reject) => {
      fs.createReadStream(file, { highWaterMark: 4 << 20 }).on('error', reject).pipe(copy).on('finish', resolve).on('error', reject);
    });
    await client.query(`INSERT INTO leads (email, name, job_title, opportunity, available_for_mailing)
      SELECT lower(trim(email)), nullif(nome, ''), nullif(job_title, ''),
             CASE WHEN lower(opportunity) IN ('1','y','yes','s','sim') THEN true WHEN lower(opportunity) IN ('0','n','no','nao','não') THEN false END,
             CASE WHEN lower(available) IN ('1','y','yes','s','sim') THEN true WHEN lower(available) IN ('0','n','no','nao','não') THEN false END
        FROM t
      ON CONFLICT (email) DO UPDATE SET
        name = coalesce(EXCLUDED.name, leads.name),
        job_title = coalesce(EXCLUDED.job_title, leads.job_title),
        opportunity = coalesce(EXCLUDED.opportunity, leads.opportunity),
        available_for_mailing = coalesce(EXCLUDED.available_for_mailing, leads.available_for_mailing),
        updated_at = now()`);
    await client.query('COMMIT');
    return (performance.now() - t) / 1000;
  } finally {
    await client.end();
  }
}

const sluiceTimes: number[] = [];
const floorTimes: number[] = [];
const rss: number[] = [];
let lastResult: Record<string, unknown> = {};
for (let i = 0; i < RUNS; i++) {
  for (const which of i % 2 === 0 ? ['sluice', 'floor'] : ['floor', 'sluice']) {
    const db = `sluice_bench_${which}`;
    await cloneDatabase(server, TEMPLATE, db);
    const url = withDatabase(server, db);
    // Same starting state for both: a checkpoint so neither pays for the other's writes.
    await admin(url, (c) => c.query('CHECKPOINT'));
    if (which === 'sluice') {
      const r = await sluiceImport(url);
      r.result.timings = await admin(url, async (c) => (await c.query('SELECT timings FROM imports WHERE id = $1', [r.result.id])).rows[0]?.timings);
      // A fast wrong import is no result: every row counted once, every insert a new lead.
      const n = r.result.rows as { read: number; inserted: number; updated: number; unchanged: number; rejected: number };
      const leadsNow = await admin(url, async (c) => Number((await c.query('SELECT count(*) AS n FROM leads')).rows[0].n));
      if (n.inserted + n.updated + n.unchanged + n.rejected !== n.read || leadsNow !== N + n.inserted) {
        throw new Error(`sluice import counts do not add up: ${JSON.stringify(n)}, leads ${N} -> ${leadsNow}`);
      }
      sluiceTimes.push(r.s);
      rss.push(r.rssMb);
      lastResult = r.result;
      log(`run ${i + 1}: sluice ${r.s.toFixed(2)}s rss ${r.rssMb} MB ${JSON.stringify(r.result.rows)}`);
    } else {
      const s = await floor(url);
      floorTimes.push(s);
      log(`run ${i + 1}: floor  ${s.toFixed(2)}s`);
    }
    await dropDatabase(server, db);
  }
}

// (c) The original per-row approach on a sample (against a fresh copy of the base).
const perRowDb = 'sluice_bench_perrow';
await cloneDatabase(server, TEMPLATE, perRowDb);
const perRowS = await perRow(withDatabase(server, perRowDb), sampleFile);
await dropDatabase(server, perRowDb);
const perRowExtrapolated = (perRowS / SAMPLE) * M;
log(`per-row: ${SAMPLE} rows in ${perRowS.toFixed(2)}s -> ${perRowExtrapolated.toFixed(0)}s for ${M} rows`);
if (!process.env.SLUICE_BENCH_KEEP) await dropDatabase(server, TEMPLATE);

const sluiceS = median(sluiceTimes);
const floorS = median(floorTimes);
const summary = {
  rows: M,
  base: N,
  sluice_s: Number(sluiceS.toFixed(2)),
  expert_sql_s: Number(floorS.toFixed(2)),
  ratio: Number((sluiceS / floorS).toFixed(2)),
  per_row_s_extrapolated: Number(perRowExtrapolated.toFixed(0)),
  peak_rss_mb: Math.max(...rss),
};
const table = [
  `| what (${M} rows into ${N} leads, median of ${RUNS}) | seconds | rows/s |`,
  '| --- | ---: | ---: |',
  `| sluice import (end to end, all rules) | ${sluiceS.toFixed(2)} | ${Math.round(M / sluiceS)} |`,
  `| floor: COPY + one INSERT ... ON CONFLICT | ${floorS.toFixed(2)} | ${Math.round(M / floorS)} |`,
  `| original per-row approach (extrapolated from ${SAMPLE}) | ${perRowExtrapolated.toFixed(0)} | ${Math.round(M / perRowExtrapolated)} |`,
  `| ratio sluice / floor | ${summary.ratio} | |`,
  `| sluice peak RSS | ${summary.peak_rss_mb} MB | |`,
];
process.stdout.write(`${table.join('\n')}\n`);
process.stdout.write(`machine: ${os.cpus().length} cores (${os.cpus()[0]?.model ?? '?'}), ${Math.round(os.totalmem() / 2 ** 30)} GiB, Node ${process.version}\n`);
process.stdout.write(`sluice timings of the last run (ms): ${JSON.stringify((lastResult as { timings?: unknown }).timings ?? {})}\n`);
process.stdout.write(`${JSON.stringify(summary)}\n`);

/** The original system's approach: one lookup and one save per row, autocommit. */
async function perRow(url: string, csv: string): Promise<number> {
  const { CsvParser } = await import('../src/formats/csv-parser.ts');
  const parser = new CsvParser({ delimiter: ',' });
  const batch = parser.push(fs.readFileSync(csv, 'utf8'));
  const rows = [...batch.rows, ...parser.end().rows].slice(1);
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  const t = performance.now();
  for (const r of rows) {
    const [email, nome, twitter, website, , , phone, city, state] = r.map((v) => v.trim());
    const e = email!.toLowerCase();
    let stateId: number | null = null;
    if (state) {
      const s = await client.query('SELECT id FROM states WHERE acronym = $1', [state.toUpperCase()]);
      stateId = s.rows[0]?.id ?? (await client.query('INSERT INTO states (name, acronym) VALUES ($1, $1) RETURNING id', [state.toUpperCase()])).rows[0].id;
    }
    let cityId: number | null = null;
    if (city) {
      const c = await client.query('SELECT id FROM cities WHERE name = $1 AND state_id IS NOT DISTINCT FROM $2', [city, stateId]);
      cityId = c.rows[0]?.id ?? (await client.query('INSERT INTO cities (name, state_id) VALUES ($1, $2) RETURNING id', [city, stateId])).rows[0].id;
    }
    const found = await client.query('SELECT id, city_id, state_id FROM leads WHERE email = $1', [e]);
    let id: number;
    if (found.rows[0]) {
      id = found.rows[0].id;
      await client.query('UPDATE leads SET name = coalesce($2, name), city_id = coalesce(city_id, $3), state_id = coalesce(state_id, $4), updated_at = now() WHERE id = $1', [id, nome || null, cityId, stateId]);
    } else {
      id = (await client.query('INSERT INTO leads (email, name, city_id, state_id) VALUES ($1, $2, $3, $4) RETURNING id', [e, nome || null, cityId, stateId])).rows[0].id;
    }
    const info = await client.query('SELECT lead_id FROM lead_infos WHERE lead_id = $1', [id]);
    if (info.rows[0]) {
      await client.query('UPDATE lead_infos SET twitter = coalesce(twitter, $2), website = coalesce(website, $3), mobile_phone = coalesce(mobile_phone, $4) WHERE lead_id = $1', [id, twitter || null, website || null, phone || null]);
    } else {
      await client.query('INSERT INTO lead_infos (lead_id, twitter, website, mobile_phone) VALUES ($1, $2, $3, $4)', [id, twitter || null, website || null, phone || null]);
    }
  }
  const s = (performance.now() - t) / 1000;
  await client.end();
  return s;
}
