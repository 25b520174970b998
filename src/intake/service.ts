/**
 * The intake inside `sluice serve`: the job queue (always: uploads are enqueued on it) and
 * SLUICE_WORKERS part workers (default 2; 0 leaves the work to `sluice worker` processes).
 * At start, what imports that are over left behind (staging tables, part bytes) is dropped.
 * At start and then every SLUICE_REAP_INTERVAL_MS (30 s), the reaper ends the imports
 * nobody else would: CLI imports and uploads whose process died, and parts and merges the
 * queue gave up on.
 */
import { errorMessage } from '../core/errors.ts';
import { repeatAfterEach, type Repeating } from '../core/repeat.ts';
import { intEnv } from '../config.ts';
import { databaseUrl, type Pool } from '../db/pool.ts';
import { failInterruptedImports, failInterruptedUploads } from '../db/sql/imports.ts';
import { notifyImportFinished } from '../db/sql/intake.ts';
import type { Service } from '../http/services.ts';
import { MERGE_DEAD_QUEUE, PART_DEAD_QUEUE, startBoss, type Boss } from '../jobs/boss.ts';
import { partRowsSetting } from './accept.ts';
import { failImport } from './fail.ts';
import { gaveUpMessage } from './merge-job.ts';
import { failAbandonedPart } from './part-job.ts';
import { dropStaging, sweepFinishedImports } from './staging.ts';
import { startWorkers } from './worker.ts';
import { logImportEnd } from './status.ts';

/**
 * How often a running server looks for imports nobody will end (SLUICE_REAP_INTERVAL_MS).
 * Without it a `sluice import` killed mid-way stayed `running` on the dashboard (with its
 * staging tables) until the next `sluice import`. 30 s: such an import shows `failed` within
 * half a minute, for a few cheap statements a tick (the running imports, one lock try for
 * each, one queue fetch).
 */
const DEFAULT_REAP_INTERVAL_MS = 30_000;

function reapIntervalMs(): number {
  return intEnv('SLUICE_REAP_INTERVAL_MS', DEFAULT_REAP_INTERVAL_MS);
}

/** A reap's lock waits give way after this: a tick never hangs, nor the server's stop. */
const REAP_LOCK_TIMEOUT = '5s';

/**
 * Imports whose owner died, found by their owner lock (free: db/sql/imports.ts), so one whose
 * owner is alive is left alone and several servers (and `sluice import`s) can reap at once:
 * each import is failed by whoever holds its lock, and only while it is still unfinished.
 * - CLI imports left `running` by a `sluice import` that died (nothing of them was written:
 *   their transaction was rolled back): failed, their staging tables dropped.
 * - Uploads left by a server that died before their first part was stored (a later death is
 *   seen by their merge, merge-job.ts): failed, their staging dropped.
 */
async function reapInterrupted(pool: Pool): Promise<string[]> {
  const client = await pool.connect();
  let broken: Error | undefined;
  try {
    await client.query(`SET lock_timeout = '${REAP_LOCK_TIMEOUT}'`);
    const cli = await failInterruptedImports(client, (id) => dropStaging(client, id));
    const uploads = await failInterruptedUploads(client, async (id) => {
      await dropStaging(client, id);
      await notifyImportFinished(client, id);
    });
    await client.query('RESET lock_timeout');
    return [...cli, ...uploads];
  } catch (err) {
    // Not handed back to the pool: it may hold an owner lock or the lock_timeout.
    broken = err as Error;
    throw err;
  } finally {
    client.release(broken);
  }
}

/**
 * Jobs pg-boss gave up on, from the dead letter queues (MERGE_DEAD_QUEUE, PART_DEAD_QUEUE):
 * their imports fail (failImport, failAbandonedPart; a no-op for one already over). This is the
 * only way a job whose worker died during its last attempt ends its import: the job's
 * heartbeat lapses and pg-boss fails it, with no worker left to notice (a part's merge would
 * wait for it for ever, holding its target's merge lock).
 */
