/**
 * The scheduled sync inside `sluice serve`: enabled by SLUICE_CRM_CONFIG, recorded runs;
 * and the follow-up of unsuccessful runs (schedule.retry_after): sooner than the next slot,
 * with backoff, capped by the slot, back to the slots after a clean run, nothing after stop().
 * Timing is observed through onRun and the service's log lines ("retrying at <iso>").
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, beforeEach, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { stringify } from 'yaml';
import { PipedriveSimulator } from '../../src/dev/pipedrive-simulator.ts';
import { buildServer } from '../../src/http/server.ts';
import { DEFAULT_RETRY_AFTER_MS, validateCrmConfig, type CrmConfig } from '../../src/pipelines/crm/config.ts';
import { crmSyncService, startSchedule } from '../../src/pipelines/crm/service.ts';
import type { RunOutcome } from '../../src/pipelines/crm/sync.ts';
import { testDb, type TestDb } from '../helpers/db.ts';
import { FileServer, JAFFLE, expectedJaffle, tmpDir, until } from './helpers.ts';

let db: TestDb;
const sim = new PipedriveSimulator();
let apiUrl = '';
before(async () => {
  db = await testDb();
  apiUrl = await sim.listen();
  process.env.PIPEDRIVE_API_TOKEN = 'service-token';
});
beforeEach(() => sim.reset());
after(async () => {
  delete process.env.SLUICE_CRM_CONFIG;
  await sim.close();
  await db.close();
});

test('disabled without SLUICE_CRM_CONFIG', async () => {
  delete process.env.SLUICE_CRM_CONFIG;
  const app = await buildServer({ pool: db.pool });
  assert.equal(await crmSyncService.start({ pool: db.pool }, app), undefined);
  await app.close();
});

test('runs on its interval, records each run, and GET /crm/runs shows them', async () => {
  const file = path.join(tmpDir(), 'crm.yaml');
  fs.writeFileSync(file, stringify({
    name: 'scheduled',
    sources: { customers: `${JAFFLE}/raw_customers.csv`, orders: `${JAFFLE}/raw_orders.csv`, payments: `${JAFFLE}/raw_payments.csv` },
    schedule: { interval: '200ms' },
    destination: { type: 'postgres' },
  }));
  process.env.SLUICE_CRM_CONFIG = file;
  const app = await buildServer({ pool: db.pool });
  const service = await crmSyncService.start({ pool: db.pool }, app);
  assert.ok(service);
  try {
    // The first run does the work; the next ones find nothing changed.
    await until(async () => {
      const { rows } = await db.pool.query(`SELECT status FROM crm_runs WHERE pipeline = 'scheduled' AND status <> 'running' ORDER BY id`);
      return rows.length >= 2 && rows[0].status === 'completed' && rows[1].status === 'skipped';
    }, 'two scheduled runs');
  } finally {
    await service.stop();
  }
  const res = await app.inject({ method: 'GET', url: '/crm/runs?pipeline=scheduled' });
  const { runs } = res.json() as { runs: Array<{ trigger: string; status: string; summary: { deals: { created: number } } }> };
  assert.ok(runs.length >= 2);
  assert.ok(runs.every((r) => r.trigger === 'schedule'));
  const first = runs.at(-1);
  assert.equal(first?.status, 'completed');
  assert.equal(first?.summary.deals.created, 99);
  const failures = await app.inject({ method: 'GET', url: '/crm/runs/1/failures' });
  assert.equal(failures.statusCode, 200);
  await app.close();
});

// ---- follow-up of unsuccessful runs (schedule.retry_after) ----

/** The CRM refuses every request with a Retry-After of a day: the run ends at once, failed. */
const CRM_DOWN = { status: 429, count: -1, retryAfter: 86_400 };

let pipelines = 0;
/** A scheduled Pipedrive pipeline against the simulator, on the jaffle files or `sources`. */
function scheduled(schedule: Record<string, unknown>, sources = JAFFLE): CrmConfig {
  return validateCrmConfig({
    name: `retry${++pipelines}`,
    sources: { customers: `${sources}/raw_customers.csv`, orders: `${sources}/raw_orders.csv`, payments: `${sources}/raw_payments.csv` },
    schedule,
    destination: { base_url: apiUrl, concurrency: 4, rate_limit: '10000/1s', retry: { max_attempts: 3, base_ms: 5, max_ms: 20 } },
  });
}

interface Armed {
  /** When the line was logged, and the time it announces. */
  loggedAt: number;
  at: number;
  attempt: number;
  /** Capped: the next run is the regular slot's. */
  slot: boolean;
  text: string;
}

