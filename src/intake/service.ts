/**
 * The intake inside `sluice serve`: the job queue (always: uploads are enqueued on it) and
 * SLUICE_WORKERS part workers (default 2; 0 leaves the work to `sluice worker` processes).
 * At start, uploads a dead server left unfinished are failed, and what imports that are
 * over left behind (staging tables, part bytes) is dropped.
 */
import { intEnv } from '../config.ts';
import { databaseUrl, type Pool } from '../db/pool.ts';
import { failInterruptedUploads } from '../db/sql/imports.ts';
import type { Service } from '../http/services.ts';
import { startBoss } from '../jobs/boss.ts';
import { partRowsSetting } from './accept.ts';
import { dropStaging, sweepFinishedImports } from './staging.ts';
import { startWorkers } from './worker.ts';

/**
 * Uploads left unfinished by a server that died before their first part was stored (a
 * later death is seen by their merge, merge-job.ts): failed, their staging dropped.
 */
async function reapInterruptedUploads(pool: Pool): Promise<void> {
  const client = await pool.connect();
  try {
    await failInterruptedUploads(client, (id) => dropStaging(client, id));
  } finally {
    client.release();
  }
}

export const intakeService: Service = {
  name: 'intake',
  async start(ctx) {
    partRowsSetting(); // a bad SLUICE_PART_ROWS stops the start, not the first upload
    await reapInterruptedUploads(ctx.pool);
    await sweepFinishedImports(ctx.pool);
    const boss = await startBoss(await databaseUrl());
    ctx.boss = boss;
    const concurrency = intEnv('SLUICE_WORKERS', 2);
    let workers: Awaited<ReturnType<typeof startWorkers>> | undefined;
    try {
      workers = concurrency > 0 ? await startWorkers(ctx, { concurrency }) : undefined;
    } catch (err) {
      await boss.stop({ graceful: false }).catch(() => {});
      throw err;
    }
    return {
      async stop() {
        await workers?.stop();
        await boss.stop({ graceful: true, timeout: 10_000 });
      },
    };
  },
};
