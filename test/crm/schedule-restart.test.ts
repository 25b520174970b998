/**
 * The schedule across a restart (service.ts, firstRun): the first run is placed from the
 * pipeline's last recorded run, not from the moment the process started. Each case records
 * runs in crm_runs directly and reads the first run's time, and why, from the log line
 * "scheduled (...), first run at <iso> (<why>)", stopping the schedule before anything
 * runs; the last two let runs happen (a restart after a real run, a follow-up at start).
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import pg from 'pg';
import { validateCrmConfig, type CrmConfig } from '../../src/pipelines/crm/config.ts';
import { startSchedule } from '../../src/pipelines/crm/service.ts';
import type { RunOutcome } from '../../src/pipelines/crm/sync.ts';
import { testDb, type TestDb } from '../helpers/db.ts';
import { JAFFLE, until } from './helpers.ts';
import { tryLockPipeline, unlockPipeline } from '../../src/db/sql/crm.ts';

let db: TestDb;
before(async () => {
  db = await testDb();
});
after(async () => {
  await db.close();
});

const MIN = 60_000;
const HOUR = 60 * MIN;

let pipelines = 0;
/** A scheduled pipeline to the Postgres destination (a run takes a moment, sends nothing). */
function scheduled(schedule: Record<string, unknown>): CrmConfig {
  return validateCrmConfig({
    name: `restart${++pipelines}`,
    sources: { customers: `${JAFFLE}/raw_customers.csv`, orders: `${JAFFLE}/raw_orders.csv`, payments: `${JAFFLE}/raw_payments.csv` },
    schedule,
    destination: { type: 'postgres' },
  });
}

interface Recorded {
  id: number;
  started: number;
  /** finished_at (NaN when not set). */
  finished: number;
}

/** A run as a process would have left it: `status`, started and finished that long ago. */
async function recordRun(
  pipeline: string,
  r: { status: string; startedAgo: number; finishedAgo?: number; summary?: Record<string, unknown> },
): Promise<Recorded> {
  const now = Date.now();
  const { rows } = await db.pool.query<{ id: number; started_at: Date; finished_at: Date | null }>(
    `INSERT INTO crm_runs (pipeline, trigger, destination, status, config_hash, summary, started_at, finished_at)
     VALUES ($1, 'schedule', 'postgres', $2, 'test', $3, $4, $5) RETURNING id, started_at, finished_at`,
    [pipeline, r.status, JSON.stringify(r.summary ?? {}), new Date(now - r.startedAgo), r.finishedAgo === undefined ? null : new Date(now - r.finishedAgo)],
  );
  const row = rows[0] as { id: number; started_at: Date; finished_at: Date | null };
  return { id: row.id, started: row.started_at.getTime(), finished: row.finished_at?.getTime() ?? Number.NaN };
}

interface First {
  /** The announced time of the first run. */
  at: number;
  /** Why it is not the plain next slot ('' when it is). */
  why: string;
  /** The clock around startSchedule: a time computed from "now" lies between these. */
  before: number;
  after: number;
  lines: string[];
}

/**
 * Starts the schedule on `pool` and stops it at once (before any timer can fire: both
 * happen in the same turn of the event loop); returns the first run it announced.
 */
async function firstRun(config: CrmConfig, pool: pg.Pool = db.pool): Promise<First> {
  const lines: string[] = [];
  const before = Date.now();
  const service = await startSchedule(pool, config, { trigger: 'schedule', log: (l) => lines.push(l) });
  const after = Date.now();
  await service.stop();
  const line = lines.find((l) => l.includes(': scheduled ('));
  const m = /, first run at (\S+)(?: \((.*)\))?$/.exec(line ?? '');
  assert.ok(m, lines.join('\n'));
  const { rows } = await db.pool.query(`SELECT count(*)::int AS n FROM crm_runs WHERE pipeline = $1 AND trigger = 'schedule' AND config_hash <> 'test'`, [config.name]);
  assert.equal(rows[0].n, 0, 'nothing ran');
  return { at: Date.parse(m[1] as string), why: m[2] ?? '', before, after, lines };
}

const iso = (ms: number) => new Date(ms).toISOString();

/** `at` is "now" as the service saw it (between the clock readings around its start) + `plus`. */
function assertNow(f: First, plus = 0): void {
  assert.ok(f.at >= f.before + plus && f.at <= f.after + plus, `${iso(f.at)} is not now + ${plus} ms (${iso(f.before)} .. ${iso(f.after)})`);
}