/** Starts the schedule with its runs (onRun) and log lines recorded; `onRun` sees run n. */
async function watch(config: CrmConfig, onRun?: (o: RunOutcome, n: number) => void) {
  const runs: RunOutcome[] = [];
  const lines: Array<{ loggedAt: number; text: string }> = [];
  const service = await startSchedule(db.pool, config, {
    trigger: 'schedule',
    log: (text) => lines.push({ loggedAt: Date.now(), text }),
    onRun(o) {
      runs.push(o);
      onRun?.(o, runs.length);
    },
  });
  const first = /, first run at (\S+)(?: \(.*\))?$/.exec(lines[0]?.text ?? '')?.[1];
  assert.ok(first, lines[0]?.text);
  return {
    name: config.name,
    service,
    runs,
    lines,
    /** The first regular slot. */
    slot1: Date.parse(first),
    /** Resolves with the n-th run's outcome (1-based), as onRun reports it. */
    run: (n: number) => until(() => runs[n - 1], `run ${n} of ${config.name}`),
    /** The follow-ups announced so far ("..., retrying at <iso> (attempt n)"). */
    armed(): Armed[] {
      return lines.flatMap(({ loggedAt, text }) => {
        const m = /, retrying at (the next slot )?(\S+) \(attempt (\d+)\)$/.exec(text);
        return m ? [{ loggedAt, at: Date.parse(m[2] as string), attempt: Number(m[3]), slot: m[1] !== undefined, text }] : [];
      });
    },
  };
}

/** When the run was recorded as started (crm_runs.started_at), and its trigger. */
async function startedAt(runId: number): Promise<{ started: number; trigger: string }> {
  const { rows } = await db.pool.query('SELECT started_at, trigger FROM crm_runs WHERE id = $1', [runId]);
  return { started: (rows[0].started_at as Date).getTime(), trigger: rows[0].trigger };
}

/**
 * Between the service reading its clock and the test recording its log line: a few ms, but a
 * process of a loaded machine may be off its core for a few hundred (a run at load 9 on 2
 * cores missed a 50 ms slack). Far below the intervals (3 s) and follow-ups (1 h) told apart.
 */
const CLOCK_SLACK_MS = 400;

/**
 * `at` is the next slot after `loggedAt` (a few ms of slack: the service reads its clock
 * before the log line is recorded): a regular one (slot1 + k intervals, k >= 1), or, when a
 * run outlived its slot (a loaded machine), one interval after the run's end, as docs/crm.md
 * says (the grid then moves: CI failed here on a loaded run). Returns k, not a whole number
 * once the grid moved, but growing with every later slot.
 */
function assertNextSlot(at: number | undefined, loggedAt: number, slot1: number, intervalMs: number, what: string): number {
  assert.ok(at !== undefined && Number.isFinite(at), `${what}: no time`);
  const k = (at - slot1) / intervalMs;
  const afterRun = Math.abs(at - loggedAt - intervalMs) <= CLOCK_SLACK_MS;
  assert.ok((Number.isInteger(k) || afterRun) && k >= 1, `${what}: ${new Date(at).toISOString()} is neither a slot nor one interval after the run`);
  assert.ok(
    at > loggedAt - CLOCK_SLACK_MS && at - intervalMs <= loggedAt + CLOCK_SLACK_MS,
    `${what}: ${new Date(at).toISOString()} is not the next slot after ${new Date(loggedAt).toISOString()}`,
  );
  return k;
}

/** `at - loggedAt` is the delay the service chose, less the moments between its clock and the log. */
function assertDelay(a: Armed | undefined, ms: number): void {
  assert.ok(a, 'a follow-up was announced');
  const d = a.at - a.loggedAt;
  assert.ok(d <= ms && d >= ms - 50, `${a.text}: delay ${d} ms, expected ${ms}`);
}

test('schedule.retry_after: 5 min by default, a duration, or off', () => {
  const sources = { customers: 'c.csv', orders: 'o.csv', payments: 'p.csv' };
  assert.equal(DEFAULT_RETRY_AFTER_MS, 300_000);
  assert.equal(validateCrmConfig({ sources, schedule: { cron: '0 3 * * *' } }).schedule?.retryAfterMs, 300_000);
  assert.equal(validateCrmConfig({ sources, schedule: { interval: '24h', retry_after: '90s' } }).schedule?.retryAfterMs, 90_000);
  assert.equal(validateCrmConfig({ sources, schedule: { interval: '24h', retry_after: 'off' } }).schedule?.retryAfterMs, undefined);
  assert.equal(validateCrmConfig({ sources, schedule: { interval: '24h', retry_after: false } }).schedule?.retryAfterMs, undefined);
  for (const bad of ['soon', '0s', 300, true]) {
    assert.throws(
      () => validateCrmConfig({ sources, schedule: { cron: '0 3 * * *', retry_after: bad } }),
      /schedule.retry_after: expected a duration like "5m" or "1h30m", or off, got /,
      String(bad),
    );
  }
});

