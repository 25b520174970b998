/**
 * Retention of finished imports, run by every `sluice serve` when SLUICE_IMPORTS_RETENTION_DAYS
 * is set (0, the default, keeps every import for ever): imports that ended (completed,
 * failed, cancelled) more than that many days ago are deleted with their rejects and parts.
 * A queued or running import is never deleted, whatever its age. Once at start, then every
 * SLUICE_IMPORTS_RETENTION_MS (an hour). Several servers may share the database: one sweeps
 * at a time, the others skip that round.
 */
import { intEnv } from '../config.ts';
import { repeatAfterEach } from '../core/repeat.ts';
import { withTransaction, type Pool } from '../db/pool.ts';
import { deleteExpiredImports, deleteRejectsOf, expiredImports, retentionCutoff, tryRetentionLock } from '../db/sql/imports.ts';
import type { RunningService, Service } from '../http/services.ts';

/**
 * A batch waits at most 5 s for a lock (a row some straggler still holds): it fails, and the
 * next round tries again, instead of a sweep queueing behind it and holding up the server's stop.
 */
const BATCH_BEGIN = 'BEGIN; SET LOCAL lock_timeout = 5000';

export interface SweepOptions {
  /** Checked before each batch: once aborted, the sweep ends after the batch in progress. */
  signal?: AbortSignal;
  /** Imports deleted per transaction at most; default 100. */
  importsPerBatch?: number;
  /**
   * Rejects deleted per transaction at most; default 50,000. An import can have hundreds of
   * thousands: deleted through the cascade at once, they made one transaction of millions of rows.
   */
  rejectsPerBatch?: number;
}

export interface SweepResult {
  /** True when another process held the retention lock at the first batch: nothing was done. */
  skipped: boolean;
  /** Imports that ended before this (ISO 8601, Postgres's now() less the days) were deleted. */
  cutoff: string;
  imports: number;
  /** Rows of import_rejects deleted (with their imports, or ahead of them). */
  rejects: number;
  /** The error that ended the sweep after some batches committed; what they deleted is counted above. */
  error?: unknown;
}

/**
 * One sweep: deletes the imports that ended more than `days` days ago, oldest first, in
 * transactions of at most `importsPerBatch` imports or `rejectsPerBatch` rejects, each
 * holding the retention lock (pg_try_advisory_xact_lock). When another process holds it the
 * sweep ends (at the first batch: `skipped`); that process carries on where this one stopped.
 * Throws only when nothing was done (the cutoff could not be read); a later failure ends
 * the sweep with `error` set.
 */
export async function sweepImports(pool: Pool, days: number, options: SweepOptions = {}): Promise<SweepResult> {
  const { signal, importsPerBatch = 100, rejectsPerBatch = 50_000 } = options;
  // Once per sweep, so every batch (and the log line) uses the same cutoff.
  const cutoff = await retentionCutoff(pool, days);
  const result: SweepResult = { skipped: false, cutoff, imports: 0, rejects: 0 };
  // Imports whose rejects outnumber a batch: kept for the next transactions, rather than
  // found again by a scan of `imports` per 50,000 rejects.
  let pending: string[] | undefined;
  for (let batch = 0; !signal?.aborted; batch++) {
    let outcome: { imports: number; rejects: number; more: boolean } | undefined;
    try {
      outcome = await withTransaction(pool, BATCH_BEGIN, async (client) => {
        if (!(await tryRetentionLock(client))) return undefined;
        const ids = pending ?? (await expiredImports(client, cutoff, importsPerBatch));
        if (ids.length === 0) return { imports: 0, rejects: 0, more: false };
        const rejects = await deleteRejectsOf(client, ids, rejectsPerBatch);
        // The batch's rejects may not all be gone: their imports wait for the next transaction.
        pending = rejects === rejectsPerBatch ? ids : undefined;
        if (pending) return { imports: 0, rejects, more: true };
        const imports = await deleteExpiredImports(client, ids, cutoff);
        return { imports, rejects, more: ids.length === importsPerBatch };
      });
    } catch (err) {
      if (batch === 0) throw err;
      result.error = err;
      break;
    }
    if (!outcome) {
      result.skipped = batch === 0;
      break;
    }
    result.imports += outcome.imports;
    result.rejects += outcome.rejects;
    if (!outcome.more) break;
  }
  return result;
}

/** Days a finished import is kept (SLUICE_IMPORTS_RETENTION_DAYS); 0, the default: for ever. */
export function retentionDays(): number {
  return intEnv('SLUICE_IMPORTS_RETENTION_DAYS', 0);
}

function report(r: SweepResult): void {
  if (r.imports === 0 && r.rejects === 0) return;
  process.stderr.write(
    `sluice: retention: deleted ${r.imports} imports finished before ${new Date(r.cutoff).toISOString()} (${r.rejects} rejected rows)\n`,
  );
}

export const importsRetentionService: Service = {
  name: 'imports-retention',
  async start(ctx): Promise<RunningService | undefined> {
    const days = retentionDays();
    if (days === 0) return undefined;
    const everyMs = intEnv('SLUICE_IMPORTS_RETENTION_MS', 3_600_000);
    // The first sweep is not awaited: `serve` listens only once every service has started.
    // Each next one is timed from the end of the one before (a first sweep over years of
    // imports may outlast the interval). Errors are retried on the next round; a database
    // outage is reported by /healthz.
    return repeatAfterEach((signal) => sweepImports(ctx.pool, days, { signal }).then(report), everyMs, 'now');
  },
};
