/**
 * One CRM sync run: lock the pipeline, refresh the sources, decide whether there is work
 * (a source changed, the config changed, or the last run left failures), hand the desired
 * state to the destination, and record the run. Used by `sluice sync crm` and the
 * scheduled service inside `sluice serve`.
 */
import { SluiceError, errorMessage, type ErrorCode } from '../../core/errors.ts';
import { maskUrlPasswords } from '../../core/url-credentials.ts';
import { BudgetExhaustedError } from '../../clients/pipedrive.ts';
import type { Pool } from '../../db/pool.ts';
import {
  failInterruptedRuns,
  finishRun,
  insertRun,
  lastCompletedRun,
  listFailures,
  requestsToday,
  reserveRequests,
  tryLockPipeline,
  unlockPipeline,
  updateRunProgress,
  type Failure,
} from '../../db/sql/crm.ts';
import { configHash, type CrmConfig, type SourceName } from './config.ts';
import { crmRuns } from './metrics.ts';
import { PipedriveDestination } from './pipedrive-destination.ts';
import { PostgresDestination } from './postgres-destination.ts';
import { loadSources, probeSources, type SourceReport } from './sources.ts';
import { zeroCounts, type Destination, type DestinationResult, type DestinationRun, type SyncSummary } from './types.ts';

export interface RunOptions {
  trigger: 'cli' | 'schedule' | 'api';
  /** Process even when no source changed since the last completed run. */
  force?: boolean | undefined;
  signal?: AbortSignal | undefined;
}

export interface RunOutcome {
  runId: number;
  status: 'completed' | 'skipped' | 'failed';
  summary: SyncSummary;
  sources: Partial<Record<SourceName, SourceReport>>;
  /** Destination facts: plan sizes, requests per route, retries, step timings. */
  details: Record<string, unknown>;
  /** The first failed records (all of them are in crm_failures). */
  failures: Failure[];
  error?: string;
  /** With `error`: its code (unauthorized, unavailable, invalid_file...). */
  code?: ErrorCode;
}

/**
 * An error's message as it may be shown, logged or stored: the password of any URL it
 * quotes masked (a source's URL with credentials).
 */
export function runErrorMessage(err: unknown): string {
  return maskUrlPasswords(errorMessage(err));
}

/** A failed run: the error (URL passwords masked), with the run's id and what it had done. */
export class CrmRunError extends SluiceError {
  readonly outcome: RunOutcome;
  constructor(cause: unknown, outcome: RunOutcome) {
    super(cause instanceof SluiceError ? cause.code : 'internal', runErrorMessage(cause), { cause });
    this.outcome = outcome;
  }
}

/**
 * Requests reserved in crm_runs per write, ahead of sending: what a killed run may count
 * beyond what it sent (plus requests that had reserved and were still waiting to go).
 */
export const RESERVE_BLOCK = 20;

/**
 * Counts a run's requests into crm_runs.requests *before* they are sent, so that a process
 * killed at any moment (kill -9, OOM, power) leaves a count no lower than what may have
 * reached the API: the daily budget, which sums that column, is never overrun by a crash.
 * The destination calls `take()` before each attempt it may send and sends only once it
 * resolves. Reserved a block ahead: the next block is written in the background when half
 * the current one is used, so a request waits for Postgres only when requests outrun the
 * writes (or the write fails: then it is not sent, and the run ends with that error).
 * finishRun settles the column to the real count; a reservation landing after it changes
 * nothing (it only touches a running run).
 */
class RequestReservation {
  /** Attempts announced by `take()`. */
  private taken = 0;
  /** Durable: crm_runs.requests is at least this. */
  private reserved = 0;
  private writing: Promise<void> | undefined;
  private readonly pool: Pool;
  private readonly runId: number;

  constructor(pool: Pool, runId: number) {
    this.pool = pool;
    this.runId = runId;
  }

  /** Before each attempt: resolves once it is counted in Postgres (undefined: it already is). */
  take(): Promise<void> | undefined {
    const n = ++this.taken;
    if (this.reserved - n < RESERVE_BLOCK / 2) this.write().catch(() => {}); // a waiter below sees its error
    return n <= this.reserved ? undefined : this.until(n);
  }

  private async until(n: number): Promise<void> {
    while (this.reserved < n) await this.write();
  }

  /** One write at a time: up to everything announced so far plus a block. */
  private write(): Promise<void> {
    this.writing ??= (async () => {
      const upTo = this.taken + RESERVE_BLOCK;
      try {
        await reserveRequests(this.pool, this.runId, upTo);
        this.reserved = Math.max(this.reserved, upTo);
      } finally {
        this.writing = undefined;
      }
    })();
    return this.writing;
  }
}

export function destinationFor(config: CrmConfig): Destination {
  return config.destination.type === 'postgres' ? new PostgresDestination() : new PipedriveDestination();
}

function summaryOf(r: DestinationResult | undefined, startedAt: number): SyncSummary {
  return {
    persons: r?.persons ?? zeroCounts(),
    deals: r?.deals ?? zeroCounts(),
    requests: r?.requests ?? 0,
    retries_429: r?.retries_429 ?? 0,
    duration_ms: Math.round(performance.now() - startedAt),
  };
}

