/**
 * SQL of the provider feed (migrations/0010_events.sql, 0048_fetch_order.sql): sync records,
 * the staging table a sync streams into, the set-based merge, and the /search query. Every statement is
 * parameterised; nothing from the feed or a request becomes SQL text.
 */
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type pg from 'pg';
import { from as copyFrom } from 'pg-copy-streams';
import type { Client, Pool } from '../pool.ts';
import type { FeedEvent, FeedReject } from '../../pipelines/events/feed-event.ts';

type Queryable = Pool | Client | pg.Client;

/** Channel a committed change is announced on (payload: the new feed version). */
export const FEED_CHANNEL = 'sluice_provider_events';

/** Serialises merges of concurrent syncs (several serve processes, a CLI run). */
const MERGE_LOCK = 7_301_010;

export type SyncTrigger = 'cli' | 'schedule' | 'api' | 'test';

export interface SyncRecord {
  id: number;
  url: string;
  trigger: SyncTrigger;
  status: 'running' | 'completed' | 'failed';
  attempts: number;
  bytes: number;
  events_seen: number;
  events_new: number;
  events_changed: number;
  events_rejected: number;
  events_superseded: number;
  error: string | null;
  started_at: Date;
  finished_at: Date | null;
  /** The last attempt's place in the order of fetch starts (see startFetch). */
  fetch_seq: number | null;
  fetch_started_at: Date | null;
}

export interface SyncCounts {
  attempts: number;
  bytes: number;
  eventsSeen: number;
  eventsNew: number;
  eventsChanged: number;
  eventsRejected: number;
  /** Events of the fetch left as stored: a fetch that started later had already written them. */
  eventsSuperseded: number;
}

export async function insertSync(db: Queryable, url: string, trigger: SyncTrigger): Promise<number> {
  const { rows } = await db.query<{ id: number }>('INSERT INTO provider_syncs (url, trigger) VALUES ($1, $2) RETURNING id', [url, trigger]);
  return rows[0]!.id;
}

/**
 * Ends a sync record: completed (inside the merge's transaction), or failed. Never over a
 * completion: that is written in the merge's own transaction, so a failure reported after it
 * (a COMMIT whose answer was lost) is not the truth. A failure overwrites a sweep's
 * SYNC_INTERRUPTED: the owner knows the real error.
 */
export async function finishSync(db: Queryable, id: number, status: 'completed' | 'failed', c: SyncCounts, error?: string): Promise<void> {
  await db.query(
    `UPDATE provider_syncs
        SET status = $2, attempts = $3, bytes = $4, events_seen = $5, events_new = $6,
            events_changed = $7, events_rejected = $8, events_superseded = $9, error = $10,
            finished_at = clock_timestamp()
      WHERE id = $1 AND status <> 'completed'`,
    [id, status, c.attempts, c.bytes, c.eventsSeen, c.eventsNew, c.eventsChanged, c.eventsRejected, c.eventsSuperseded, error ?? null],
  );
}

/**
 * Owner locks of syncs. A sync's connection holds the session lock (SYNC_OWNER_LOCK, id mod
 * 2^31) from the statement that creates its row until its outcome is written: a `running` row
 * whose lock is free has no live owner (its process died, or lost the database). The two-key
 * form keeps these apart from single-key locks such as MERGE_LOCK and the imports' owner locks.
 */
export const SYNC_OWNER_LOCK = 7_301_011;

function ownerLock(fn: 'pg_try_advisory_lock' | 'pg_try_advisory_xact_lock' | 'pg_advisory_unlock', id: string): string {
  return `${fn}(${SYNC_OWNER_LOCK}, (${id} % 2147483648)::int)`;
}

/** The error of a sync whose owner went away while it was `running` (see failInterruptedSyncs). */
export const SYNC_INTERRUPTED = 'interrupted: the process running this sync stopped before it finished';

/**
 * Creates a sync record and takes its owner lock on `client`, in one statement: the lock is
 * held before the row can be seen, so no sweep takes a starting sync for a dead one.
 * `locked` is false only if another session holds the key (never, for a fresh id).
 */
export async function startSync(client: Client | pg.Client, url: string, trigger: SyncTrigger): Promise<{ id: number; locked: boolean }> {
  const { rows } = await client.query<{ id: number; locked: boolean }>(
    `INSERT INTO provider_syncs (url, trigger) VALUES ($1, $2) RETURNING id, ${ownerLock('pg_try_advisory_lock', 'id')} AS locked`,
    [url, trigger],
  );
  return rows[0]!;
}