/** A daily cron whose slot is `inMs` from now (UTC, whole minutes). */
function dailyCronIn(inMs: number): { cron: string; slot: number } {
  const d = new Date(Date.now() + inMs);
  d.setUTCSeconds(0, 0);
  return { cron: `${d.getUTCMinutes()} ${d.getUTCHours()} * * *`, slot: d.getTime() };
}

test('no run yet: as before, the next slot after now (an interval: now + interval)', async () => {
  const f = await firstRun(scheduled({ interval: '1h' }));
  assertNow(f, HOUR);
  assert.equal(f.why, '');
  const { cron, slot } = dailyCronIn(30 * MIN);
  const c = await firstRun(scheduled({ cron }));
  assert.equal(c.at, slot);
  assert.equal(c.why, '');
});

test('interval: one interval after the last run started, whatever its trigger; at once when that has passed', async () => {
  const config = scheduled({ interval: '1h' });
  const run = await recordRun(config.name, { status: 'completed', startedAgo: 10 * MIN, finishedAgo: 9 * MIN });
  const f = await firstRun(config);
  assert.equal(f.at, run.started + HOUR, 'the last start + 1h, not now + 1h');
  assert.equal(f.why, `one interval after run ${run.id} started at ${iso(run.started)}`);

  const late = scheduled({ interval: '1h' });
  const old = await recordRun(late.name, { status: 'skipped', startedAgo: 2 * HOUR, finishedAgo: 2 * HOUR });
  const g = await firstRun(late);
  assertNow(g);
  assert.equal(g.why, `the interval since run ${old.id} started at ${iso(old.started)} has passed`);

  // A run that outlived its interval: one interval after its end, as the live process arms it.
  const long = scheduled({ interval: '10m' });
  const l = await recordRun(long.name, { status: 'completed', startedAgo: 30 * MIN, finishedAgo: 5 * MIN });
  const h = await firstRun(long);
  assert.equal(h.at, l.finished + 10 * MIN);
  assert.equal(h.why, `one interval after run ${l.id} ended at ${iso(l.finished)}`);
});

test('cron: a slot missed while down is caught up once at start; none missed: the next slot', async () => {
  const { cron, slot } = dailyCronIn(30 * MIN);
  const missed = scheduled({ cron });
  // Two days down: two slots missed, one catch-up.
  const run = await recordRun(missed.name, { status: 'completed', startedAgo: 49 * HOUR, finishedAgo: 49 * HOUR });
  const f = await firstRun(missed);
  assertNow(f);
  assert.equal(f.why, `a slot was missed since run ${run.id} ended at ${iso(run.finished)}`);

  const kept = scheduled({ cron });
  await recordRun(kept.name, { status: 'completed', startedAgo: 10 * MIN, finishedAgo: 9 * MIN });
  const g = await firstRun(kept);
  assert.equal(g.at, slot);
  assert.equal(g.why, '');

  // A slot that came while the run was going is not caught up (the live process skips it too).
  const during = dailyCronIn(-20 * MIN);
  const spanned = scheduled({ cron: during.cron });
  await recordRun(spanned.name, { status: 'completed', startedAgo: 30 * MIN, finishedAgo: 10 * MIN });
  const h = await firstRun(spanned);
  assert.equal(h.at, during.slot + 24 * HOUR);
  assert.equal(h.why, '');
});