test('(1) a failed run is retried after retry_after; the retry completes once the CRM is back', async () => {
  sim.addFault(CRM_DOWN);
  const w = await watch(scheduled({ interval: '3s', retry_after: '200ms' }), (_o, n) => {
    if (n === 1) sim.clearFaults(); // the CRM is back before the retry
  });
  try {
    const first = await w.run(1);
    assert.equal(first.status, 'failed');
    assert.match(first.error ?? '', /rate limited until/);
    const [retry] = w.armed();
    assert.equal(retry?.text, `crm sync ${w.name}: run ${first.runId} failed, retrying at ${new Date(retry?.at ?? 0).toISOString()} (attempt 2)`);
    assert.equal(retry?.slot, false);
    assertDelay(retry, 200);

    const second = await w.run(2);
    assert.equal(second.status, 'completed');
    assert.deepEqual(second.summary.deals, { created: 99, updated: 0, unchanged: 0, failed: 0, unconfirmed: 0 });
    const run = await startedAt(second.runId);
    assert.equal(run.trigger, 'schedule', 'a retry is an ordinary scheduled run');
    assert.ok(run.started >= (retry?.at ?? Infinity), 'not before the announced time');
    assert.ok(run.started < w.slot1 + 3000, 'well before the next slot');
    assert.ok(w.lines.some((l) => l.text.startsWith(`crm sync ${w.name}: run ${second.runId} completed (retry, attempt 2) (deals 99 created`)));
    assert.equal(w.armed().length, 1, 'a clean run arms no retry');
  } finally {
    await w.service.stop();
  }
});

test('(2) the follow-up backs off exponentially across consecutive unsuccessful runs', async () => {
  sim.addFault(CRM_DOWN);
  const w = await watch(scheduled({ interval: '4s', retry_after: '100ms' }));
  try {
    const outcomes = [];
    for (let n = 1; n <= 4; n++) outcomes.push(await w.run(n));
    assert.deepEqual(outcomes.map((o) => o.status), ['failed', 'failed', 'failed', 'failed']);
    await until(() => w.armed().length >= 4, 'the fourth follow-up');
    const armed = w.armed();
    assert.deepEqual(armed.map((a) => a.attempt), [2, 3, 4, 5]);
    assert.deepEqual(armed.map((a) => a.slot), [false, false, false, false]);
    [100, 200, 400, 800].forEach((ms, i) => assertDelay(armed[i], ms));
    for (let i = 1; i < 4; i++) {
      const run = await startedAt(outcomes[i]?.runId ?? 0);
      assert.ok(run.started >= (armed[i - 1]?.at ?? Infinity), `retry ${i} not before its time`);
      assert.ok(run.started < w.slot1 + 4000, `retry ${i} before the next slot`);
    }
  } finally {
    await w.service.stop();
  }
});

test('(3) the follow-up is never later than the next slot: unconfirmed records, retry_after 1h', async () => {
  const title = [...expectedJaffle().deals.values()][0]?.title;
  // Every create of these deals is answered 504 and never applied: unconfirmed, run after run.
  sim.addFault({ status: 504, count: -1, method: 'POST', path: '/v1/deals', match: { title } });
  const w = await watch(scheduled({ interval: '3s', retry_after: '1h' }));
  try {
    const first = await w.run(1);
    assert.equal(first.status, 'completed');
    const unconfirmed = first.summary.deals.unconfirmed;
    assert.ok(unconfirmed >= 1);
    await until(() => w.armed().length >= 1, 'the first follow-up');
    const [capped] = w.armed();
    assert.equal(capped?.slot, true);
    assert.equal(capped?.attempt, 2);
    const k1 = assertNextSlot(capped?.at, capped!.loggedAt, w.slot1, 3000, 'the next slot, not an hour later');
    assert.match(capped?.text ?? '', new RegExp(`: run ${first.runId} left ${unconfirmed} unconfirmed records?, retrying at the next slot `));

    const second = await w.run(2);
    assert.equal(second.summary.deals.unconfirmed, unconfirmed, 'still unconfirmed (the fault stays)');
    assert.ok((await startedAt(second.runId)).started >= w.slot1 + 3000, 'ran at the slot');
    await until(() => w.armed().length >= 2, 'the second follow-up');
    assert.equal(w.armed()[1]?.attempt, 3);
    const k2 = assertNextSlot(w.armed()[1]?.at, w.armed()[1]!.loggedAt, w.slot1, 3000, 'the slot after');
    assert.ok(k2 > k1, 'a later slot than the first follow-up');
  } finally {
    await w.service.stop();
  }
});