/**
 * Takes sync `id`'s owner lock again on a new connection (the old one was lost). Does not
 * wait: the lost connection's backend may still hold it until the server notices.
 */
export async function lockSyncOwner(client: Client | pg.Client, id: number): Promise<boolean> {
  const { rows } = await client.query<{ ok: boolean }>(`SELECT ${ownerLock('pg_try_advisory_lock', '$1::bigint')} AS ok`, [id]);
  return rows[0]!.ok;
}

export async function unlockSyncOwner(client: Client | pg.Client, id: number): Promise<void> {
  await client.query(`SELECT ${ownerLock('pg_advisory_unlock', '$1::bigint')}`, [id]);
}

/**
 * Fails, with SYNC_INTERRUPTED, every `running` sync whose owner lock is free; returns their ids.
 * One statement: each running row's lock is tried (xact-level, so let go at commit, and held
 * while its row is written). The running rows are materialised first so that no lock is tried
 * for any other row. A sync holding its lock is left alone.
 */
export async function failInterruptedSyncs(db: Queryable): Promise<number[]> {
  const { rows } = await db.query<{ id: number }>(
    `WITH running AS MATERIALIZED (SELECT id FROM provider_syncs WHERE status = 'running')
     UPDATE provider_syncs s
        SET status = 'failed', error = $1, finished_at = clock_timestamp()
       FROM running r
      WHERE s.id = r.id AND s.status = 'running' AND ${ownerLock('pg_try_advisory_xact_lock', 'r.id')}
     RETURNING s.id`,
    [SYNC_INTERRUPTED],
  );
  return rows.map((r) => r.id).sort((a, b) => a - b);
}

export async function getSync(db: Queryable, id: number): Promise<SyncRecord | undefined> {
  const { rows } = await db.query<SyncRecord>('SELECT * FROM provider_syncs WHERE id = $1', [id]);
  return rows[0];
}

export async function listSyncs(db: Queryable, limit = 20): Promise<SyncRecord[]> {
  const { rows } = await db.query<SyncRecord>('SELECT * FROM provider_syncs ORDER BY id DESC LIMIT $1', [limit]);
  return rows;
}

export async function syncRejects(db: Queryable, syncId: number): Promise<FeedReject[]> {
  const { rows } = await db.query<FeedReject>(
    `SELECT line, base_event_id AS "baseEventId", event_id AS "eventId", reason, raw
       FROM provider_sync_rejects WHERE sync_id = $1 ORDER BY line`,
    [syncId],
  );
  return rows;
}

/**
 * Numbers an attempt's fetch, just before its request is sent: the next value of
 * provider_fetch_seq (the order of fetch starts across every session of the database, unlike
 * a clock that may be stepped back), recorded on the sync with the database's clock. Run
 * outside the attempt's transaction (committed at once). Returns the number as text (a bigint).
 */
export async function startFetch(client: Client, syncId: number): Promise<string> {
  const { rows } = await client.query<{ seq: string }>(
    `UPDATE provider_syncs SET fetch_seq = nextval('provider_fetch_seq'), fetch_started_at = clock_timestamp()
      WHERE id = $1 RETURNING fetch_seq::text AS seq`,
    [syncId],
  );
  return rows[0]!.seq;
}

/** A staging table private to the sync's transaction (dropped at commit or rollback). */
export async function createStage(client: Client): Promise<void> {
  await client.query(`CREATE TEMP TABLE provider_events_stage (
      seq integer NOT NULL, base_event_id text NOT NULL, event_id text NOT NULL, id uuid NOT NULL,
      title text NOT NULL, sell_mode text NOT NULL, organizer_company_id text,
      starts_at timestamp NOT NULL, ends_at timestamp NOT NULL, sell_from timestamp, sell_to timestamp,
      sold_out boolean NOT NULL, min_price numeric NOT NULL, max_price numeric NOT NULL,
      -- JSON as text, parsed only for the rows the merge writes; stored uncompressed (the
      -- stage lives for one transaction: compressing it would cost more than it saves).
      zones text STORAGE EXTERNAL NOT NULL, content_hash text NOT NULL
    ) ON COMMIT DROP`);
}

/** COPY text format: backslash, tab, newline and carriage return escaped; null as \N. */
function copyText(v: string | number | boolean | null): string {
  if (v === null) return '\\N';
  return String(v).replace(/[\\\t\n\r]/g, (c) => (c === '\\' ? '\\\\' : c === '\t' ? '\\t' : c === '\n' ? '\\n' : '\\r'));
}

