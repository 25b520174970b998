/**
 * Queue workers: part jobs (staged in parallel, `concurrency` at a time per process) and
 * merge jobs. Used by `sluice worker` and, unless SLUICE_WORKERS=0, inside `sluice serve`.
 */
import type { Job } from 'pg-boss';
import { MERGE_QUEUE, PART_QUEUE } from '../jobs/boss.ts';
import type { IntakeContext } from './context.ts';
import { runMerge } from './merge-job.ts';
import { runPart } from './part-job.ts';

export interface RunningWorkers {
  stop(): Promise<void>;
}

export async function startWorkers(ctx: IntakeContext, options: { concurrency: number }): Promise<RunningWorkers> {
  const boss = ctx.boss;
  if (!boss) throw new Error('startWorkers needs the job queue (ctx.boss)');
  const polling = { pollingIntervalSeconds: 0.5, notifyPollingIntervalSeconds: 2 };
  const partId = await boss.work<{ importId: string; n: number }>(
      PART_QUEUE,
      { ...polling, localConcurrency: options.concurrency, batchSize: 1 },
      async ([job]: Job<{ importId: string; n: number }>[]) => runPart(ctx, job!.data.importId, job!.data.n),
  );
  const mergeId = await boss.work<{ importId: string }>(
      MERGE_QUEUE,
      { ...polling, localConcurrency: 1, batchSize: 1 },
      async ([job]: Job<{ importId: string }>[]) => runMerge(ctx, job!.data.importId),
  );
  return {
    async stop() {
      await boss.offWork(PART_QUEUE, { id: partId, wait: true });
      await boss.offWork(MERGE_QUEUE, { id: mergeId, wait: true });
    },
  };
}
