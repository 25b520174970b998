/**
 * One flush: the group-commit transaction that makes a batch of visits durable. COPY the
 * visits, append the batch's counts to the rollups and queue its visitor updates, COMMIT;
 * only then may the requests be acknowledged. The rollups are in the same transaction, so
 * whatever crashes, they equal the visits stored.
 */
import { setTimeout as delay } from 'node:timers/promises';
import type { Pool } from '../../db/pool.ts';
import { addLag, appendRollups, copyVisits, ensurePartition } from '../../db/sql/visits.ts';
import { flushBatchSize, flushDuration, ingestLag } from './metrics.ts';
import { rollup } from './rollup.ts';
import type { Visit } from './visit.ts';

/**
 * What to do with a failed attempt, by SQLSTATE / errno (graphile-worker's table): a
 * serialisation failure is retried at once, a lost connection or a server restarting after
 * a short backoff, a missing partition after creating it.
 */
const RETRY: Record<string, 'now' | 'backoff' | 'partition'> = {
  '40P01': 'now', // deadlock_detected (not expected: the flush takes no shared row locks)
  '40001': 'now', // serialization_failure
  '23514': 'partition', // check_violation: "no partition of relation visits found for row"
  '57P01': 'backoff', // admin_shutdown
  '57P03': 'backoff', // cannot_connect_now
  '08006': 'backoff', // connection_failure
  '08003': 'backoff', // connection_does_not_exist
  ECONNRESET: 'backoff',
  ECONNREFUSED: 'backoff',
  EPIPE: 'backoff',
};

const MAX_ATTEMPTS = 4;

export class VisitFlusher {
  readonly pool: Pool;
  /** UTC days whose partition exists (partitions are never dropped by Sluice itself). */
  private readonly partitions = new Set<string>();

  constructor(pool: Pool) {
    this.pool = pool;
  }

  /**
   * Commits `batch`, then calls `onCommit(committedAt)` (which acknowledges the requests)
   * before recording the lag. Throws when the batch could not be stored; an error after
   * COMMIT was sent is never retried, since the commit may have happened.
   */
  async flush(batch: readonly Visit[], onCommit: (committedAt: number) => void): Promise<void> {
    const started = performance.now();
    const r = rollup(batch);
    for (let attempt = 1; ; attempt++) {
      let committing = false;
      try {
        await this.ensurePartitions(r.days);
        const client = await this.pool.connect();
        let broken: Error | undefined;
        try {
          await client.query('BEGIN');
          await copyVisits(client, batch);
          await appendRollups(client, r);
          committing = true;
          await client.query('COMMIT');
        } catch (err) {
          broken = err as Error;
          if (!committing) await client.query('ROLLBACK').catch(() => {});
          throw err;
        } finally {
          // A client whose connection failed must not go back to the pool.
          client.release(broken && isConnectionError(broken) ? broken : undefined);
        }
      } catch (err) {
        const action = RETRY[errCode(err)];
        if (committing || !action || attempt >= MAX_ATTEMPTS) throw err;
        if (action === 'partition') this.partitions.clear();
        if (action === 'backoff') await delay(50 * 2 ** attempt);
        continue;
      }
      const committedAt = Date.now();
      flushDuration.observe((performance.now() - started) / 1000);
      flushBatchSize.observe(batch.length);
      onCommit(committedAt);
      await this.recordLag(batch, committedAt);
      return;
    }
  }

  private async ensurePartitions(days: readonly string[]): Promise<void> {
    for (const day of days) {
      if (this.partitions.has(day)) continue;
      await ensurePartition(this.pool, day);
      this.partitions.add(day);
    }
  }

  /**
   * Lag is advisory: failing to record it must not fail the (already committed) flush.
   * The visits of one request share their receipt time and sit next to each other in the
   * batch, so the histogram gets one observation per run of equal receipt times: a request's
   * visits, or several requests received in the same millisecond (at thousands of requests a
   * second, most are). It counts receipt milliseconds, not requests; the table's sum, count and
   * maximum stay per visit.
   */
  private async recordLag(batch: readonly Visit[], committedAt: number): Promise<void> {
    let sum = 0;
    let max = 0;
    for (let i = 0; i < batch.length; ) {
      const receivedAt = batch[i]!.receivedAt;
      let j = i + 1;
      while (j < batch.length && batch[j]!.receivedAt === receivedAt) j++;
      const lag = committedAt - receivedAt;
      sum += lag * (j - i);
      if (lag > max) max = lag;
      ingestLag.observe(lag / 1000);
      i = j;
    }
    const second = new Date(committedAt - (committedAt % 1000)).toISOString();
    await addLag(this.pool, { second, visits: batch.length, sumMs: sum, maxMs: max }).catch(() => {});
  }
}

function errCode(err: unknown): string {
  return String((err as { code?: unknown }).code ?? '');
}

function isConnectionError(err: Error): boolean {
  const code = errCode(err);
  return code.startsWith('08') || code.startsWith('57P') || code.startsWith('E') || /terminat|connection/i.test(err.message);
}