/**
 * A batch of checked events as the stage's COPY text (one line per event, numbered from
 * `firstSeq`), UTF-8 encoded. Pure CPU work, so the parse thread builds it
 * (src/pipelines/events/parse-worker.ts) and `stageCopy` only sends the bytes: with hundreds
 * of zones per event, COPY's text parsing is many times cheaper than JSON or array-literal
 * parameters, and the escaping of the zones' JSON was a share of the sync's CPU.
 */
export function stageCopyText(events: FeedEvent[], firstSeq: number): Uint8Array {
  const lines = events.map(
    (e, i) =>
      `${[
        firstSeq + i, e.baseEventId, e.eventId, e.id, e.title, e.sellMode, e.organizerCompanyId, e.startsAt, e.endsAt,
        e.sellFrom, e.sellTo, e.soldOut, e.minPrice, e.maxPrice, e.zonesJson, e.contentHash,
      ]
        .map(copyText)
        .join('\t')}\n`,
  );
  // TextEncoder gives a buffer of its own (never a slice of a pool): it can be transferred.
  return new TextEncoder().encode(lines.join(''));
}

/** Appends COPY text from `stageCopyText` to the stage. */
export async function stageCopy(client: Client, text: Uint8Array): Promise<void> {
  if (text.byteLength === 0) return;
  await pipeline(Readable.from([text]), client.query(copyFrom('COPY provider_events_stage FROM STDIN')));
}

export async function insertRejects(db: Queryable, syncId: number, rejects: FeedReject[]): Promise<void> {
  if (rejects.length === 0) return;
  await db.query(
    `INSERT INTO provider_sync_rejects (sync_id, line, base_event_id, event_id, reason, raw)
     SELECT $1, * FROM unnest($2::int[], $3::text[], $4::text[], $5::text[], $6::text[])`,
    [syncId, rejects.map((r) => r.line), rejects.map((r) => r.baseEventId), rejects.map((r) => r.eventId), rejects.map((r) => r.reason), rejects.map((r) => r.raw)],
  );
}

export interface MergeResult {
  eventsNew: number;
  /** Rows written: new, updated from the feed, and absent events whose base event changed. */
  eventsChanged: number;
  /** Pairs of the fetch already stored, left alone: a fetch that started later was merged first. */
  eventsSuperseded: number;
}

/**
 * Merges the stage of fetch number `fetchSeq` (startFetch) into the store, in the caller's
 * transaction. When a pair occurs twice in one feed the later occurrence wins; only rows whose
 * values differ are written.
 *
 * Syncs overlap (a slow provider, several serve processes, a CLI sync), and the one whose
 * fetch started first may commit last. So a stored row is overwritten only by a fetch numbered
 * higher than every fetch merged so far (the highest fetch_seq of a completed sync, `floor`):
 * strictly, and numbers are never shared. Not merely higher than the one its values came from
 * (the row's fetch_seq): a later fetch that found the values unchanged wrote nothing, yet it
 * confirmed them, and an older fetch merged after it must not undo that (a sold-out flag that
 * went back, a review's reproduction). New rows are always inserted: an older fetch may list
 * events a newer one did not (keep every event ever seen). ever_online is sticky, so an older
 * fetch may still set it. Merges run one at a time (MERGE_LOCK): what one reads cannot change
 * under it, and the syncs merged before it are committed.
 */
