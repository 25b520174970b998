/**
 * The scheduled CRM sync: inside `sluice serve` (enabled by SLUICE_CRM_CONFIG) and in the
 * foreground by `sluice sync crm` without `--once`. One run at a time; a run that outlives
 * its slot pushes the next one to the following slot (never two at once, never a burst of
 * catch-up runs). A run that fails, or leaves failed or unconfirmed records, is followed
 * by an ordinary run sooner than the next slot: `schedule.retry_after` after it ends,
 * doubled per consecutive unsuccessful run, never later than the next slot; a clean run
 * goes back to the slots. Stopping aborts the run in progress, which is then recorded as
 * failed, and arms nothing. The schedule survives a restart: its first run is placed from
 * the pipeline's last recorded run (firstRun), not from the moment the process started.
 */
import { env } from '../../config.ts';
import { InvalidInputError } from '../../core/errors.ts';
import type { Pool } from '../../db/pool.ts';
import { lastRuns, type LastRun } from '../../db/sql/crm.ts';
import type { RunningService, Service } from '../../http/services.ts';
import { loadCrmConfig, type CrmConfig, type CrmSchedule } from './config.ts';
import { nextRun } from './schedule.ts';
import { runCrmSync, runErrorMessage, type RunOutcome } from './sync.ts';

export interface ScheduleOptions {
  trigger: 'schedule' | 'cli';
  /** Called after each run (completed, skipped or failed). */
  onRun?: ((o: RunOutcome) => void) | undefined;
  /** Called when a run could not start, so has no outcome (the pipeline locked, the database unreachable). */
  onRunError?: ((err: unknown) => void) | undefined;
  log?: ((line: string) => void) | undefined;
}

/** setTimeout cannot wait longer than 2^31-1 ms (~24.8 days): wait in chunks. */
const MAX_TIMER = 2 ** 31 - 1;

/**
 * Why a run calls for a follow-up before the next slot (undefined: it was clean). A run
 * that threw before it was recorded (the pipeline locked by another process, the database
 * unreachable) has no outcome and counts as failed.
 */
export function retryReason(outcome: RunOutcome | undefined): string | undefined {
  if (!outcome) return 'the run could not start';
  if (outcome.status === 'failed') return `run ${outcome.runId} failed`;
  const { persons, deals } = outcome.summary;
  const failed = persons.failed + deals.failed;
  const unconfirmed = persons.unconfirmed + deals.unconfirmed;
  if (failed === 0 && unconfirmed === 0) return undefined;
  return `run ${outcome.runId} left ${leftRecords(failed, unconfirmed)}`;
}

/** `1 failed and 2 unconfirmed records`, what a run left to settle. */
function leftRecords(failed: number, unconfirmed: number): string {
  const what = [failed ? `${failed} failed` : '', unconfirmed ? `${unconfirmed} unconfirmed` : ''].filter(Boolean).join(' and ');
  return `${what} record${failed + unconfirmed === 1 ? '' : 's'}`;
}

/** The follow-up's wait after `misses` unsuccessful runs in a row: retry_after x 2^(misses - 1) (the exponent capped so the product stays finite). */
function backoffMs(retryAfterMs: number, misses: number): number {
  return retryAfterMs * 2 ** Math.min(misses - 1, 40);
}

/**
 * Why the last recorded run calls for a follow-up (undefined: it was clean, or it is still
 * going on in another process), as retryReason says it of an outcome. A run still marked
 * running by no live process was cut short: unsuccessful.
 */
function lastRunFailure(last: LastRun): string | undefined {
  if (last.status === 'failed') return `failed run ${last.id}`;
  if (last.status === 'running') return last.in_progress ? undefined : `run ${last.id}, left running by a process that stopped`;
  if (last.status !== 'completed' || last.failed + last.unconfirmed === 0) return undefined;
  return `run ${last.id}, which left ${leftRecords(last.failed, last.unconfirmed)}`;
}

interface FirstRun {
  /** When the first run goes. */
  at: Date;
  /** The regular slot it is measured against: `at`, unless a follow-up comes first. */
  slot: Date;
  /** The first run is a follow-up (a retry that leaves the slot in place). */
  retry: boolean;
  /** Unsuccessful runs in a row up to the last one (0 after a clean run): the backoff counts them. */
  misses: number;
  /** Why `at` is not simply the next slot after now (undefined: it is). */
  why?: string | undefined;
}