async function reapAbandonedJobs(pool: Pool, boss: Boss): Promise<string[]> {
  const failed: string[] = [];
  for (const queue of [PART_DEAD_QUEUE, MERGE_DEAD_QUEUE]) {
    for (;;) {
      const jobs = await boss.fetch<{ importId: string; n?: number }>(queue, { batchSize: 20, includeMetadata: true });
      if (jobs.length === 0) break;
      for (const job of jobs) {
        try {
          // The failed attempt's output: what the worker passed to fail(), or pg-boss's reason.
          const output = job.sourceOutput as { message?: string; value?: { message?: string } } | null;
          const reason = output?.message ?? output?.value?.message ?? 'the queue gave up on it';
          const message = reason === 'job heartbeat timeout' ? `its worker stopped (${reason})` : reason;
          const attempts = (job.sourceRetryCount ?? 0) + 1;
          const { importId, n } = job.data;
          const ended = queue === PART_DEAD_QUEUE && n !== undefined
            ? await failAbandonedPart(pool, importId, n, message, attempts)
            : await failImport(pool, importId, gaveUpMessage(message, attempts));
          if (ended) failed.push(importId);
          await boss.complete(queue, job);
        } catch (err) {
          // Taken again after the queue's backoff (or, if this fails too, after it expires).
          await boss.fail(queue, job, { message: errorMessage(err) }).catch(() => {});
        }
      }
    }
  }
  return failed;
}

/** Both reaps; the ids of the imports they failed. */
async function reap(pool: Pool, boss: Boss): Promise<string[]> {
  return [...(await reapInterrupted(pool)), ...(await reapAbandonedJobs(pool, boss))];
}

function report(failed: string[]): void {
  if (failed.length > 0) process.stderr.write(`sluice: failed ${failed.length} import(s) nobody would end: ${failed.join(', ')}\n`);
}

/** Reaps every `intervalMs` (the first tick one interval from now) until stopped. */
function startReaper(pool: Pool, boss: Boss, intervalMs: number): Repeating {
  return repeatAfterEach(
    (signal) =>
      reap(pool, boss).then(report, (err: unknown) => {
        // The database is unreachable for now: the next tick tries again.
        if (!signal.aborted) process.stderr.write(`sluice: reaping interrupted imports failed: ${errorMessage(err)}\n`);
      }),
    intervalMs,
    'after-interval',
  );
}

/** Part workers inside `sluice serve` (SLUICE_WORKERS, default 2; 0: none). */
export function serveWorkers(): number {
  return intEnv('SLUICE_WORKERS', 2);
}

/**
 * Connections the intake needs from serve's pool to always make progress: one per part
 * worker, and up to three for a merge (its transaction, the connection preparing the next
 * part, and a short read of the parts' state). A smaller SLUICE_DB_POOL could leave a merge
 * waiting for ever for its third connection while the parts hold the rest.
 */
export function intakeConnections(workers: number): number {
  return workers > 0 ? workers + 3 : 0;
}

export const intakeService: Service = {
  name: 'intake',
  async start(ctx) {
    partRowsSetting(); // a bad SLUICE_PART_ROWS stops the start, not the first upload
    report(await reapInterrupted(ctx.pool));
    await sweepFinishedImports(ctx.pool);
    const boss = await startBoss(await databaseUrl());
    ctx.boss = boss;
    const concurrency = serveWorkers();
    let workers: Awaited<ReturnType<typeof startWorkers>> | undefined;
    try {
      report(await reapAbandonedJobs(ctx.pool, boss));
      workers = concurrency > 0 ? await startWorkers(ctx, { concurrency, onImportEnd: logImportEnd }) : undefined;
    } catch (err) {
      await boss.stop({ graceful: false }).catch(() => {});
      throw err;
    }
    const reaper = startReaper(ctx.pool, boss, reapIntervalMs());
    return {
      async stop() {
        await reaper.stop();
        await workers?.stop();
        await boss.stop({ graceful: true, timeout: 10_000 });
      },
    };
  },
};
