/**
 * Failing an import from outside its merge's transaction: a part failing for good, a merge
 * or part the queue will not run again. The status first, so no part can be staged any more
 * (each checks it under the import's row lock), then what it staged is dropped (giving way
 * to a merge still holding a table: that merge drops them itself when it sees the import
 * failed), then the end is announced.
 */
import { finishImport } from '../db/sql/imports.ts';
import { notifyImportFinished } from '../db/sql/intake.ts';
import type { Pool } from '../db/pool.ts';
import { discardStaged } from './staging.ts';

/** The end of the error of a job the queue gave up on: ` (gave up after N attempts)`. */
export function gaveUp(attempts: number): string {
  return ` (gave up after ${attempts} attempt${attempts === 1 ? '' : 's'})`;
}

/**
 * Fails the import with `error` while it is queued or running; false (nothing touched) when
 * it was over already (completed, cancelled, failed by someone else).
 */
export async function failImport(pool: Pool, importId: string, error: string): Promise<boolean> {
  const ended = await finishImport(pool, importId, {
    status: 'failed', error, read: 0, inserted: 0, updated: 0, unchanged: 0, rejected: 0, timings: {},
  }, true);
  if (!ended) return false;
  // Left behind if this fails: the next server start sweeps it (sweepFinishedImports).
  await discardStaged(pool, importId).catch(() => {});
  await notifyImportFinished(pool, importId).catch(() => {});
  return true;
}