/**
 * Where a schedule starting at `now` places its first run, given the pipeline's recorded
 * runs (`runs`, newest first, any trigger; `now` on the database's clock, as their times),
 * as if the process had been running all along:
 * - no run yet: the next slot after now (an interval: now + interval);
 * - interval: the last run's start + interval (its end + interval when it outlived the
 *   interval, as a live process does), or now when that has passed;
 * - cron: now when a slot came after the last run ended and has passed (one catch-up,
 *   however many were missed; a slot during the run was skipped by the live process),
 *   else the next slot;
 * - the last run unsuccessful (failed, left failed or unconfirmed records, or left
 *   running by a dead process: ended at its last progress): misses = the unsuccessful
 *   runs in a row up to it, and its follow-up at its end + retry_after x 2^(misses - 1),
 *   never later than the slot (retry_after off: the slot), as the live process's backoff;
 * - the last run left running by a dead process: nothing before its end + the larger of
 *   retry_after and `guardMs` (the CRM's request timeout), follow-up or slot alike: a
 *   create it sent may still be applied by the CRM (docs/crm.md, Crash safety).
 * (A live process measures an interval from its last slot run, not from a follow-up: after
 * a restart it counts from the last run of any kind. docs/crm.md says so.)
 */
function firstRun(schedule: CrmSchedule, runs: LastRun[], now: Date, guardMs = 0): FirstRun {
  const plain = nextRun(schedule, now);
  const last = runs[0];
  if (!last) return { at: plain, slot: plain, retry: false, misses: 0 };
  const started = last.started_at.getTime();
  const ended = Math.max(started, last.ended_at.getTime());
  let slot = plain;
  let why: string | undefined;
  if (schedule.kind === 'interval') {
    // A live process arms the next slot after a run at the later of these.
    const outlived = started + schedule.intervalMs <= ended;
    const since = outlived ? `run ${last.id} ended at ${iso(ended)}` : `run ${last.id} started at ${iso(started)}`;
    const due = (outlived ? ended : started) + schedule.intervalMs;
    slot = new Date(Math.max(now.getTime(), due));
    why = due <= now.getTime() ? `the interval since ${since} has passed` : `one interval after ${since}`;
  } else if (nextRun(schedule, new Date(ended)) <= now) {
    slot = now;
    why = `a slot was missed since run ${last.id} ended at ${iso(ended)}`;
  }
  const failure = lastRunFailure(last);
  if (failure === undefined) return { at: slot, slot, retry: false, misses: 0, why };
  let misses = 0;
  while (misses < runs.length && lastRunFailure(runs[misses]!) !== undefined) misses++;
  // A dead process's run: wait out what it may still have in flight.
  const dead = last.status === 'running';
  const earliest = dead ? ended + Math.max(schedule.retryAfterMs ?? 0, guardMs) : 0;
  const guarded = (at: Date) => (at.getTime() < earliest ? new Date(earliest) : at);
  const guard = `, not before ${iso(earliest)}: what it sent may still be applied`;
  if (schedule.retryAfterMs !== undefined) {
    const due = new Date(Math.max(now.getTime(), ended + backoffMs(schedule.retryAfterMs, misses)));
    const followUp = guarded(due);
    const note = followUp > due ? guard : '';
    if (followUp < slot) return { at: followUp, slot, retry: true, misses, why: `follow-up of ${failure}, attempt ${misses + 1}${note}` };
  }
  const instead = schedule.retryAfterMs === undefined ? 'retry_after is off, so the slot' : 'the slot comes no later than its follow-up';
  const at = guarded(slot);
  const note = at > slot ? guard : '';
  return { at, slot: at, retry: false, misses, why: `${why ? `${why}; ` : ''}attempt ${misses + 1} after ${failure}: ${instead}${note}` };
}

function iso(ms: number): string {
  return new Date(ms).toISOString();
}

/**
 * Starts the schedule; reads the pipeline's last run first (firstRun). The database out of
 * reach then: logged, and the first run is the next slot after now.
 */
