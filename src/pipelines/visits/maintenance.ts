/**
 * Housekeeping of the visits tables, run by every `sluice serve` (safe to run from several
 * processes at once): create the partitions of today and tomorrow ahead of the first visit
 * (creating one in the hot path briefly blocks the flushes), compact the append-only
 * rollups (so the live page keeps reading one row per key), and delete rollup rows no live
 * view reads any more. Disabled with SLUICE_VISITS_MAINTENANCE=0.
 */
import { intEnv } from '../../config.ts';
import type { Pool } from '../../db/pool.ts';
import { compactRollups, deleteOldRollups, ensurePartition } from '../../db/sql/visits.ts';
import type { RunningService, Service } from '../../http/services.ts';

/** Each pass compacts the recent keys; every FULL_EVERY-th pass also the whole last day (late visits). */
const RECENT_MS = 20 * 60_000;
const FULL_EVERY = 40;

/** One maintenance pass. `full` compacts the last day instead of the last 20 minutes. */
export async function maintainVisits(pool: Pool, now = new Date(), full = false): Promise<void> {
  for (const offset of [0, 1]) {
    await ensurePartition(pool, new Date(now.getTime() + offset * 86_400_000).toISOString().slice(0, 10));
  }
  // Keys of the last 2 s are still being appended to by every flush: leave them be.
  await compactRollups(pool, new Date(now.getTime() - (full ? 86_400_000 : RECENT_MS)), new Date(now.getTime() - 2000));
  await deleteOldRollups(pool, now);
}

export const visitsMaintenanceService: Service = {
  name: 'visits-maintenance',
  async start(ctx): Promise<RunningService | undefined> {
    if (intEnv('SLUICE_VISITS_MAINTENANCE', 1) === 0) return undefined;
    const everyMs = intEnv('SLUICE_VISITS_MAINTENANCE_MS', 15_000);
    let pass = 0;
    // Errors are retried on the next pass; a database outage is reported by /healthz.
    const run = () => maintainVisits(ctx.pool, new Date(), pass++ % FULL_EVERY === 0).catch(() => {});
    let running = run();
    await running;
    const timer = setInterval(() => {
      running = running.then(run);
    }, everyMs);
    timer.unref();
    return {
      async stop() {
        clearInterval(timer);
        await running;
      },
    };
  },
};
