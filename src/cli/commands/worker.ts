/** `sluice worker`: a process that takes import parts (and merges) from the queue. */
import type { Command } from 'commander';
import { InvalidInputError } from '../../core/errors.ts';
import { checkSettings } from '../../config.ts';
import { databaseUrl, openDb } from '../../db/pool.ts';
import { intakeConnections } from '../../intake/service.ts';
import { logImportEnd } from '../../intake/status.ts';
import { startWorkers, type RunningWorkers } from '../../intake/worker.ts';
import { startBoss, type Boss } from '../../jobs/boss.ts';
import { untilSignal } from '../until-signal.ts';
import { wholeNumber } from '../../core/whole-number.ts';

export function registerWorker(program: Command): void {
  program
    .command('worker')
    .description('take import parts from the Postgres-backed queue (run as many as you like, on any machine)')
    .option('--concurrency <n>', 'parts processed at once by this process', '2')
    .action(async (flags: { concurrency: string }) => {
      const concurrency = wholeNumber(flags.concurrency) ?? 0;
      if (concurrency < 1) throw new InvalidInputError('--concurrency must be a positive whole number');
      // Settings before anything is opened: a bad value is bad usage (exit 2).
      checkSettings('worker');
      const pool = await openDb({ max: intakeConnections(concurrency), keep: intakeConnections(concurrency), applicationName: 'sluice-worker' });
      let boss: Boss | undefined;
      let workers: RunningWorkers;
      try {
        boss = await startBoss(await databaseUrl());
        workers = await startWorkers({ pool, boss }, { concurrency, onImportEnd: logImportEnd });
      } catch (err) {
        // The queue and the pool would keep the process alive after the error.
        await boss?.stop({ graceful: false }).catch(() => {});
        await pool.end().catch(() => {});
        throw err;
      }
      process.stderr.write(`sluice worker: ready (pid ${process.pid}, concurrency ${concurrency})\n`);
      await untilSignal();
      await workers.stop();
      await boss.stop({ graceful: true, timeout: 10_000 });
      await pool.end();
    });
}
