/**
 * The group-commit buffer: requests add their visits and wait; a flush commits everything
 * buffered in a single transaction and then releases every request it carried. Throughput
 * therefore grows with load (a flush takes whatever arrived since the previous one) while
 * each request is acknowledged only once its visits are durable.
 *
 * Scheduling: a flush starts `flushIntervalMs` after the oldest waiting visit arrived, or
 * at once when `maxBatch` visits wait, as long as fewer than `concurrency` flushes of this
 * process are running. Flushes take no row locks from each other (see
 * src/db/sql/visits.ts), so a second one can COPY while the first waits for its fsync.
 *
 * Deadline: a request waits at most `timeoutMs` from its arrival, queued or flushing. A flush
 * ends by the deadline of its oldest request (see flush.ts), so a stuck database turns into
 * 503s, never into requests or a shutdown that hang.
 */
import { SluiceError } from '../../core/errors.ts';
import { intEnv } from '../../config.ts';
import type { Pool } from '../../db/pool.ts';
import { FlushDeadlineError, VisitFlusher } from './flush.ts';
import { countCommitted, pendingVisits, visitsRejected } from './metrics.ts';
import type { Visit } from './visit.ts';

export interface IngestOptions {
  /** Longest wait of a visit before its flush starts (default SLUICE_VISITS_FLUSH_MS or 50 ms). */
  flushIntervalMs?: number;
  /** Most visits in one flush; reaching it flushes at once (default 20,000). */
  maxBatch?: number;
  /** Most visits waiting before new requests get 503 (default SLUICE_VISITS_MAX_PENDING or 200,000). */
  maxPending?: number;
  /**
   * Most memory the waiting visits may hold, estimated (visitBytes), before new requests get
   * 503 (default SLUICE_VISITS_MAX_PENDING_MB or 64 MiB). The count alone let 200,000 visits
   * with 2,048-character paths hold about a gigabyte while the database was slow.
   */
  maxPendingBytes?: number;
  /** Flushes running at once (default SLUICE_VISITS_FLUSHES or 2). */
  concurrency?: number;
  /**
   * Longest wait of a request for its visits to commit, from its arrival (default
   * SLUICE_VISITS_TIMEOUT_MS or 5,000 ms); then it gets 503 and its flush is rolled back.
   */
  timeoutMs?: number;
  /** Called after each committed flush (the visitor applier listens). */
  onFlushed?: () => void;
}

/**
 * Estimated heap bytes of a waiting visit: its two strings at 2 bytes per character (V8 keeps
 * non-Latin-1 text in two-byte strings; Latin-1 text takes half), plus the object and its
 * share of the request's entry.
 */
export function visitBytes(v: Visit): number {
  return 2 * (v.visitorId.length + v.pagePath.length) + 96;
}

interface Entry {
  visits: readonly Visit[];
  /** visitBytes of its visits. */
  bytes: number;
  at: number;
  resolve: () => void;
  reject: (err: Error) => void;
}

export class IngestBuffer {
  private readonly flusher: VisitFlusher;
  private readonly interval: number;
  private readonly maxBatch: number;
  private readonly maxPending: number;
  private readonly maxPendingBytes: number;
  private readonly concurrency: number;
  private readonly timeoutMs: number;
  private readonly onFlushed: () => void;
  private queue: Entry[] = [];
  private queued = 0;
  private queuedBytes = 0;
  private timer: NodeJS.Timeout | undefined;
  private readonly flushing = new Set<Promise<void>>();
  private closed = false;

  constructor(pool: Pool, options: IngestOptions = {}) {
    this.flusher = new VisitFlusher(pool);
    this.interval = options.flushIntervalMs ?? intEnv('SLUICE_VISITS_FLUSH_MS', 50);
    this.maxBatch = options.maxBatch ?? 20_000;
    this.maxPending = options.maxPending ?? intEnv('SLUICE_VISITS_MAX_PENDING', 200_000);
    this.maxPendingBytes = options.maxPendingBytes ?? intEnv('SLUICE_VISITS_MAX_PENDING_MB', 64) * 2 ** 20;
    this.concurrency = Math.max(1, options.concurrency ?? intEnv('SLUICE_VISITS_FLUSHES', 2));
    this.timeoutMs = options.timeoutMs ?? intEnv('SLUICE_VISITS_TIMEOUT_MS', 5000);
    this.onFlushed = options.onFlushed ?? (() => {});
  }