test('an unsuccessful last run is followed up at its end + retry_after, never later than the slot', async () => {
  // Failed: 5 min after its end, before the slot (its start + 1h).
  const failed = scheduled({ interval: '1h', retry_after: '5m' });
  const run = await recordRun(failed.name, { status: 'failed', startedAgo: 3 * MIN, finishedAgo: 2 * MIN });
  const f = await firstRun(failed);
  assert.equal(f.at, run.started + MIN + 5 * MIN, 'its end + 5 min');
  assert.equal(f.why, `follow-up of failed run ${run.id}, attempt 2`);

  // Its follow-up overdue: at once.
  const overdue = scheduled({ interval: '1h', retry_after: '5m' });
  const o = await recordRun(overdue.name, { status: 'failed', startedAgo: 31 * MIN, finishedAgo: 30 * MIN });
  const g = await firstRun(overdue);
  assertNow(g);
  assert.equal(g.why, `follow-up of failed run ${o.id}, attempt 2`);

  // Completed, leaving failed and unconfirmed records.
  const left = scheduled({ interval: '1h', retry_after: '5m' });
  const l = await recordRun(left.name, {
    status: 'completed', startedAgo: 3 * MIN, finishedAgo: 2 * MIN,
    summary: { persons: { failed: 1, unconfirmed: 0 }, deals: { failed: 0, unconfirmed: 2 } },
  });
  const h = await firstRun(left);
  assert.equal(h.at, l.started + 6 * MIN);
  assert.equal(h.why, `follow-up of run ${l.id}, which left 1 failed and 2 unconfirmed records, attempt 2`);

  // The slot first (retry_after 1h > the 10 min interval): the slot's run, counted as attempt 2.
  const capped = scheduled({ interval: '10m', retry_after: '1h' });
  const c = await recordRun(capped.name, { status: 'failed', startedAgo: 2 * MIN, finishedAgo: MIN });
  const i = await firstRun(capped);
  assert.equal(i.at, c.started + 10 * MIN);
  assert.equal(i.why, `one interval after run ${c.id} started at ${iso(c.started)}; attempt 2 after failed run ${c.id}: the slot comes no later than its follow-up`);

  // retry_after off: the slot.
  const off = scheduled({ interval: '1h', retry_after: 'off' });
  const n = await recordRun(off.name, { status: 'failed', startedAgo: 3 * MIN, finishedAgo: 2 * MIN });
  const j = await firstRun(off);
  assert.equal(j.at, n.started + HOUR);
  assert.equal(j.why, `one interval after run ${n.id} started at ${iso(n.started)}; attempt 2 after failed run ${n.id}: retry_after is off, so the slot`);

  // A cron slot missed and the run failed: one catch-up at once, which is the slot's run.
  const { cron } = dailyCronIn(30 * MIN);
  const both = scheduled({ cron, retry_after: '5m' });
  const b = await recordRun(both.name, { status: 'failed', startedAgo: 25 * HOUR, finishedAgo: 25 * HOUR });
  const k = await firstRun(both);
  assertNow(k);
  assert.equal(k.why, `a slot was missed since run ${b.id} ended at ${iso(b.finished)}; attempt 2 after failed run ${b.id}: the slot comes no later than its follow-up`);
});

test('a run left running by a dead process is unsuccessful, ended at its last progress (or start); one running in another process is not', async () => {
  const progressed = scheduled({ interval: '1h', retry_after: '5m' });
  // Its last progress (duration_ms) 1 min after its start, 3 min ago.
  const p = await recordRun(progressed.name, { status: 'running', startedAgo: 4 * MIN, summary: { requests: 12, duration_ms: MIN } });
  const f = await firstRun(progressed);
  assert.equal(f.at, p.started + MIN + 5 * MIN, 'its last progress + 5 min');
  assert.equal(f.why, `follow-up of run ${p.id}, left running by a process that stopped, attempt 2`);

  const silent = scheduled({ interval: '1h', retry_after: '5m' });
  const s = await recordRun(silent.name, { status: 'running', startedAgo: 2 * MIN });
  const g = await firstRun(silent);
  assert.equal(g.at, s.started + 5 * MIN, 'no progress written: its start + 5 min');

  // The pipeline's lock held (a run of `sluice sync crm --once` in progress): not a dead run.
  const alive = scheduled({ interval: '1h', retry_after: '5m' });
  const a = await recordRun(alive.name, { status: 'running', startedAgo: 2 * MIN });
  const holder = await db.pool.connect();
  try {
    assert.equal(await tryLockPipeline(holder, alive.name), true);
    const h = await firstRun(alive);
    assert.equal(h.at, a.started + HOUR, 'the slot, no follow-up');
    assert.equal(h.why, `one interval after run ${a.id} started at ${iso(a.started)}`);
  } finally {
    await unlockPipeline(holder, alive.name);
    holder.release();
  }
});

test('unsuccessful runs in a row (a crash loop) back off as a live process would: attempt N, retry_after x 2^(N-2)', async () => {
  const loop = scheduled({ interval: '24h', retry_after: '5m' });
  // Three failed runs in a row, the last ended 1 min ago (a clean one before them).
  await recordRun(loop.name, { status: 'completed', startedAgo: 60 * MIN, finishedAgo: 59 * MIN });
  for (const ago of [30, 20]) await recordRun(loop.name, { status: 'failed', startedAgo: ago * MIN, finishedAgo: ago * MIN - 1000 });
  const last = await recordRun(loop.name, { status: 'failed', startedAgo: 2 * MIN, finishedAgo: MIN });
  const f = await firstRun(loop);
  assert.equal(f.at, last.finished + 4 * 5 * MIN, 'its end + 5 min x 2^2');
  assert.equal(f.why, `follow-up of failed run ${last.id}, attempt 4`);
});

