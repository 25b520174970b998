/**
 * Every request that may have reached Pipedrive is in crm_runs.requests, a killed run's
 * too: the run counts each request into Postgres before it is sent (RequestReservation in
 * sync.ts, a block ahead), so the daily budget, which sums that column, holds across a
 * crash; a run that ends settles the column to its real count. (The Pipedrive client calls
 * the run's hook, `beforeSend`, before each attempt. Before, progress was written at most
 * once a second and a killed run lost up to a second of requests: a review measured a
 * budget of 120 overrun to 124.)
 */
import assert from 'node:assert/strict';
import { after, before, beforeEach, test } from 'node:test';
import { PipedriveSimulator } from '../../src/dev/pipedrive-simulator.ts';
import { validateCrmConfig } from '../../src/pipelines/crm/config.ts';
import { CrmRunError, RESERVE_BLOCK, runCrmSync } from '../../src/pipelines/crm/sync.ts';
import { testDb, type TestDb } from '../helpers/db.ts';
import { FileServer, JAFFLE, killAtDealCreate, runCli, tmpDir, until, writeConfig } from './helpers.ts';

let db: TestDb;
let sim: PipedriveSimulator;
let files: FileServer;
let apiUrl: string;
const TOKEN = 'count-token';
/** writeConfig's concurrency: requests that may have reserved and still wait to go. */
const CONCURRENCY = 4;

before(async () => {
  db = await testDb();
  // A real API answers in tens of milliseconds: the kill lands mid-run.
  sim = new PipedriveSimulator({ token: TOKEN, latencyMs: 15 });
  apiUrl = await sim.listen();
  files = new FileServer();
  await files.start();
  process.env.PIPEDRIVE_API_TOKEN = TOKEN;
});
beforeEach(() => sim.reset());
after(async () => {
  await sim.close();
  await files.close();
  await db.close();
});

/** crm_runs of `pipeline`, oldest first. */
async function runs(pipeline: string): Promise<Array<{ status: string; requests: number; error: string | null }>> {
  const { rows } = await db.pool.query('SELECT status, requests, error FROM crm_runs WHERE pipeline = $1 ORDER BY id', [pipeline]);
  return rows;
}

test('kill -9 mid-run: crm_runs counts every request the CRM received, and the re-run keeps within the daily budget', async () => {
  // A whole sync takes 205 requests; the kill comes after ~146, so the re-run runs out.
  const BUDGET = 180;
  const config = writeConfig(tmpDir(), files.url, apiUrl, { name: 'killed', destination: { daily_request_budget: BUDGET } });
  const env = { DATABASE_URL: db.url, PIPEDRIVE_API_TOKEN: TOKEN };
  const child = runCli(['sync', 'crm', '--once', '--json', '--config', config], env);
  await killAtDealCreate(sim, child.pid, 40);
  assert.equal((await child).signal, 'SIGKILL');
  await sim.idle(); // what the dead process had sent has arrived (or never will)
  const received = sim.stats.requests;
  const [killed] = await runs('killed');
  assert.equal(killed?.status, 'running');
  const recorded = killed?.requests ?? 0;
  assert.ok(recorded >= received, `recorded ${recorded} requests, the CRM received ${received}`);
  // Counted ahead by at most a block, plus the requests that had reserved and waited to go.
  assert.ok(recorded <= received + RESERVE_BLOCK + CONCURRENCY, `recorded ${recorded}, received ${received}: counted too far ahead`);

  // The re-run gets what is left of the budget by that count: the CRM never receives more.
  const again = await runCli(['sync', 'crm', '--once', '--json', '--config', config], env);
  assert.equal(again.code, 1, again.stderr);
  assert.match(JSON.parse(again.stdout.trim()).error, /daily request budget/);
  assert.ok(sim.stats.requests <= BUDGET, `the CRM received ${sim.stats.requests} requests in a day, budget ${BUDGET}`);
  const [dead, rerun] = await runs('killed');
  assert.match(dead?.error ?? '', /interrupted/);
  assert.equal(dead?.requests, recorded, 'the dead run keeps its count');
  assert.equal(rerun?.requests, sim.stats.requests - received, 'the re-run, which ended, is settled to what it sent');
});

