/**
 * Failing an import from outside its merge's transaction: a part failing for good, a merge
 * or part the queue will not run again. The status first, so no part can be staged any more
 * (each checks it under the import's row lock), then what it staged is dropped (giving way
 * to a merge still holding a table: that merge drops them itself when it sees the import
 * failed), then the end is announced.
 */
import { finishImport, type ImportOutcome } from '../db/sql/imports.ts';
import { cancelUnfinishedParts, notifyImportFinished } from '../db/sql/intake.ts';
import { withTransaction, type Pool } from '../db/pool.ts';
import { discardStaged } from './staging.ts';

/** The end of the error of a job the queue gave up on: ` (gave up after N attempts)`. */
export function gaveUp(attempts: number): string {
  return ` (gave up after ${attempts} attempt${attempts === 1 ? '' : 's'})`;
}

/**
 * Records the import failed (`outcome`) while it is queued or running, and its parts still
 * queued or running as cancelled (cancelUnfinishedParts: nothing else would end them, and
 * GET /imports/<id> showed them queued for ever), in one transaction; false (nothing
 * touched) when it was over already (completed, cancelled, failed by someone else).
 */
export async function recordFailure(pool: Pool, importId: string, outcome: Omit<ImportOutcome, 'status'>): Promise<boolean> {
  return withTransaction(pool, 'BEGIN', async (client) => {
    // The import row first, as a part completing locks it before its part (lockImport).
    if (!(await finishImport(client, importId, { ...outcome, status: 'failed' }, true))) return false;
    await cancelUnfinishedParts(client, importId);
    return true;
  });
}

/**
 * Fails the import with `error` while it is queued or running; false (nothing touched) when
 * it was over already (completed, cancelled, failed by someone else).
 */
export async function failImport(pool: Pool, importId: string, error: string): Promise<boolean> {
  const ended = await recordFailure(pool, importId, { error, read: 0, inserted: 0, updated: 0, unchanged: 0, rejected: 0, timings: {} });
  if (!ended) return false;
  // Left behind if this fails: the next server start sweeps it (sweepFinishedImports).
  await discardStaged(pool, importId).catch(() => {});
  await notifyImportFinished(pool, importId).catch(() => {});
  return true;
}
