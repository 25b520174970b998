/**
 * The intake on /metrics. Its backlog, read from the database at each scrape, so it counts
 * the work of every process sharing it (the row counters of src/http/metrics.ts count this
 * process's merges only): imports queued or running, and the queue's part and merge jobs
 * waiting or running. Two small queries per scrape: the unfinished imports through their
 * partial index (migration 0046), the live jobs of four queues. And the part retries made
 * by this process's workers (part-job.ts).
 */
import client from 'prom-client';
import type { Pool } from '../db/pool.ts';
import { liveJobCounts, unfinishedImportCounts } from '../db/sql/intake.ts';
import { registry } from '../http/metrics.ts';
import { MERGE_DEAD_QUEUE, MERGE_QUEUE, PART_DEAD_QUEUE, PART_QUEUE } from '../jobs/boss.ts';
import { pipelines } from '../pipelines/index.ts';

/**
 * Part attempts started that are not the part's first (runPart, once it has claimed the part
 * and raised import_parts.attempts above 1), whatever ended the attempt before: an error
 * retried with backoff, or a worker that died or stopped sending heartbeats. Counted where
 * the attempt runs, so only by this process's workers: `sluice worker` processes serve no
 * /metrics (their retries show in import_parts.attempts and, while they wait,
 * sluice_queue_jobs{state="retry"}).
 */
export const partRetries = new client.Counter({
  name: 'sluice_intake_part_retries_total',
  help:
    'Intake part attempts started that were not the part\'s first (a retry: after a failed attempt, or after its worker died), ' +
    'run by this process\'s workers (not by separate sluice worker processes), by pipeline',
  labelNames: ['pipeline'] as const,
  registers: [registry],
});
// Every pipeline's series from the start, at 0: the first retry is then an increase that
// rate() and increase() see, not a series appearing at 1.
for (const pipeline of Object.keys(pipelines)) partRetries.inc({ pipeline }, 0);

/** The pool the gauges read (the server's; the last one built, in tests that build several). */
let source: Pool | undefined;

/** Points the gauges at `pool` (importsRoutes, with the server's). */
export function measureIntake(pool: Pool): void {
  source = pool;
}

/**
 * A gauge set at each scrape from counts read on the measured pool (`count`: rows of its
 * labels and `n`); none when the read fails (a scrape never fails for them).
 */
function countGauge(name: string, help: string, labelNames: readonly string[], count: (pool: Pool) => Promise<Array<{ n: number } & Record<string, string | number>>>): void {
  new client.Gauge({
    name,
    help,
    labelNames,
    registers: [registry],
    async collect() {
      const rows = source ? await count(source).catch(() => []) : [];
      this.reset();
      for (const { n, ...labels } of rows) this.set(labels, n);
    },
  });
}

countGauge(
  'sluice_imports_unfinished',
  'Imports queued or running in the database (every process sharing it), by pipeline and status',
  ['pipeline', 'status'],
  unfinishedImportCounts,
);

countGauge(
  'sluice_queue_jobs',
  'Intake jobs in the queue (every process sharing it): waiting (created, retry) or active, by queue',
  ['queue', 'state'],
  (pool) => liveJobCounts(pool, [PART_QUEUE, MERGE_QUEUE, PART_DEAD_QUEUE, MERGE_DEAD_QUEUE]),
);