test('while a run goes, crm_runs.requests is never behind the requests the CRM has received', async () => {
  const config = validateCrmConfig({
    name: 'watched',
    sources: { customers: `${JAFFLE}/raw_customers.csv`, orders: `${JAFFLE}/raw_orders.csv`, payments: `${JAFFLE}/raw_payments.csv` },
    destination: { base_url: apiUrl, concurrency: CONCURRENCY, rate_limit: '10000/1s' },
  });
  // At each request the CRM receives: its count then, and the column read after it. A
  // request is counted in Postgres before it is sent, so before the CRM counts it.
  const checks: Array<Promise<{ received: number; recorded: number }>> = [];
  const onRequest = () => {
    const received = sim.stats.requests;
    checks.push(
      db.pool
        .query<{ requests: number }>(`SELECT requests FROM crm_runs WHERE pipeline = 'watched' AND status = 'running'`)
        .then((r) => ({ received, recorded: r.rows[0]?.requests ?? Infinity })), // ended meanwhile: settled, checked below
    );
  };
  sim.on('request', onRequest);
  try {
    const o = await runCrmSync(db.pool, config, { trigger: 'cli' });
    assert.equal(o.status, 'completed');
    assert.equal(o.summary.requests, 205);
  } finally {
    sim.off('request', onRequest);
  }
  const seen = await Promise.all(checks);
  assert.equal(seen.length, 205);
  for (const c of seen) assert.ok(c.recorded >= c.received, `the CRM had received ${c.received} requests, crm_runs said ${c.recorded}`);
  const [run] = await runs('watched');
  assert.equal(run?.requests, 205, 'settled to the real count at the end, no reservation left over');
});

test('a run stopped mid-flight records the requests it sent, settled (no reservation left over)', async () => {
  const config = validateCrmConfig({
    name: 'aborted',
    sources: { customers: `${JAFFLE}/raw_customers.csv`, orders: `${JAFFLE}/raw_orders.csv`, payments: `${JAFFLE}/raw_payments.csv` },
    destination: { base_url: apiUrl, concurrency: CONCURRENCY, rate_limit: '10000/1s' },
  });
  const controller = new AbortController();
  let personCreates = 0;
  let handled = 0;
  const onRequest = (r: { route: string }) => {
    handled++;
    if (r.route === 'POST /v1/persons' && ++personCreates === 30) controller.abort(new Error('stopped mid-flight'));
  };
  sim.on('request', onRequest);
  let counted = -1;
  try {
    await assert.rejects(runCrmSync(db.pool, config, { trigger: 'cli', signal: controller.signal }), (err: CrmRunError) => {
      counted = err.outcome.summary.requests;
      return /stopped mid-flight/.test(err.message);
    });
    // Every request that reached the simulator handled (its keep-alive connections stay open).
    await until(() => handled === sim.stats.requests, 'the simulator done with what it received');
  } finally {
    sim.off('request', onRequest);
  }
  const [run] = await runs('aborted');
  assert.equal(run?.status, 'failed');
  assert.ok(sim.stats.requests < 205, 'stopped before the end');
  // The client's own count (requests cut on their way included), not what was reserved ahead.
  assert.equal(run?.requests, counted);
  assert.ok(counted >= sim.stats.requests && counted <= sim.stats.requests + CONCURRENCY, `recorded ${counted}, the CRM received ${sim.stats.requests}`);
});

test('a run failed from outside while it goes (it lost its lock, another process took it for dead) stops sending at its next reservation, and keeps that outcome', async () => {
  const config = validateCrmConfig({
    name: 'taken-over',
    sources: { customers: `${JAFFLE}/raw_customers.csv`, orders: `${JAFFLE}/raw_orders.csv`, payments: `${JAFFLE}/raw_payments.csv` },
    destination: { base_url: apiUrl, concurrency: CONCURRENCY, rate_limit: '10000/1s' },
  });
  let personCreates = 0;
  let marked: Promise<unknown> | undefined;
  let receivedWhenMarked = 0;
  const onRequest = (r: { route: string }) => {
    if (r.route === 'POST /v1/persons' && ++personCreates === 30) {
      receivedWhenMarked = sim.stats.requests;
      // What failInterruptedRuns does to a run whose lock it could take.
      marked = db.pool.query(`UPDATE crm_runs SET status = 'failed', error = 'interrupted (test)' WHERE pipeline = 'taken-over' AND status = 'running'`);
    }
  };
  sim.on('request', onRequest);
  try {
    await assert.rejects(runCrmSync(db.pool, config, { trigger: 'cli' }), (err: CrmRunError) => /no longer recorded as running/.test(err.message));
  } finally {
    sim.off('request', onRequest);
  }
  await marked;
  const [run] = await runs('taken-over');
  assert.equal(run?.status, 'failed');
  assert.equal(run?.error, 'interrupted (test)', 'the outcome recorded by the other process is kept');
  // At most what it had reserved (a block ahead) plus the attempts already past their reservation.
  assert.ok(sim.stats.requests <= receivedWhenMarked + RESERVE_BLOCK + CONCURRENCY, `${sim.stats.requests} received, ${receivedWhenMarked} when it was failed`);
});
