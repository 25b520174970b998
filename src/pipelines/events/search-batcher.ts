/**
 * Gathers concurrent /search reads into few statements, as group commit does for writes.
 *
 * Why: on loopback a query's cost is not its execution (a range scan of ~0.1 ms) but the
 * round trip around it: writes and wake-ups of the server and a Postgres backend, and the
 * backend's per-statement work. Under load those dominate, so every search that misses the
 * cache (or every search with the cache off) paying its own round trip caps throughput far
 * below what the data work allows.
 *
 * How: at most `concurrency` statements are in flight. A search arriving while a slot is
 * free is sent at once (after the current I/O callbacks, so searches parsed together go
 * together); otherwise it waits in the pending batch, which is sent, whole, as soon as a
 * statement returns. Identical ranges in one batch are read once.
 *
 * Failure: a statement fails whole, so one search that Postgres refuses (a data exception,
 * SQLSTATE class 22, e.g. a bound out of its range) would fail every search sharing it.
 * Such a failed batch is retried one search per statement, so only the bad one fails. Other
 * failures (a lost connection, a missing database) fail the batch's searches at once:
 * retrying each would multiply the load on a database that is already in trouble.
 *
 * Freshness: a search only ever joins a batch that has not been sent yet, so the snapshot
 * it is answered from is taken after it arrived: it sees every sync committed before it,
 * exactly as a query of its own would.
 */
import type { Pool } from '../../db/pool.ts';
import { searchEventsBatch, type SearchBatchResult, type SearchRange } from '../../db/sql/events.ts';
import type { Loaded } from './search-cache.ts';

export interface SearchBatcherOptions {
  /** Statements in flight at once (default 2: one executing while the next is gathered, on 2 cores). */
  concurrency?: number;
  /** Distinct ranges per statement (default 256); more wait for the next statement. */
  maxBatch?: number;
}

/** A range's key: equal for identical ranges (also the /search cache key). */
export function searchKey(range: SearchRange): string {
  return `${range.startsAt ?? ''}|${range.endsAt ?? ''}`;
}

/** SQLSTATE class 22, data exception: the statement's values were refused, not the database. */
function dataException(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' && code.startsWith('22');
}

function answer(batch: readonly Waiter[], r: SearchBatchResult): void {
  for (let i = 0; i < batch.length; i++) {
    const w = batch[i]!;
    const a = { version: r.version, body: Buffer.from(r.bodies[i]!) };
    w.resolve(a);
    for (const j of w.joined) j.resolve(a);
  }
}

function fail(w: Waiter, err: unknown): void {
  w.reject(err);
  for (const j of w.joined) j.reject(err);
}

interface Waiter {
  range: SearchRange;
  resolve: (answer: Loaded) => void;
  reject: (err: unknown) => void;
  /** Same range, same batch: answered together. */
  joined: Array<Pick<Waiter, 'resolve' | 'reject'>>;
}

export class SearchBatcher {
  private readonly pool: Pool;
  private readonly concurrency: number;
  private readonly maxBatch: number;
  private pending = new Map<string, Waiter>();
  private inFlight = 0;
  private scheduled = false;

  constructor(pool: Pool, options: SearchBatcherOptions = {}) {
    this.pool = pool;
    this.concurrency = Math.max(1, options.concurrency ?? 2);
    this.maxBatch = Math.max(1, options.maxBatch ?? 256);
  }

  /**
   * The events in `range` as a response body with the feed version it was read at (what
   * SearchCache loads), from a snapshot taken after this call. Identical searches of one
   * batch share the body.
   */
  search(range: SearchRange, key = searchKey(range)): Promise<Loaded> {
    return new Promise((resolve, reject) => {
      const same = this.pending.get(key);
      if (same) same.joined.push({ resolve, reject });
      else this.pending.set(key, { range, resolve, reject, joined: [] });
      this.schedule();
    });
  }

  /** Sends the pending batch once the current I/O callbacks ran, if a slot is free. */
  private schedule(): void {
    if (this.scheduled || this.inFlight >= this.concurrency) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      this.send();
    });
  }

  private send(): void {
    while (this.pending.size > 0 && this.inFlight < this.concurrency) {
      let batch: Waiter[];
      if (this.pending.size <= this.maxBatch) {
        batch = [...this.pending.values()];
        this.pending = new Map();
      } else {
        batch = [];
        for (const [key, w] of this.pending) {
          if (batch.length === this.maxBatch) break;
          batch.push(w);
          this.pending.delete(key);
        }
      }
      this.inFlight++;
      void this.run(batch).finally(() => this.settled());
    }
  }

  /** Answers a batch in one statement; never rejects (each search is settled instead). */
  private async run(batch: Waiter[]): Promise<void> {
    try {
      answer(batch, await searchEventsBatch(this.pool, batch.map((w) => w.range)));
    } catch (err) {
      if (batch.length === 1 || !dataException(err)) {
        for (const w of batch) fail(w, err);
        return;
      }
      // Still inside this batch's slot: a bad batch costs its own statements, not others'.
      await Promise.all(
        batch.map((w) =>
          searchEventsBatch(this.pool, [w.range]).then(
            (r) => answer([w], r),
            (e: unknown) => fail(w, e),
          ),
        ),
      );
    }
  }

  private settled(): void {
    this.inFlight--;
    // Whatever gathered meanwhile goes now, in one statement.
    if (this.pending.size > 0) this.send();
  }
}