export async function startSchedule(pool: Pool, config: CrmConfig, options: ScheduleOptions): Promise<RunningService> {
  const schedule = config.schedule;
  if (!schedule) throw new InvalidInputError(`${config.file ?? 'config'}: a scheduled sync needs schedule.cron or schedule.interval`);
  const log = options.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  let first: FirstRun;
  try {
    // The runs' times are the database's clock. Within a second of this process's, that
    // one is used as it is; further apart, the database's, the result moved onto this one.
    const { runs, now } = await lastRuns(pool, config.name);
    const skew = Date.now() - now.getTime();
    const far = Math.abs(skew) > 1000;
    const f = firstRun(schedule, runs, far ? now : new Date(), config.destination.type === 'pipedrive' ? config.destination.timeoutMs : 0);
    first = far ? { ...f, at: new Date(f.at.getTime() + skew), slot: new Date(f.slot.getTime() + skew) } : f;
  } catch (err) {
    log(`crm sync ${config.name}: could not read the last run (${runErrorMessage(err)}); the first run is the next slot after now`);
    first = firstRun(schedule, [], new Date());
  }
  let timer: NodeJS.Timeout | undefined;
  let stopped = false;
  let current: Promise<void> | undefined;
  let controller: AbortController | undefined;
  /** The next regular slot: a retry run leaves it in place, a run at a slot moves it on. */
  let slot = first.slot;
  /** Consecutive unsuccessful runs (0 after a clean one): sets the retry's backoff. */
  let misses = first.misses;

  const arm = (at: Date, retry: boolean) => {
    if (stopped) return;
    const wait = Math.min(MAX_TIMER, Math.max(0, at.getTime() - Date.now()));
    timer = setTimeout(() => {
      if (Date.now() < at.getTime()) return arm(at, retry);
      current = fire(at, retry);
    }, wait);
  };

  const fire = async (at: Date, retry: boolean) => {
    if (!retry) slot = nextRun(schedule, at);
    const attempt = misses > 0 ? ` (${retry ? 'retry, ' : ''}attempt ${misses + 1})` : '';
    let outcome: RunOutcome | undefined;
    let error: unknown;
    controller = new AbortController();
    try {
      const o = await runCrmSync(pool, config, { trigger: options.trigger, signal: controller.signal });
      outcome = o;
      const s = o.summary;
      log(`crm sync ${config.name}: run ${o.runId} ${o.status}${attempt} (deals ${s.deals.created} created, ${s.deals.updated} updated, ${s.deals.failed} failed; ${s.requests} requests)`);
    } catch (err) {
      log(`crm sync ${config.name}: ${runErrorMessage(err)}${attempt}`);
      outcome = (err as { outcome?: RunOutcome }).outcome;
      error = err;
    } finally {
      controller = undefined;
      current = undefined;
    }
    // Outside the run's try: a throwing callback must not pass for a failed run (and a retry).
    try {
      if (outcome) options.onRun?.(outcome);
      else options.onRunError?.(error);
    } catch (err) {
      log(`crm sync ${config.name}: onRun: ${runErrorMessage(err)}`);
    }
    // Aborted by stop() (or stopped meanwhile): this MUST NOT arm a retry or a slot.
    if (stopped) return;
    // The next slot after both the planned one and now: a long run skips missed slots.
    const now = new Date();
    while (slot <= now) slot = nextRun(schedule, schedule.kind === 'interval' ? now : slot);
    const why = retryReason(outcome);
    if (why === undefined) {
      if (misses > 0) log(`crm sync ${config.name}: clean after ${misses} unsuccessful run${misses === 1 ? '' : 's'}, next run at the slot ${slot.toISOString()}`);
      misses = 0;
      return arm(slot, false);
    }
    misses++;
    if (schedule.retryAfterMs === undefined) return arm(slot, false); // retry_after: off
    // Exponential backoff (base, 2x, 4x ...); the exponent is capped so the product stays finite.
    const retryAt = new Date(now.getTime() + backoffMs(schedule.retryAfterMs, misses));
    if (retryAt < slot) {
      log(`crm sync ${config.name}: ${why}, retrying at ${retryAt.toISOString()} (attempt ${misses + 1})`);
      return arm(retryAt, true);
    }
    log(`crm sync ${config.name}: ${why}, retrying at the next slot ${slot.toISOString()} (attempt ${misses + 1})`);
    arm(slot, false);
  };

  arm(first.at, first.retry);
  const retries = schedule.retryAfterMs === undefined ? 'no retries' : `retries from ${schedule.retryAfterMs / 1000} s`;
  const why = first.why ? ` (${first.why})` : '';
  log(`crm sync ${config.name}: scheduled (${schedule.kind} ${schedule.text}, ${retries}), first run at ${first.at.toISOString()}${why}`);
  return {
    async stop() {
      stopped = true;
      if (timer) clearTimeout(timer);
      controller?.abort(new Error('stopped: the server is shutting down'));
      await current;
    },
  };
}

/** `sluice serve`'s service: runs when SLUICE_CRM_CONFIG names a config file. */
export const crmSyncService: Service = {
  name: 'crm-sync',
  async start(ctx) {
    const file = env('SLUICE_CRM_CONFIG');
    if (!file) return undefined;
    return await startSchedule(ctx.pool, loadCrmConfig(file), { trigger: 'schedule' });
  },
};
