/**
 * Shared pieces of the CRM sync tests: a static file server with ETag/Last-Modified (the
 * "any HTTP endpoint" source), the expected persons and deals computed independently from
 * the jaffle CSVs, config files, the CLI as a subprocess, and views of the simulator.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, beforeEach } from 'node:test';
import { stringify } from 'yaml';
import { repoRoot } from '../../src/config.ts';
import { PipedriveSimulator } from '../../src/dev/pipedrive-simulator.ts';
import { validateCrmConfig } from '../../src/pipelines/crm/config.ts';
import type { Pool } from '../../src/db/pool.ts';
import { buildServer } from '../../src/http/server.ts';
import { testDb, type TestDb } from '../helpers/db.ts';

export const JAFFLE = path.join(repoRoot, 'test/fixtures/jaffle');
export const FILES = ['raw_customers.csv', 'raw_orders.csv', 'raw_payments.csv'] as const;

/** Serves in-memory files with strong ETags and Last-Modified; counts 200s and 304s. */
export class FileServer {
  files = new Map<string, { body: Buffer; modified: Date }>();
  hits = { ok: 0, notModified: 0 };
  /** When false, no validators are sent (a server that does not support them). */
  validators = true;
  /** When set, every request must carry this HTTP Basic authorization (else 401). */
  auth: { user: string; password: string } | undefined;
  /** The `authorization` header of each request, in order. */
  authorizations: Array<string | undefined> = [];
  private server: http.Server | undefined;
  url = '';

  constructor(dir = JAFFLE) {
    for (const f of FILES) this.set(f, fs.readFileSync(path.join(dir, f)));
  }

  set(name: string, body: Buffer | string): void {
    // Last-Modified has one-second resolution: make every change visible to it.
    const prev = this.files.get(name)?.modified.getTime() ?? 0;
    this.files.set(name, { body: Buffer.from(body), modified: new Date(Math.max(Date.now(), prev + 1000)) });
  }

  text(name: string): string {
    return (this.files.get(name)?.body ?? Buffer.alloc(0)).toString('utf8');
  }

  async start(): Promise<string> {
    this.server = http.createServer((req, res) => {
      this.authorizations.push(req.headers.authorization);
      if (this.auth) {
        const want = `Basic ${Buffer.from(`${this.auth.user}:${this.auth.password}`).toString('base64')}`;
        if (req.headers.authorization !== want) {
          res.writeHead(401, { 'www-authenticate': 'Basic realm="exports"' }).end('unauthorized');
          return;
        }
      }
      const f = this.files.get((req.url ?? '/').slice(1));
      if (!f) {
        res.writeHead(404).end('not found');
        return;
      }
      const etag = `"${createHash('sha1').update(f.body).digest('hex')}"`;
      const lastModified = new Date(Math.floor(f.modified.getTime() / 1000) * 1000).toUTCString();
      if (this.validators && req.headers['if-none-match'] === etag) {
        this.hits.notModified++;
        res.writeHead(304, { etag }).end();
        return;
      }
      this.hits.ok++;
      res.writeHead(200, { 'content-type': 'text/csv', ...(this.validators ? { etag, 'last-modified': lastModified } : {}) });
      res.end(f.body);
    });
    await new Promise<void>((r) => this.server?.listen(0, '127.0.0.1', () => r()));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
    return this.url;
  }

  async close(): Promise<void> {
    const s = this.server;
    if (!s) return;
    s.closeAllConnections();
    await new Promise<void>((r) => s.close(() => r()));
  }
}

function readCsv(file: string): Array<Record<string, string>> {
  const [head, ...lines] = fs.readFileSync(file, 'utf8').split(/\r?\n/).filter((l) => l.trim());
  const cols = (head as string).split(',');
  return lines.map((l) => Object.fromEntries(l.split(',').map((v, i) => [cols[i], v])));
}

export interface ExpectedDeal {
  title: string;
  value: number;
  status: string;
  date: string;
  personKey: string;
}

const STATUS: Record<string, string> = { placed: 'open', shipped: 'open', completed: 'won', return_pending: 'open', returned: 'lost' };

/** Persons and deals from the CSVs, computed in JS (an independent check of the SQL). */
export function expectedJaffle(multiplier = 1): { persons: Map<string, string>; deals: Map<string, ExpectedDeal> } {
  const customers = readCsv(path.join(JAFFLE, 'raw_customers.csv'));
  const orders = readCsv(path.join(JAFFLE, 'raw_orders.csv'));
  const payments = readCsv(path.join(JAFFLE, 'raw_payments.csv'));
  const persons = new Map(customers.map((c) => [c.id as string, `${c.first_name} ${c.last_name}`]));
  const byId = new Map(customers.map((c) => [c.id, c]));
  const cents = new Map<string, number>();
  for (const p of payments) cents.set(p.order_id as string, (cents.get(p.order_id as string) ?? 0) + Number(p.amount));
  const deals = new Map<string, ExpectedDeal>();
  for (const o of orders) {
    const c = byId.get(o.user_id) as Record<string, string>;
    deals.set(o.id as string, {
      title: `${c.last_name} ${c.first_name}`,
      value: Math.round((cents.get(o.id as string) ?? 0) * multiplier) / 100,
      status: STATUS[o.status as string] ?? 'open',
      date: o.order_date as string,
      personKey: o.user_id as string,
    });
  }
  return { persons, deals };
}