test('a run left running by a dead process holds the next run back by retry_after (for Pipedrive, at least its request timeout), even when a slot was missed', async () => {
  // A daily cron slot passed 1 min ago, after the dead run's last progress (2 min ago):
  // the catch-up waits for what the dead process may still have had in flight.
  const { cron } = dailyCronIn(-MIN);
  const guarded = scheduled({ cron, retry_after: '5m' });
  const d = await recordRun(guarded.name, { status: 'running', startedAgo: 3 * MIN, summary: { requests: 40, duration_ms: MIN } });
  const f = await firstRun(guarded);
  const ended = d.started + MIN;
  assert.equal(f.at, ended + 5 * MIN, 'its last progress + 5 min, not at once');
  assert.equal(
    f.why,
    `a slot was missed since run ${d.id} ended at ${iso(ended)}; attempt 2 after run ${d.id}, left running by a process that stopped: ` +
      `the slot comes no later than its follow-up, not before ${iso(ended + 5 * MIN)}: what it sent may still be applied`,
  );
});

test('the database out of reach at start: logged, and the first run is the next slot after now', async () => {
  // Nothing listens on port 1: connection refused at once.
  const down = new pg.Pool({ connectionString: 'postgres://sluice@127.0.0.1:1/sluice', connectionTimeoutMillis: 2000 });
  try {
    const config = scheduled({ interval: '1h' });
    await recordRun(config.name, { status: 'failed', startedAgo: 3 * MIN, finishedAgo: 2 * MIN }); // not seen
    const f = await firstRun(config, down);
    assertNow(f, HOUR);
    assert.equal(f.why, '');
    assert.match(f.lines[0] ?? '', new RegExp(`^crm sync ${config.name}: could not read the last run \\(.*ECONNREFUSED.*\\); the first run is the next slot after now$`));
  } finally {
    await down.end();
  }
});

/** Starts the schedule, recording its runs and log lines. */
async function watch(config: CrmConfig) {
  const runs: RunOutcome[] = [];
  const lines: string[] = [];
  const startedAt = Date.now();
  const service = await startSchedule(db.pool, config, { trigger: 'schedule', log: (l) => lines.push(l), onRun: (o) => runs.push(o) });
  const first = Date.parse(/, first run at (\S+)/.exec(lines.find((l) => l.includes(': scheduled (')) ?? '')?.[1] ?? '');
  return { service, runs, lines, first, startedAt, run: (n: number) => until(() => runs[n - 1], `run ${n} of ${config.name}`) };
}

async function started(runId: number): Promise<number> {
  const { rows } = await db.pool.query<{ started_at: Date }>('SELECT started_at FROM crm_runs WHERE id = $1', [runId]);
  return (rows[0] as { started_at: Date }).started_at.getTime();
}

test('restarted after a run: the next run comes at that run’s start + interval, not the restart’s', async () => {
  const config = scheduled({ interval: '2s' });
  const one = await watch(config);
  const r1 = await one.run(1);
  assert.equal(r1.status, 'completed');
  await one.service.stop();
  const s1 = await started(r1.runId);
  const { rows } = await db.pool.query<{ finished_at: Date }>('SELECT finished_at FROM crm_runs WHERE id = $1', [r1.runId]);
  // A run that outlived its 2 s interval (a loaded machine) counts from its end, as live.
  const finished = rows[0]!.finished_at.getTime();
  const from = finished - 2000 >= s1 ? finished : s1;

  const two = await watch(config); // the restart
  assert.equal(two.first, from + 2000, `${two.lines[0]}: run ${r1.runId} started at ${iso(s1)}`);
  assert.ok(two.first < two.startedAt + 2000, 'sooner than a full interval after the restart');
  try {
    const r2 = await two.run(1);
    assert.equal(r2.status, 'skipped', 'nothing changed since run 1');
    assert.ok((await started(r2.runId)) >= two.first, 'not before its time');
  } finally {
    await two.service.stop();
  }
});

test('a follow-up due at start is an ordinary retry: labelled attempt 2, then back to the slots', async () => {
  const config = scheduled({ interval: '1h', retry_after: '5m' });
  const failed = await recordRun(config.name, { status: 'failed', startedAgo: 20 * MIN, finishedAgo: 19 * MIN });
  const w = await watch(config);
  try {
    assert.ok(w.first <= Date.now(), 'due at once');
    const r = await w.run(1);
    assert.equal(r.status, 'completed');
    assert.ok(w.lines.some((l) => l.startsWith(`crm sync ${config.name}: run ${r.runId} completed (retry, attempt 2) (`)), w.lines.join('\n'));
    // The slots stay where the failed run put them: its start + 1h.
    assert.ok(w.lines.includes(`crm sync ${config.name}: clean after 1 unsuccessful run, next run at the slot ${iso(failed.started + HOUR)}`), w.lines.join('\n'));
  } finally {
    await w.service.stop();
  }
});