test('(4) a clean run goes back to the slots, and the next unsuccessful run starts the backoff over', async () => {
  const files = new FileServer();
  const url = await files.start();
  const orders = files.text('raw_orders.csv');
  sim.addFault(CRM_DOWN);
  const w = await watch(scheduled({ interval: '3s', retry_after: '200ms' }, url), (_o, n) => {
    if (n === 2) sim.clearFaults(); // down for the first run and its first retry
    if (n === 3) {
      // A changed source, and the CRM down again: the run at the next slot has work and fails.
      sim.addFault(CRM_DOWN);
      files.set('raw_orders.csv', files.text('raw_orders.csv').replace(/,placed(\r?\n)/, ',shipped$1'));
    }
  });
  try {
    assert.equal((await w.run(1)).status, 'failed');
    assert.equal((await w.run(2)).status, 'failed');
    const third = await w.run(3);
    assert.equal(third.status, 'completed');
    assert.deepEqual(w.armed().map((a) => a.attempt), [2, 3]);
    assertDelay(w.armed()[1], 400);
    const back = w.lines.find((l) => l.text.includes(', next run at the slot '));
    assert.match(back?.text ?? '', / clean after 2 unsuccessful runs, next run at the slot /);
    assertNextSlot(Date.parse(/at the slot (\S+)$/.exec(back?.text ?? '')?.[1] ?? ''), back!.loggedAt, w.slot1, 3000, 'back to the slots');

    assert.notEqual(files.text('raw_orders.csv'), orders, 'an order changed');
    const fourth = await w.run(4);
    assert.equal(fourth.status, 'failed');
    const run = await startedAt(fourth.runId);
    assert.ok(run.started >= w.slot1 + 3000, 'the regular slot, not a retry');
    // Run 4 is a regular run: only the retry (run 2) and the run after it (3) are labelled.
    const labels = w.lines.filter((l) => / rate limited until | completed /.test(l.text)).map((l) => /\((retry, )?attempt \d+\)/.exec(l.text)?.[0] ?? '-');
    assert.deepEqual(labels, ['-', '(retry, attempt 2)', '(retry, attempt 3)', '-']);
    await until(() => w.armed().length >= 3, 'the follow-up of run 4');
    const again = w.armed()[2];
    assert.equal(again?.attempt, 2, 'attempts count again from the clean run');
    assertDelay(again, 200);
  } finally {
    await w.service.stop();
    await files.close();
  }
});

test('(5) stop() during the wait for a follow-up, or during a run, arms nothing', async () => {
  sim.addFault(CRM_DOWN);
  const w = await watch(scheduled({ interval: '1s', retry_after: '300ms' }));
  const first = await w.run(1);
  assert.equal(first.status, 'failed');
  const [retry] = w.armed();
  assert.ok(retry && retry.at > Date.now(), 'stopping while the follow-up waits');
  await w.service.stop();
  const logged = w.lines.length;
  // The one wait that cannot be an event: past the follow-up's time and the next slot
  // (under a second), nothing ran and nothing was logged.
  await sleep(Math.max(0, Math.max(retry.at, w.slot1 + 1000) + 200 - Date.now()));
  assert.equal(w.runs.length, 1);
  assert.equal(w.lines.length, logged);
  const { rows } = await db.pool.query('SELECT count(*)::int AS n FROM crm_runs WHERE pipeline = $1', [w.name]);
  assert.equal(rows[0].n, 1);

  // A run that waits out a 429 (60 s) is aborted by stop(): recorded failed, no follow-up.
  sim.clearFaults();
  sim.addFault({ status: 429, count: 1, retryAfter: 60 });
  const faults = sim.stats.faults;
  const v = await watch(scheduled({ interval: '1s', retry_after: '100ms' }));
  await until(() => sim.stats.faults > faults, 'the run waiting out a 429');
  await v.service.stop();
  const aborted = v.runs[0];
  assert.equal(aborted?.status, 'failed');
  assert.match(aborted?.error ?? '', /stopped: the server is shutting down/);
  assert.deepEqual(v.armed(), [], 'no follow-up announced');
  const lines = v.lines.length;
  await sleep(Math.max(0, v.slot1 + 1000 + 200 - Date.now())); // past a follow-up's time and the next slot
  assert.equal(v.runs.length, 1);
  assert.equal(v.lines.length, lines);
});
