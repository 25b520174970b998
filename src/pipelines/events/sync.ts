/**
 * One sync of the provider feed: fetch (streamed), parse (streamed), check each event,
 * stage in batches, merge set-based, commit, announce. Each attempt runs in one transaction,
 * so /search sees a whole fetch or nothing of it; the sync record is written either way.
 *
 * A failed sync never throws at the caller (it is recorded and returned): only losing the
 * database while recording it does, after a few tries. The row is then left `running`, and
 * the sweep that starts every sync (and the serve service) fails it once its owner lock is
 * free (sync-owner.ts).
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { errorMessage, InvalidFileError } from '../../core/errors.ts';
import { maskUrlPasswords, withoutPassword } from '../../core/url-credentials.ts';
import type { Client, Pool } from '../../db/pool.ts';
import { errorCode, isDatabaseUnavailable } from '../../db/unavailable.ts';
import {
  bumpFeedVersion,
  createStage,
  failInterruptedSyncs,
  finishSync,
  insertRejects,
  mergeStage,
  stageCopy,
  startFetch,
  type SyncCounts,
  type SyncTrigger,
} from '../../db/sql/events.ts';
import { FeedRootError } from '../../formats/xml-events-reader.ts';
import { fetchFeed, ProviderError, type FetchFeedOptions } from './fetch-feed.ts';
import { providerEvents, providerSyncs, providerSyncSeconds } from './metrics.ts';
import { ParseThread } from './parse-thread.ts';
import { SyncOwner } from './sync-owner.ts';

export interface SyncOptions extends FetchFeedOptions {
  url: string;
  trigger?: SyncTrigger;
  /** Retries after a failed attempt, for retryable failures only (default 2). */
  retries?: number;
  /** First backoff; doubles per retry, with jitter, at most 30 s (default 1 s). */
  backoffMs?: number;
  /** Events staged per statement (default 1,000). */
  batchSize?: number;
}

export interface SyncResult extends SyncCounts {
  syncId: number;
  status: 'completed' | 'failed';
  error?: string;
  /** The feed version this sync committed, when it changed what /search returns. */
  version?: number;
  durationMs: number;
  /** Syncs of stopped processes that the sweep before this one failed (see failInterruptedSyncs). */
  interruptedSyncs?: number[];
}

/**
 * Database failures worth another attempt: a serialization failure or deadlock, and every
 * way the database goes away while it restarts (src/db/unavailable.ts). A fast or immediate stop ends each session with 57P01 (also pg_terminate_backend) or 57P02,
 * then connections are refused (ECONNREFUSED) until the server is up, and refused with 57P03
 * while it starts. All take the same backoff: an attempt failed by a restart is followed by
 * attempts that meet the rest of it. (Without ECONNREFUSED here the sync gave up at the first
 * refused connection, and could not record that either: its row stayed `running`.)
 */
const CONFLICTS = new Set([
  '40001', // serialization_failure
  '40P01', // deadlock_detected
]);

/** Whether a database failure may pass (the server restarting, a lost connection, a conflict). */
export function retryableDbError(err: unknown): boolean {
  const code = errorCode(err);
  return isDatabaseUnavailable(err) || (code !== undefined && CONFLICTS.has(code));
}

/** Whether another attempt of a sync that failed with `err` may succeed. */
export function retryable(err: unknown): boolean {
  if (err instanceof ProviderError) return err.retryable;
  // An error page served with 200 (its root is not <eventList>): the provider's trouble, like an
  // HTTP 5xx, 408 or 429, so it is retried like them; and, like every failed sync, it counts
  // toward the scheduler's circuit breaker.
  if (err instanceof FeedRootError) return true;
  if (err instanceof InvalidFileError) return false; // the same bytes will not parse better
  return retryableDbError(err);
}

/**
 * Waits between tries of writing a failed sync's outcome: about 4 s in all, on top of the
 * attempts' backoff, for a restarting database. After that the sweep records it.
 */