export async function mergeStage(client: Client, syncId: number, fetchSeq: string): Promise<MergeResult> {
  await client.query('SELECT pg_advisory_xact_lock($1)', [MERGE_LOCK]);
  await client.query('ANALYZE provider_events_stage');
  // Whether this fetch started after every fetch merged so far ($3 below): only then does it
  // overwrite stored values. (Every row's fetch_seq is at most that floor: rows are written
  // by completed syncs' merges only.)
  const newest = (
    await client.query<{ newest: boolean }>(
      `SELECT $1::bigint > coalesce(max(fetch_seq), 0) AS newest FROM provider_syncs WHERE status = 'completed'`,
      [fetchSeq],
    )
  ).rows[0]!.newest;
  // Base events: latest values, unless a later-started fetch wrote them; ever_online is sticky
  // (online in any fetch, this one included, whenever it started).
  await client.query(
    `WITH latest AS (
       SELECT DISTINCT ON (base_event_id) base_event_id, title, sell_mode, organizer_company_id
         FROM provider_events_stage ORDER BY base_event_id, seq DESC
     ), online AS (
       SELECT base_event_id, bool_or(sell_mode = 'online') AS online FROM provider_events_stage GROUP BY 1
     )
     INSERT INTO provider_base_events AS b
            (base_event_id, title, sell_mode, organizer_company_id, ever_online, first_sync_id, changed_sync_id, fetch_seq)
     SELECT l.base_event_id, l.title, l.sell_mode, l.organizer_company_id, o.online, $1, $1, $2
       FROM latest l JOIN online o USING (base_event_id)
     ON CONFLICT (base_event_id) DO UPDATE
        SET title = CASE WHEN $3 THEN excluded.title ELSE b.title END,
            sell_mode = CASE WHEN $3 THEN excluded.sell_mode ELSE b.sell_mode END,
            organizer_company_id = CASE WHEN $3 THEN excluded.organizer_company_id ELSE b.organizer_company_id END,
            fetch_seq = CASE WHEN $3 THEN excluded.fetch_seq ELSE b.fetch_seq END,
            ever_online = b.ever_online OR excluded.ever_online,
            changed_sync_id = $1, updated_at = now()
      WHERE ($3
             AND (b.title, b.sell_mode, b.organizer_company_id) IS DISTINCT FROM
                 (excluded.title, excluded.sell_mode, excluded.organizer_company_id))
         OR (excluded.ever_online AND NOT b.ever_online)`,
    [syncId, fetchSeq, newest],
  );
  // Only new pairs, and changed pairs whose stored values come from an earlier fetch, reach the
  // INSERT (and the costly JSON check of zones); when a pair occurs twice in the feed the later
  // occurrence wins (anti-join on a narrow hash). A pair skipped as superseded still gets its
  // base event's title and online flag below, if this merge changed them.
  const { rows } = await client.query<{ new: number; changed: number; superseded: number }>(
    `WITH latest AS (
       SELECT s.* FROM provider_events_stage s
        WHERE NOT EXISTS (SELECT 1 FROM provider_events_stage d
                           WHERE d.base_event_id = s.base_event_id AND d.event_id = s.event_id AND d.seq > s.seq)
     ), up AS (
       INSERT INTO provider_events AS e
              (base_event_id, event_id, id, title, ever_online, starts_at, ends_at, sell_from, sell_to,
               sold_out, min_price, max_price, zones, content_hash, first_sync_id, changed_sync_id, fetch_seq)
       SELECT s.base_event_id, s.event_id, s.id, b.title, b.ever_online, s.starts_at, s.ends_at, s.sell_from,
              s.sell_to, s.sold_out, s.min_price, s.max_price, s.zones::json, s.content_hash, $1, $1, $2
         FROM latest s
         JOIN provider_base_events b USING (base_event_id)
         LEFT JOIN provider_events cur ON cur.base_event_id = s.base_event_id AND cur.event_id = s.event_id
        WHERE cur.base_event_id IS NULL
           OR ($3
               AND (cur.content_hash <> s.content_hash OR cur.title <> b.title OR cur.ever_online <> b.ever_online))
       ON CONFLICT (base_event_id, event_id) DO UPDATE
          SET title = excluded.title, ever_online = excluded.ever_online, starts_at = excluded.starts_at,
              ends_at = excluded.ends_at, sell_from = excluded.sell_from, sell_to = excluded.sell_to,
              sold_out = excluded.sold_out, min_price = excluded.min_price, max_price = excluded.max_price,
              zones = excluded.zones, content_hash = excluded.content_hash, fetch_seq = excluded.fetch_seq,
              changed_sync_id = $1, updated_at = now()
        WHERE $3
          AND (e.content_hash <> excluded.content_hash OR e.title <> excluded.title OR e.ever_online <> excluded.ever_online)
       RETURNING xmax = 0 AS inserted
     ), superseded AS (
       -- Read before this statement's writes; none of them is of a superseded pair.
       SELECT count(*)::int AS n
         FROM (SELECT DISTINCT base_event_id, event_id FROM provider_events_stage) s
         JOIN provider_events cur USING (base_event_id, event_id)
        WHERE NOT $3
     )
     SELECT (count(*) FILTER (WHERE inserted))::int AS new, count(*)::int AS changed,
            (SELECT n FROM superseded) AS superseded
       FROM up`,
    [syncId, fetchSeq, newest],
  );
  // Events absent from this fetch, and those it left as superseded, still follow their base
  // event's title and online flag (the base event's own values are guarded above).
  const propagated = await client.query(
    `UPDATE provider_events e
        SET title = b.title, ever_online = b.ever_online, changed_sync_id = $1, updated_at = now()
       FROM provider_base_events b
      WHERE b.changed_sync_id = $1 AND e.base_event_id = b.base_event_id
        AND (e.title <> b.title OR e.ever_online <> b.ever_online)`,
    [syncId],
  );
  return { eventsNew: rows[0]!.new, eventsChanged: rows[0]!.changed + (propagated.rowCount ?? 0), eventsSuperseded: rows[0]!.superseded };
}

