/**
 * One sync of the provider feed: fetch (streamed), parse (streamed), check each event,
 * stage in batches, merge set-based, commit, announce. Each attempt runs in one transaction,
 * so /search sees a whole fetch or nothing of it; the sync record is written either way.
 *
 * A failed sync never throws at the caller (it is recorded and returned): only losing the
 * database while recording it does.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { errorMessage, InvalidFileError } from '../../core/errors.ts';
import { redactUrl } from '../../config.ts';
import type { Pool } from '../../db/pool.ts';
import {
  bumpFeedVersion,
  createStage,
  finishSync,
  insertRejects,
  insertSync,
  mergeStage,
  stageEvents,
  type SyncCounts,
  type SyncTrigger,
} from '../../db/sql/events.ts';
import { XmlEventsReader, type RawFeedEvent } from '../../formats/xml-events-reader.ts';
import { checkFeedEvent, type FeedEvent, type FeedReject } from './feed-event.ts';
import { fetchFeed, ProviderError, type FetchFeedOptions } from './fetch-feed.ts';
import { providerEvents, providerSyncs, providerSyncSeconds } from './metrics.ts';

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
}

/** Zones per staged batch: bounds a batch's memory (~75 bytes of JSON per zone). */
const MAX_BATCH_ZONES = 50_000;

/**
 * Characters of zones JSON and titles per staged batch (16 Mi): attributes may be long (up to
 * the reader's 1 Mi characters each), and 1,000 such events would hold gigabytes.
 */
const MAX_BATCH_CHARS = 1 << 24;

/** SQLSTATEs worth another attempt: serialization failure, deadlock, shutdown in progress. */
const RETRYABLE_SQLSTATE = new Set(['40001', '40P01', '57P01', '57P03', '08006', '08003']);

function retryable(err: unknown): boolean {
  if (err instanceof ProviderError) return err.retryable;
  if (err instanceof InvalidFileError) return false; // the same bytes will not parse better
  const code = (err as { code?: string }).code;
  return code !== undefined && (RETRYABLE_SQLSTATE.has(code) || code === 'ECONNRESET');
}

/** Runs one sync of `options.url` and records it in provider_syncs. */
export async function syncEvents(pool: Pool, options: SyncOptions): Promise<SyncResult> {
  const started = performance.now();
  const syncId = await insertSync(pool, redactUrl(options.url), options.trigger ?? 'cli');
  const retries = options.retries ?? 2;
  const backoff = options.backoffMs ?? 1000;
  let counts: SyncCounts = emptyCounts();
  let lastError: unknown;
  for (let attempt = 1; attempt <= retries + 1; attempt++) {
    try {
      const r = await attemptSync(pool, syncId, options, attempt);
      counts = r.counts;
      providerSyncs.inc({ status: 'completed' });
      providerEvents.inc({ outcome: 'changed' }, counts.eventsChanged);
      // eventsChanged also counts absent events that followed their base event: clamp.
      providerEvents.inc({ outcome: 'unchanged' }, Math.max(0, counts.eventsSeen - counts.eventsRejected - counts.eventsChanged));
      providerEvents.inc({ outcome: 'rejected' }, counts.eventsRejected);
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
  const message = errorMessage(lastError);
  await finishSync(pool, syncId, 'failed', counts, message);
  providerSyncs.inc({ status: 'failed' });
  const durationMs = performance.now() - started;
  providerSyncSeconds.observe(durationMs / 1000);
  return { syncId, status: 'failed', ...counts, error: message, durationMs };
}

function emptyCounts(): SyncCounts {
  return { attempts: 0, bytes: 0, eventsSeen: 0, eventsNew: 0, eventsChanged: 0, eventsRejected: 0 };
}

/** One attempt in one transaction; on failure rolls back and throws (with counts attached). */
async function attemptSync(pool: Pool, syncId: number, options: SyncOptions, attempt: number) {
  const batchSize = options.batchSize ?? 1000;
  const client = await pool.connect();
  const counts: SyncCounts = { ...emptyCounts(), attempts: attempt };
  let pending: FeedEvent[] = [];
  let pendingZones = 0;
  let pendingChars = 0;
  let rejects: FeedReject[] = [];
  let staged = 0;
  let broken = false;
  // A checked-out client has no pool error listener: a connection dropped while we wait on
  // the provider would emit an unhandled 'error' and crash the process. Keep it as a failure.
  let clientError: Error | undefined;
  const onClientError = (err: Error) => {
    clientError = err;
    broken = true;
  };
  client.on('error', onClientError);
  const reader = new XmlEventsReader((raw: RawFeedEvent) => {
    counts.eventsSeen += 1;
    const checked = checkFeedEvent(raw);
    if (checked.ok) {
      pending.push(checked.event);
      pendingZones += checked.event.zones.length;
      pendingChars += checked.event.zonesJson.length + checked.event.title.length;
    } else rejects.push(checked.reject);
  });
  // Flushes what the parser produced. One batch is written while the next one is parsed
  // (Postgres and Node work in parallel); memory holds at most two batches and a chunk.
  let writing: Promise<void> = Promise.resolve();
  let writeError: unknown;
  const write = async (job: () => Promise<void>) => {
    await writing;
    if (writeError) throw writeError;
    // Caught at once: a rejection nobody awaits yet would crash the process.
    writing = job().catch((err: unknown) => {
      writeError ??= err;
    });
  };
  const flush = async (all: boolean) => {
    if (pending.length >= batchSize || pendingZones >= MAX_BATCH_ZONES || pendingChars >= MAX_BATCH_CHARS || (all && pending.length)) {
      const batch = pending;
      const first = staged;
      pending = [];
      pendingZones = 0;
      pendingChars = 0;
      staged += batch.length;
      await write(() => stageEvents(client, batch, first));
    }
    if (rejects.length >= batchSize || (all && rejects.length)) {
      const batch = rejects;
      rejects = [];
      counts.eventsRejected += batch.length;
      await write(() => insertRejects(client, syncId, batch));
    }
    if (all) {
      await writing;
      if (writeError) throw writeError;
    }
  };
  try {
    await client.query('BEGIN');
    await createStage(client);
    for await (const chunk of fetchFeed(options.url, options)) {
      if (clientError) throw clientError;
      reader.write(chunk);
      await flush(false);
    }
    reader.end();
    await flush(true);
    counts.bytes = reader.bytes;
    const merged = await mergeStage(client, syncId);
    counts.eventsNew = merged.eventsNew;
    counts.eventsChanged = merged.eventsChanged;
    const version = merged.eventsChanged > 0 ? await bumpFeedVersion(client) : undefined;
    await finishSync(client, syncId, 'completed', counts);
    await client.query('COMMIT');
    return { counts, version };
  } catch (err) {
    await writing;
    // A connection that cannot even roll back is dropped, not returned to the pool.
    await client.query('ROLLBACK').catch(() => {
      broken = true;
    });
    counts.bytes = reader.bytes;
    // Rejects of a failed attempt were rolled back with it: count none, report what was read.
    counts.eventsRejected = 0;
    throw Object.assign(err instanceof Error ? err : new Error(String(err)), { counts });
  } finally {
    client.off('error', onClientError);
    client.release(broken);
  }
}