const RECORD_BACKOFF_MS = [250, 500, 1000, 2000];

/** Runs one sync of `options.url` and records it in provider_syncs. */
export async function syncEvents(pool: Pool, options: SyncOptions): Promise<SyncResult> {
  const started = performance.now();
  // Syncs whose process died (their owner lock is free) are failed first: one statement.
  const interrupted = await failInterruptedSyncs(pool);
  const owner = await SyncOwner.start(pool, withoutPassword(options.url), options.trigger ?? 'cli');
  try {
    const result = await runSync(pool, owner, options, started);
    return interrupted.length ? { ...result, interruptedSyncs: interrupted } : result;
  } finally {
    // After the outcome is written: until then the lock says the sync is alive.
    await owner.release();
  }
}

/** The attempts of a started sync, and its outcome recorded. */
async function runSync(pool: Pool, owner: SyncOwner, options: SyncOptions, started: number): Promise<SyncResult> {
  const syncId = owner.syncId;
  const retries = options.retries ?? 2;
  const backoff = options.backoffMs ?? 1000;
  let counts: SyncCounts = emptyCounts();
  let lastError: unknown;
  for (let attempt = 1; attempt <= retries + 1; attempt++) {
    try {
      const r = await attemptSync(owner, options, attempt);
      counts = r.counts;
      providerSyncs.inc({ status: 'completed' });
      providerEvents.inc({ outcome: 'changed' }, counts.eventsChanged);
      // eventsChanged also counts absent events that followed their base event: clamp.
      providerEvents.inc(
        { outcome: 'unchanged' },
        Math.max(0, counts.eventsSeen - counts.eventsRejected - counts.eventsChanged - counts.eventsSuperseded),
      );
      providerEvents.inc({ outcome: 'rejected' }, counts.eventsRejected);
      providerEvents.inc({ outcome: 'superseded' }, counts.eventsSuperseded);
      const durationMs = performance.now() - started;
      providerSyncSeconds.observe(durationMs / 1000);
      return { syncId, status: 'completed', ...counts, ...(r.version ? { version: r.version } : {}), durationMs };
    } catch (err) {
      lastError = err;
      counts = { ...emptyCounts(), attempts: attempt, ...(err as { counts?: SyncCounts }).counts };
      if (!retryable(err) || attempt > retries || options.signal?.aborted) break;
      const wait = Math.min(backoff * 2 ** (attempt - 1), 30_000) * (0.5 + Math.random() / 2);
      try {
        await sleep(wait, undefined, options.signal ? { signal: options.signal } : {});
      } catch {
        break; // stopped while waiting
      }
    }
  }
  // Whatever failed may quote the feed URL: its password is never recorded, printed or logged.
  const message = maskUrlPasswords(errorMessage(lastError));
  await recordFailure(pool, syncId, counts, message, options.signal);
  providerSyncs.inc({ status: 'failed' });
  const durationMs = performance.now() - started;
  providerSyncSeconds.observe(durationMs / 1000);
  return { syncId, status: 'failed', ...counts, error: message, durationMs };
}

/**
 * Writes a failed outcome, through any connection of the pool, retrying a lost database a few
 * times (RECORD_BACKOFF_MS). Throws when it still cannot, or at once when stopping (shutdown
 * does not wait for the database): the sweep fails the row once this process's lock is gone.
 */
async function recordFailure(pool: Pool, syncId: number, counts: SyncCounts, message: string, signal?: AbortSignal): Promise<void> {
  for (let i = 0; ; i++) {
    try {
      await finishSync(pool, syncId, 'failed', counts, message);
      return;
    } catch (err) {
      const wait = RECORD_BACKOFF_MS[i];
      if (wait === undefined || !retryableDbError(err) || signal?.aborted) {
        throw new Error(`sync ${syncId} failed (${message}), and recording that failed: ${errorMessage(err)}`, { cause: err });
      }
      await sleep(wait);
    }
  }
}

