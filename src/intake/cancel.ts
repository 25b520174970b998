/**
 * Cancelling an import: queued and running parts stop being worked on; nothing is merged,
 * and a merge at work is ended at once.
 */
import { NotFoundError } from '../core/errors.ts';
import { cancelImportRow, endMergeConnection, notifyImportFinished } from '../db/sql/intake.ts';
import type { IntakeContext } from './context.ts';
import { discardStaged } from './staging.ts';
import { importStatus, type ImportStatus } from './status.ts';

export async function cancelImport(ctx: IntakeContext, id: string): Promise<ImportStatus> {
  const before = await importStatus(ctx.pool, id);
  if (!before) throw new NotFoundError(`no import ${id}`);
  if (await cancelImportRow(ctx.pool, id)) {
    await notifyImportFinished(ctx.pool, id);
    // Workers check the status before each step. A merge may be inside one long statement,
    // or waiting for the target's lock: its connection is ended (it could only roll back
    // now), so the target and its worker are free at once and its staging can go.
    await endMergeConnection(ctx.pool, id).catch(() => 0);
    await discardStaged(ctx.pool, id).catch(() => {});
  }
  return (await importStatus(ctx.pool, id))!;
}