/** The simulator's records keyed by their CustomerID / OrderID custom fields. */
export function crmState(sim: PipedriveSimulator, personField = 'CustomerID', dealField = 'OrderID') {
  const pKey = sim.personFields.find((f) => f.name === personField)?.key ?? '-';
  const dKey = sim.dealFields.find((f) => f.name === dealField)?.key ?? '-';
  const persons = new Map<string, Array<Record<string, unknown>>>();
  for (const p of sim.persons) persons.set(String(p[pKey]), [...(persons.get(String(p[pKey])) ?? []), p]);
  const deals = new Map<string, Array<Record<string, unknown>>>();
  for (const d of sim.deals) deals.set(String(d[dKey]), [...(deals.get(String(d[dKey])) ?? []), d]);
  return { persons, deals, pKey, dKey };
}

const tmpDirs: string[] = [];
process.once('exit', () => {
  for (const d of tmpDirs) fs.rmSync(d, { recursive: true, force: true });
});

/** A scratch directory, removed when the test process exits. */
export function tmpDir(): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-crm-'));
  tmpDirs.push(d);
  return d;
}

/** Writes a config file; `over` is merged over a jaffle-over-HTTP Pipedrive config. */
export function writeConfig(dir: string, sources: string, baseUrl: string, over: Record<string, unknown> = {}): string {
  const { destination, ...rest } = over;
  const doc = {
    name: 'jaffle',
    sources: { customers: `${sources}/raw_customers.csv`, orders: `${sources}/raw_orders.csv`, payments: `${sources}/raw_payments.csv` },
    value: { multiplier: 1, currency: 'USD' },
    ...rest,
    destination: {
      type: 'pipedrive', base_url: baseUrl, concurrency: 4, rate_limit: '10000/1s',
      retry: { max_attempts: 5, base_ms: 5, max_ms: 50 }, ...(destination as object | undefined),
    },
  };
  const file = path.join(dir, `crm-${Math.random().toString(36).slice(2)}.yaml`);
  fs.writeFileSync(file, stringify(doc));
  return file;
}

export interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs ./bin/sluice with `env` added; resolves when it exits. */
export function runCli(args: string[], env: Record<string, string>): Promise<CliResult> & { pid: number } {
  const child = spawn(path.join(repoRoot, 'bin/sluice'), args, { cwd: repoRoot, env: { ...process.env, ...env } });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => (stdout += d));
  child.stderr.on('data', (d) => (stderr += d));
  const done = new Promise<CliResult>((resolve) => child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr })));
  return Object.assign(done, { pid: child.pid as number });
}

/** Polls `check` until it is truthy or the deadline passes. */
export async function until<T>(check: () => T | Promise<T>, what: string, ms = 30_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setImmediate(r));
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * For in-process tests: the file's database and a simulator (reset before each test), the
 * token `${prefix}-token` in the environment, and `config()`: a pipeline on the local
 * jaffle files with a fresh name per call.
 */
export function inProcessCrm(prefix: string, defaults: Record<string, unknown> = {}) {
  let n = 0;
  const ctx = {
    db: undefined as unknown as TestDb,
    sim: new PipedriveSimulator(),
    apiUrl: '',
    config(destination: Record<string, unknown> = {}, name = `${prefix}${++n}`) {
      return validateCrmConfig({
        name,
        sources: { customers: `${JAFFLE}/raw_customers.csv`, orders: `${JAFFLE}/raw_orders.csv`, payments: `${JAFFLE}/raw_payments.csv` },
        destination: { base_url: ctx.apiUrl, concurrency: 4, rate_limit: '10000/1s', ...defaults, ...destination },
      });
    },
  };
  before(async () => {
    ctx.db = await testDb();
    ctx.apiUrl = await ctx.sim.listen();
    process.env.PIPEDRIVE_API_TOKEN = `${prefix}-token`;
  });
  beforeEach(() => ctx.sim.reset());
  after(async () => {
    await ctx.sim.close();
    await ctx.db.close();
  });
  return ctx;
}

/** Everything recorded about a pipeline's runs and sources (crm_runs, crm_sources), as text: what must hold no secret. */
export async function storedRunsText(pool: Pool, pipeline: string): Promise<string> {
  const runs = await pool.query(`SELECT row_to_json(r)::text AS t FROM crm_runs r WHERE pipeline = $1`, [pipeline]);
  const sources = await pool.query(`SELECT row_to_json(s)::text AS t FROM crm_sources s WHERE pipeline = $1`, [pipeline]);
  return [...runs.rows, ...sources.rows].map((r) => r.t).join('\n');
}

/** The body of GET /crm/runs?pipeline=... (asserted 200), from a server built on `pool`. */
export async function runsApiBody(pool: Pool, pipeline: string): Promise<string> {
  const app = await buildServer({ pool });
  try {
    const res = await app.inject({ method: 'GET', url: `/crm/runs?pipeline=${pipeline}` });
    assert.equal(res.statusCode, 200);
    return res.body;
  } finally {
    await app.close();
  }
}

/** SIGKILLs process `pid` once `sim` has answered its `n`th deal create (201). */
export function killAtDealCreate(sim: PipedriveSimulator, pid: number, n: number): Promise<void> {
  let dealCreates = 0;
  return new Promise<void>((resolve) => {
    const onRequest = (r: { route: string; status: number }) => {
      if (r.route === 'POST /v1/deals' && r.status === 201 && ++dealCreates === n) {
        process.kill(pid, 'SIGKILL');
        sim.off('request', onRequest);
        resolve();
      }
    };
    sim.on('request', onRequest);
  });
}