function emptyCounts(): SyncCounts {
  return { attempts: 0, bytes: 0, eventsSeen: 0, eventsNew: 0, eventsChanged: 0, eventsRejected: 0, eventsSuperseded: 0 };
}

/**
 * One attempt in one transaction, on the owner's connection; on failure rolls back and throws
 * (with counts attached). The feed is parsed, checked and turned into COPY text on a parse
 * thread (parse-thread.ts): this thread only fetches, and writes what the parse thread sends,
 * so a big feed does not hold the event loop (`sluice serve`'s requests) meanwhile. One batch is
 * written while the next one is parsed; memory holds at most two batches and a few chunks.
 */
async function attemptSync(owner: SyncOwner, options: SyncOptions, attempt: number) {
  const syncId = owner.syncId;
  const counts: SyncCounts = { ...emptyCounts(), attempts: attempt };
  // Started first: its start-up (~0.1 s) overlaps the connection, BEGIN and the request.
  const parser = new ParseThread({
    batchSize: options.batchSize ?? 1000,
    onBatch: async (batch) => {
      if (batch.copy) await stageCopy(client, batch.copy);
      if (batch.rejects.length) {
        counts.eventsRejected += batch.rejects.length;
        await insertRejects(client, syncId, batch.rejects);
      }
    },
  });
  let client: Client;
  try {
    client = await owner.connection();
  } catch (err) {
    await parser.close();
    throw err;
  }
  let broken = false;
  // A connection dropped while we wait on the provider: the attempt fails with its error at
  // once (the fetch is aborted) instead of after the rest of a download it cannot store.
  let clientError: Error | undefined;
  const lost = new AbortController();
  const onClientError = (err: Error) => {
    clientError ??= err;
    broken = true;
    lost.abort();
  };
  client.on('error', onClientError);
  try {
    // Numbered before the request is sent, and committed at once (outside the attempt's
    // transaction): the merge lets this fetch overwrite stored values only if it started
    // after every fetch merged before it (mergeStage).
    const fetchSeq = await startFetch(client, syncId);
    await client.query('BEGIN');
    await createStage(client);
    const signal = options.signal ? AbortSignal.any([options.signal, lost.signal]) : lost.signal;
    for await (const chunk of fetchFeed(options.url, { ...options, signal })) {
      if (clientError) throw clientError;
      await parser.write(chunk);
    }
    const read = await parser.end();
    counts.bytes = read.bytes;
    counts.eventsSeen = read.eventsSeen;
    const merged = await mergeStage(client, syncId, fetchSeq);
    counts.eventsNew = merged.eventsNew;
    counts.eventsChanged = merged.eventsChanged;
    counts.eventsSuperseded = merged.eventsSuperseded;
    const version = merged.eventsChanged > 0 ? await bumpFeedVersion(client) : undefined;
    await finishSync(client, syncId, 'completed', counts);
    await client.query('COMMIT');
    return { counts, version };
  } catch (caught) {
    // Ends the thread and waits for a batch being written: ROLLBACK comes after its COPY.
    await parser.close();
    // The lost connection is the cause, not the fetch it aborted ("sync stopped").
    const err = clientError ?? caught;
    // A connection that cannot even roll back is replaced for the next attempt.
    await client.query('ROLLBACK').catch(() => {
      broken = true;
    });
    counts.bytes = parser.progress.bytes;
    counts.eventsSeen = parser.progress.eventsSeen;
    // Rejects of a failed attempt were rolled back with it: count none, report what was read.
    counts.eventsRejected = 0;
    throw Object.assign(err instanceof Error ? err : new Error(String(err)), { counts });
  } finally {
    // MUST end the thread on every path: a thread left running keeps the process alive.
    await parser.close();
    client.off('error', onClientError);
    if (broken) owner.markBroken();
  }
}
