/** Cancelling an import: queued and running parts stop being worked on; nothing is merged. */
import { NotFoundError } from '../core/errors.ts';
import { cancelImportRow, notifyImportFinished } from '../db/sql/intake.ts';
import type { IntakeContext } from './context.ts';
import { discardStaged } from './staging.ts';
import { importStatus, type ImportStatus } from './status.ts';

export async function cancelImport(ctx: IntakeContext, id: string): Promise<ImportStatus> {
  const before = await importStatus(ctx.pool, id);
  if (!before) throw new NotFoundError(`no import ${id}`);
  if (await cancelImportRow(ctx.pool, id)) {
    await notifyImportFinished(ctx.pool, id);
    // Workers check the status before each step; a merge in flight rolls back on its own
    // and drops what it holds.
    await discardStaged(ctx.pool, id).catch(() => {});
  }
  return (await importStatus(ctx.pool, id))!;
}