  /** Visits waiting for a flush. */
  get pending(): number {
    return this.queued;
  }

  /** Resolves once `visits` are committed; rejects (503) when they cannot be taken or stored. */
  add(visits: readonly Visit[]): Promise<void> {
    if (this.closed) {
      visitsRejected.inc({ reason: 'closing' }, visits.length);
      return Promise.reject(new SluiceError('unavailable', 'the server is shutting down; retry on another instance'));
    }
    let bytes = 0;
    for (const v of visits) bytes += visitBytes(v);
    if (this.queued + visits.length > this.maxPending || this.queuedBytes + bytes > this.maxPendingBytes) {
      visitsRejected.inc({ reason: 'overloaded' }, visits.length);
      return Promise.reject(new SluiceError('unavailable', 'too many visits waiting to be stored; retry shortly'));
    }
    const done = new Promise<void>((resolve, reject) => {
      this.queue.push({ visits, bytes, at: Date.now(), resolve, reject });
    });
    this.queued += visits.length;
    this.queuedBytes += bytes;
    pendingVisits.inc(visits.length);
    this.schedule();
    return done;
  }

  /**
   * Stops taking visits and flushes every waiting one (call on shutdown). Each flush ends by
   * its deadline, so this returns within about the timeout even if the database is stuck.
   */
  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    while (this.flushing.size > 0 || this.queued > 0) {
      this.schedule();
      if (this.flushing.size === 0) break;
      await Promise.race(this.flushing);
    }
  }

  private schedule(): void {
    if (this.queued === 0 || this.flushing.size >= this.concurrency) return;
    if (this.queued >= this.maxBatch || this.closed) {
      this.start();
      return;
    }
    if (this.timer) return;
    const wait = Math.max(0, this.queue[0]!.at + this.interval - Date.now());
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.start();
    }, wait);
  }

  /** Starts one flush of the oldest waiting requests, whole requests only. */
  private start(): void {
    if (this.queued === 0 || this.flushing.size >= this.concurrency) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    // Whole requests: a request is acknowledged by exactly one transaction.
    let take = 0;
    let count = 0;
    let bytes = 0;
    while (take < this.queue.length && (take === 0 || count + this.queue[take]!.visits.length <= this.maxBatch)) {
      count += this.queue[take]!.visits.length;
      bytes += this.queue[take]!.bytes;
      take++;
    }
    const entries = this.queue.splice(0, take);
    this.queued -= count;
    this.queuedBytes -= bytes;
    const batch: Visit[] = entries.length === 1 ? (entries[0]!.visits as Visit[]) : entries.flatMap((e) => e.visits);
    const flush: Promise<void> = this.flushEntries(entries, batch).finally(() => {
      this.flushing.delete(flush);
      pendingVisits.dec(count);
      this.schedule();
    });
    this.flushing.add(flush);
    // More than a batch waiting: start the next flush too, if allowed.
    this.schedule();
  }

  private async flushEntries(entries: Entry[], batch: Visit[]): Promise<void> {
    try {
      // The oldest request (the first: the queue is in arrival order) sets the deadline.
      const deadline = entries[0]!.at + this.timeoutMs;
      await this.flusher.flush(
        batch,
        (committedAt) => {
          countCommitted(batch.length, committedAt);
          for (const e of entries) e.resolve();
        },
        deadline,
      );
      this.onFlushed();
    } catch (err) {
      visitsRejected.inc({ reason: 'failed' }, batch.length);
      const why =
        err instanceof FlushDeadlineError
          ? `were not stored within ${this.timeoutMs} ms (the database is unavailable or too slow)`
          : 'could not be stored (the database is unavailable)';
      const failure = new SluiceError('unavailable', `the visits ${why}; nothing was acknowledged, retry`, { cause: err });
      for (const e of entries) e.reject(failure);
    }
  }
}