export async function runCrmSync(pool: Pool, config: CrmConfig, options: RunOptions): Promise<RunOutcome> {
  const startedAt = performance.now();
  const lock = await pool.connect();
  try {
    if (!(await tryLockPipeline(lock, config.name))) {
      throw new SluiceError('conflict', `a sync of pipeline "${config.name}" is already running`);
    }
    try {
      return await locked(pool, config, options, startedAt);
    } finally {
      await unlockPipeline(lock, config.name).catch(() => {});
    }
  } finally {
    lock.release();
  }
}

async function locked(pool: Pool, config: CrmConfig, options: RunOptions, startedAt: number): Promise<RunOutcome> {
  const hash = configHash(config);
  const force = options.force === true;
  // We hold the pipeline's lock: a run still marked running belongs to a dead process.
  await failInterruptedRuns(pool, config.name);
  const runId = await insertRun(pool, { pipeline: config.name, trigger: options.trigger, destination: config.destination.type, forced: force, configHash: hash });
  let sources: RunOutcome['sources'] = {};
  let partial: DestinationResult | undefined;
  let written = Promise.resolve();
  let lastWrite = 0;
  const outcome = (status: RunOutcome['status'], failures: Failure[], error?: string, code?: ErrorCode): RunOutcome => ({
    runId, status, summary: summaryOf(partial, startedAt), sources, details: partial?.details ?? {}, failures, ...(error ? { error, code: code ?? 'internal' } : {}),
  });
  let staged: Promise<void> = Promise.resolve();
  // A source that cannot be staged (empty, refused by COPY) ends the destination's work at
  // once, its error as the reason: nothing is planned or written without the sources.
  const staging = new AbortController();
  const signal = options.signal ? AbortSignal.any([options.signal, staging.signal]) : staging.signal;
  let stagingError: unknown;
  try {
    const probes = await probeSources(pool, config, force, options.signal);
    const last = await lastCompletedRun(pool, config.name);
    // Failed and unconfirmed records of the last run are settled by this one.
    const mustRun = force || !last || last.config_hash !== hash || last.failed > 0 || last.unconfirmed > 0 || last.staged_since;
    if (!mustRun && probes.every((p) => !p.opened)) {
      sources = await loadSources(pool, probes); // all "not_modified": nothing to read
      const o = outcome('skipped', []);
      await finishRun(pool, runId, { status: 'skipped', requests: 0, retries429: 0, summary: o.summary, sources, details: {}, error: null });
      crmRuns.inc({ pipeline: config.name, status: 'skipped' });
      return o;
    }
    let budgetLeft: number | undefined;
    if (config.destination.type === 'pipedrive' && config.destination.dailyRequestBudget !== undefined) {
      budgetLeft = config.destination.dailyRequestBudget - (await requestsToday(pool, config.name));
      if (budgetLeft <= 0) {
        for (const p of probes) p.opened?.stream.destroy();
        throw new BudgetExhaustedError(`daily request budget of ${config.destination.dailyRequestBudget} is spent; the next run after midnight UTC continues`);
      }
    }
    // The changed sources stream into staging while the destination reads the CRM (the
    // rate limit, not Postgres, sets the pace); it plans once they are staged.
    staged = loadSources(pool, probes).then((r) => {
      sources = r;
    });
    staged.catch((err: unknown) => {
      // awaited by the destination, and below
      stagingError = err;
      staging.abort(err);
    });
    const reservation = new RequestReservation(pool, runId);
    const run: DestinationRun = {
      pool,
      config,
      runId,
      signal,
      budgetLeft,
      staged,
      reserveRequest: () => reservation.take(),
      progress(r) {
        partial = r;
        const now = performance.now();
        if (now - lastWrite < 1000) return;
        lastWrite = now;
        const s = summaryOf(r, startedAt);
        written = written.then(() => updateRunProgress(pool, runId, s.requests, s.retries_429, s)).catch(() => {});
      },
    };
    partial = await destinationFor(config).sync(run);
    await staged;
    await written;
    const failures = await listFailures(pool, runId, 20);
    const o = outcome('completed', failures);
    await finishRun(pool, runId, { status: 'completed', requests: o.summary.requests, retries429: o.summary.retries_429, summary: o.summary, sources, details: o.details, error: null });
    crmRuns.inc({ pipeline: config.name, status: 'completed' });
    return o;
  } catch (caught) {
    await staged.catch(() => {});
    await written;
    // The destination may have failed of the staging's failure (aborted): report the cause.
    const err = stagingError ?? caught;
    const failures = await listFailures(pool, runId, 20).catch(() => []);
    const o = outcome('failed', failures, runErrorMessage(err), err instanceof SluiceError ? err.code : 'internal');
    await finishRun(pool, runId, { status: 'failed', requests: o.summary.requests, retries429: o.summary.retries_429, summary: o.summary, sources, details: o.details, error: o.error ?? null });
    crmRuns.inc({ pipeline: config.name, status: 'failed' });
    throw new CrmRunError(err, o);
  }
}
