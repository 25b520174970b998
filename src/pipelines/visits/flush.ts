/**
 * One flush: the group-commit transaction that makes a batch of visits durable. COPY the
 * visits, append the batch's counts to the rollups and queue its visitor updates, COMMIT;
 * only then may the requests be acknowledged. The rollups are in the same transaction, so
 * whatever crashes, they equal the visits stored.
 *
 * A flush has a deadline (its oldest request's arrival plus the ingest timeout): past it, the
 * flush gives up and its requests get 503. PostgreSQL enforces it too (transaction_timeout),
 * so a transaction stuck behind a lock is rolled back at the deadline instead of holding a
 * pool client, and with it a shutdown, for as long as the lock is held.
 */
import { setTimeout as delay } from 'node:timers/promises';
import { SluiceError } from '../../core/errors.ts';
import type { Client, Pool } from '../../db/pool.ts';
import { errorCode, isDatabaseUnavailable } from '../../db/unavailable.ts';
import { addLag, appendRollups, beginWithin, copyVisits, ensurePartition } from '../../db/sql/visits.ts';
import { flushBatchSize, flushDuration, ingestLag } from './metrics.ts';
import { rollup } from './rollup.ts';
import type { Visit } from './visit.ts';

type RetryAction = 'now' | 'backoff' | 'partition';

/**
 * What to do with a failed attempt, by SQLSTATE (graphile-worker's table): a serialisation
 * failure is retried at once, a missing partition after creating it.
 */
const RETRY: Record<string, RetryAction> = {
  '40P01': 'now', // deadlock_detected (not expected: the flush takes no shared row locks)
  '40001': 'now', // serialization_failure
  '23514': 'partition', // check_violation: "no partition of relation visits found for row"
};

/**
 * The retry action for a failed attempt, or undefined when retrying cannot help. A database
 * that went away or is restarting (src/db/unavailable.ts): after a backoff.
 */
function retryAction(err: unknown): RetryAction | undefined {
  if (isDatabaseUnavailable(err)) return 'backoff';
  const code = errorCode(err);
  return code !== undefined && Object.hasOwn(RETRY, code) ? RETRY[code] : undefined;
}

/** The flush did not commit before its deadline; its requests get 503. */
export class FlushDeadlineError extends SluiceError {
  constructor(options?: { cause?: unknown }) {
    super('unavailable', 'the flush did not commit before its deadline', options);
  }
}

const MAX_ATTEMPTS = 4;

export class VisitFlusher {
  readonly pool: Pool;
  /** UTC days whose partition exists (partitions are never dropped by Sluice itself). */
  private readonly partitions = new Set<string>();

  constructor(pool: Pool) {
    this.pool = pool;
  }

  /**
   * Commits `batch` before `deadline` (epoch ms), then calls `onCommit(committedAt)` (which
   * acknowledges the requests) before recording the lag. Throws when the batch could not be
   * stored (FlushDeadlineError when time ran out); an error after COMMIT was sent is never
   * retried, since the commit may have happened.
   */
  async flush(batch: readonly Visit[], onCommit: (committedAt: number) => void, deadline: number): Promise<void> {
    const started = performance.now();
    const r = rollup(batch);
    // Milliseconds left before the deadline; throws once there are none.
    const left = (cause?: unknown): number => {
      const ms = deadline - Date.now();
      if (ms <= 0) throw new FlushDeadlineError({ cause });
      return ms;
    };
    let lastError: unknown;
    for (let attempt = 1; ; attempt++) {
      let committing = false;
      try {
        left(lastError);
        const client = await connectBy(this.pool, deadline);
        try {
          await this.ensurePartitions(client, r.days, left);
          await beginWithin(client, left());
          await copyVisits(client, batch);
          await appendRollups(client, r);
          committing = true;
          await client.query('COMMIT');
        } catch (err) {
          // A client whose connection failed (its ROLLBACK fails too), or whose COMMIT failed,
          // must not go back to the pool.
          const usable = !committing && (await client.query('ROLLBACK').then(() => true, () => false));
          client.release(usable ? undefined : (err as Error));
          throw err;
        }
        client.release();
      } catch (err) {
        if (committing || err instanceof FlushDeadlineError) throw err;
        // 25P04: PostgreSQL ended the transaction at the deadline (transaction_timeout).
        if (errorCode(err) === '25P04' || Date.now() >= deadline) throw new FlushDeadlineError({ cause: err });
        const action = retryAction(err);
        if (!action || attempt >= MAX_ATTEMPTS) throw err;
        lastError = err;
        if (action === 'partition') this.partitions.clear();
        if (action === 'backoff') {
          const wait = 50 * 2 ** attempt;
          if (wait >= left(err)) throw new FlushDeadlineError({ cause: err });
          await delay(wait);
        }
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

  /**
   * Creates the partitions the batch needs, on the flush's connection, each in its own short
   * transaction bounded by the deadline (a partition must not be created inside the flush's
   * transaction, which would hold its lock on `visits` until the COMMIT).
   */
  private async ensurePartitions(client: Client, days: readonly string[], left: () => number): Promise<void> {
    for (const day of days) {
      if (this.partitions.has(day)) continue;
      await beginWithin(client, left());
      await ensurePartition(client, day);
      await client.query('COMMIT');
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

/**
 * pool.connect(), given up at `deadline`: with a stuck database the pool's clients may all be
 * busy. A client that arrives after the deadline goes straight back to the pool.
 */
async function connectBy(pool: Pool, deadline: number): Promise<Client> {
  const pending = pool.connect();
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new FlushDeadlineError()), deadline - Date.now());
  });
  try {
    return await Promise.race([pending, expired]);
  } catch (err) {
    pending.then((c) => c.release(), () => {});
    throw err;
  } finally {
    clearTimeout(timer);
  }
}

