/**
 * The intake inside `sluice serve`: the job queue (always: uploads are enqueued on it) and
 * SLUICE_WORKERS part workers (default 2; 0 leaves the work to `sluice worker` processes).
 */
import { intEnv } from '../config.ts';
import { databaseUrl } from '../db/pool.ts';
import type { Service } from '../http/services.ts';
import { startBoss } from '../jobs/boss.ts';
import { startWorkers } from './worker.ts';

export const intakeService: Service = {
  name: 'intake',
  async start(ctx) {
    const boss = await startBoss(await databaseUrl());
    ctx.boss = boss;
    const concurrency = intEnv('SLUICE_WORKERS', 2);
    const workers = concurrency > 0 ? await startWorkers(ctx, { concurrency }) : undefined;
    return {
      async stop() {
        await workers?.stop();
        await boss.stop({ graceful: true, timeout: 10_000 });
      },
    };
  },
};