/** Bumps the feed version and announces it; both take effect when the transaction commits. */
export async function bumpFeedVersion(client: Client): Promise<number> {
  const { rows } = await client.query<{ version: number }>(
    'UPDATE provider_feed_state SET version = version + 1, changed_at = now() RETURNING version',
  );
  const version = rows[0]!.version;
  await client.query('SELECT pg_notify($1, $2)', [FEED_CHANNEL, String(version)]);
  return version;
}

export async function feedVersion(db: Queryable): Promise<number> {
  const { rows } = await db.query<{ version: number }>({ name: 'provider_feed_version', text: 'SELECT version FROM provider_feed_state' });
  return rows[0]?.version ?? 0;
}

/**
 * Claims the next scheduled sync slot for this process: true for exactly one of several
 * serve processes per interval (the row update is atomic), false for the others.
 */
export async function claimSyncSlot(db: Queryable, intervalS: number): Promise<boolean> {
  const { rowCount } = await db.query(
    `UPDATE provider_feed_state SET next_sync_at = now() + make_interval(secs => $1)
      WHERE next_sync_at <= now()`,
    [intervalS],
  );
  return rowCount === 1;
}

/** One /search range; null is unbounded on that side. */
export interface SearchRange {
  startsAt: string | null;
  endsAt: string | null;
}

export interface SearchBatchResult {
  /** Feed version the rows were read at (the same snapshot for every range). */
  version: number;
  /** Per range, in the order given: the whole 200 response body, `{"data":{"events":[...]},"error":null}`. */
  bodies: string[];
}

/**
 * Events served by /search for several ranges in one statement (src/pipelines/events/
 * search-batcher.ts gathers concurrent searches into it): base event online in some fetch,
 * starting at or after `startsAt` and ending at or before `endsAt`, by start, then end,
 * then id. Postgres renders each whole response body from the stored `search_json`, so
 * Node only forwards text. One statement, so the version and every range share one snapshot.
 *
 * The statement text is constant and the ranges are arrays (unbounded sides become
 * +/-infinity), so every request shape shares one prepared statement. Its ranges are walked
 * with generate_subscripts, whose row estimate does not depend on the array (unnest's does,
 * for a constant array): the custom and generic plans then cost the same, and after its first
 * five executions on a connection Postgres runs the generic plan instead of planning each time.
 */
export async function searchEventsBatch(db: Queryable, ranges: readonly SearchRange[]): Promise<SearchBatchResult> {
  const starts = ranges.map((r) => r.startsAt ?? '-infinity');
  const ends = ranges.map((r) => r.endsAt ?? 'infinity');
  const { rows } = await db.query<{ i: number; version: number; body: string }>({
    name: 'provider_search_batch',
    text: `SELECT q.i, (SELECT version FROM provider_feed_state) AS version, r.body
             FROM generate_subscripts($1::timestamp[], 1) AS q(i)
             CROSS JOIN LATERAL (
               SELECT '{"data":{"events":[' || coalesce(string_agg(p.search_json, ',' ORDER BY p.starts_at, p.ends_at, p.id), '')
                      || ']},"error":null}' AS body
                 FROM provider_events p
                WHERE p.ever_online AND p.starts_at >= ($1::timestamp[])[q.i] AND p.ends_at <= ($2::timestamp[])[q.i]
                  -- Implied (an event ends after it starts), and it bounds the index range.
                  AND p.starts_at <= ($2::timestamp[])[q.i]
             ) r`,
    values: [starts, ends],
  });
  const bodies = new Array<string>(ranges.length);
  for (const row of rows) bodies[row.i - 1] = row.body;
  return { version: rows[0]?.version ?? 0, bodies };
}
