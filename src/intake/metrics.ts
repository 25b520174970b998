/**
 * The intake's backlog on /metrics, read from the database at each scrape, so it counts the
 * work of every process sharing it (the row counters of src/http/metrics.ts count this
 * process's merges only): imports queued or running, and the queue's part and merge jobs
 * waiting or running. Two small queries per scrape: the unfinished imports through their
 * partial index (migration 0046), the live jobs of four queues.
 */
import type pg from 'pg';
import client from 'prom-client';
import type { Pool } from '../db/pool.ts';
import { registry } from '../http/metrics.ts';
import { MERGE_DEAD_QUEUE, MERGE_QUEUE, PART_DEAD_QUEUE, PART_QUEUE } from '../jobs/boss.ts';

/** The pool the gauges read (the server's; the last one built, in tests that build several). */
let source: Pool | undefined;

/** Points the gauges at `pool` (importsRoutes, with the server's). */
export function measureIntake(pool: Pool): void {
  source = pool;
}

/** Rows of `sql` on the measured pool, none when it fails (a scrape never fails for them). */
async function read<T extends pg.QueryResultRow>(sql: string, params: unknown[] = []): Promise<T[]> {
  if (!source) return [];
  try {
    return (await source.query<T>(sql, params)).rows;
  } catch {
    return [];
  }
}

new client.Gauge({
  name: 'sluice_imports_unfinished',
  help: 'Imports queued or running in the database (every process sharing it), by pipeline and status',
  labelNames: ['pipeline', 'status'] as const,
  registers: [registry],
  async collect() {
    const rows = await read<{ pipeline: string; status: string; n: number }>(
      `SELECT pipeline, status, count(*)::int AS n FROM imports WHERE status IN ('queued', 'running') GROUP BY 1, 2`,
    );
    this.reset();
    for (const r of rows) this.set({ pipeline: r.pipeline, status: r.status }, r.n);
  },
});

new client.Gauge({
  name: 'sluice_queue_jobs',
  help: 'Intake jobs in the queue (every process sharing it): waiting (created, retry) or active, by queue',
  labelNames: ['queue', 'state'] as const,
  registers: [registry],
  async collect() {
    const rows = await read<{ queue: string; state: string; n: number }>(
      `SELECT name AS queue, state::text, count(*)::int AS n FROM pgboss.job
        WHERE name = ANY ($1::text[]) AND state IN ('created', 'retry', 'active') GROUP BY 1, 2`,
      [[PART_QUEUE, MERGE_QUEUE, PART_DEAD_QUEUE, MERGE_DEAD_QUEUE]],
    );
    this.reset();
    for (const r of rows) this.set({ queue: r.queue, state: r.state }, r.n);
  },
});
