/**
 * The merge of an uploaded import, once every part is staged: one transaction folds the
 * staging table into the targets AND records the outcome, so a merge retried after a crash
 * either finds the import completed (and does nothing) or starts again from scratch.
 */
import { errorMessage } from '../core/errors.ts';
import { finishImport } from '../db/sql/imports.ts';
import { dropPartData, finishMerged, importForWork, mergeWork, notifyImportFinished } from '../db/sql/intake.ts';
import { stageTableName } from '../engine/import-runner.ts';
import { importRows } from '../http/metrics.ts';
import { mergeStage } from '../load/merge.ts';
import { ident } from '../load/merge-sql.ts';
import { getPipeline } from '../pipelines/index.ts';
import type { IntakeContext } from './context.ts';

export async function runMerge(ctx: IntakeContext, importId: string): Promise<'completed' | 'failed' | 'skipped'> {
  const { pool } = ctx;
  const totals = await mergeWork(pool, importId);
  if (!totals || !['queued', 'running'].includes(totals.status)) return 'skipped';
  const pipeline = getPipeline(totals.pipeline);
  const read = Number(totals.read);
  const rejected = Number(totals.rejected);
  const stage = stageTableName(importId);
  const timings: Record<string, number> = {};
  const fail = async (message: string) => {
    await finishImport(pool, importId, { status: 'failed', error: message, read, inserted: 0, updated: 0, unchanged: 0, rejected, timings }, true);
    await notifyImportFinished(pool, importId);
    await pool.query(`DROP TABLE IF EXISTS ${ident(stage)}`);
    return 'failed' as const;
  };
  if (read === 0) return fail('invalid file: no data rows after the header');
  const max = totals.options.maxRejectRatio ?? 1;
  if (rejected / read > max) {
    return fail(`rejected ${rejected} of ${read} rows (${((rejected / read) * 100).toFixed(1)}%), above max-reject-ratio ${max}: nothing was imported`);
  }
  const client = await pool.connect();
  try {
    const t0 = performance.now();
    const counts = await mergeStage(
      client,
      pipeline,
      stage,
      { rows: Number(totals.accepted), hasKeyCandidates: totals.key_candidates },
      timings,
      async (c, counts) => {
        let t = performance.now();
        await dropPartData(c, importId);
        // In the transaction: whoever sees the import completed finds its staging gone.
        await c.query(`DROP TABLE IF EXISTS ${ident(stage)}`);
        timings.cleanup = Math.round(performance.now() - t);
        t = performance.now();
        timings.merge = Math.round(t - t0);
        const done = await finishMerged(c, importId, { read, rejected, ...counts, timings });
        if (!done) throw new Error('import was cancelled during the merge');
        await notifyImportFinished(c, importId);
      },
    );
    importRows.inc({ pipeline: pipeline.name, outcome: 'inserted' }, counts.inserted);
    importRows.inc({ pipeline: pipeline.name, outcome: 'updated' }, counts.updated);
    importRows.inc({ pipeline: pipeline.name, outcome: 'unchanged' }, counts.unchanged);
    importRows.inc({ pipeline: pipeline.name, outcome: 'rejected' }, rejected);
    return 'completed';
  } catch (err) {
    const now = await importForWork(pool, importId);
    if (now?.status === 'cancelled') {
      await pool.query(`DROP TABLE IF EXISTS ${ident(stage)}`).catch(() => {});
      return 'skipped';
    }
    throw new Error(`merge failed: ${errorMessage(err)}`, { cause: err });
  } finally {
    client.release();
  }
}
