/**
 * SQL of the live-visits pipeline (migrations/0020_visits.sql). One statement per function,
 * set-based (COPY, unnest arrays, INSERT ... SELECT) and parameterised: visitor ids and page
 * paths only ever travel as data.
 *
 * No statement on the acknowledgement path takes a row lock another flush could want: the
 * visits are new rows, the rollups are appended, and the visitor updates are queued in
 * visitor_batches. Only applyVisitorBatches updates shared rows, off that path.
 */
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { from as copyFrom } from 'pg-copy-streams';
import { withTransaction, type Client, type Pool } from '../pool.ts';
import { BinaryCopyWriter } from '../../load/copy-binary.ts';
import { RECENT_PER_FLUSH, type BatchRollup } from '../../pipelines/visits/rollup.ts';
import type { Visit } from '../../pipelines/visits/visit.ts';

type Queryable = Pool | Client;

/** COPYs a flush's visits into `visits` (binary format; routed to the day partitions). */
export async function copyVisits(client: Client, batch: readonly Visit[]): Promise<void> {
  const w = new BinaryCopyWriter(batch.length * 96);
  for (const v of batch) {
    w.row(4);
    w.timestamptz(v.visitedAt);
    w.text(v.visitorId);
    w.text(v.pagePath);
    w.timestamptz(v.receivedAt);
  }
  const stream = client.query(copyFrom('COPY visits (visited_at, visitor_id, page_path, received_at) FROM STDIN (FORMAT binary)'));
  await pipeline(Readable.from([w.finish()]), stream);
}

/**
 * Opens a transaction that PostgreSQL ends after `timeoutMs` (transaction_timeout, PostgreSQL
 * 17+): whatever it then waits for (a lock, the disk, the next statement), the server ends the
 * session and rolls the transaction back, so a stuck flush holds neither locks nor a pool
 * client past its deadline. One round trip: the value is a number computed here, never input.
 */
export async function beginWithin(client: Client, timeoutMs: number): Promise<void> {
  await client.query(`BEGIN; SET LOCAL transaction_timeout = ${Math.max(1, Math.ceil(timeoutMs))}`);
}

/** Creates the partition of a UTC day (YYYY-MM-DD) if missing; safe to call concurrently. */
export async function ensurePartition(db: Queryable, day: string): Promise<void> {
  await db.query('SELECT visits_ensure_partition($1::date)', [day]);
}

/**
 * Array literals built here rather than by node-pg (which escapes every element with two
 * regular expressions): a flush sends arrays of thousands of visitor ids and times.
 */
function textArray(values: readonly string[]): string {
  let plain = true;
  for (const v of values) {
    if (v.includes('"') || v.includes('\\')) {
      plain = false;
      break;
    }
  }
  const items = plain ? values : values.map((v) => v.replace(/[\\"]/g, '\\$&'));
  return values.length ? `{"${items.join('","')}"}` : '{}';
}

function numberArray(values: readonly number[]): string {
  return `{${values.join(',')}}`;
}

/** Appends a flush's counts to the rollups and queues its visitors, in one statement. */
export async function appendRollups(client: Client, r: BatchRollup): Promise<void> {
  await client.query(
    `WITH s AS (INSERT INTO visit_seconds (second, visits) SELECT * FROM unnest($1::timestamptz[], $2::bigint[])),
          m AS (INSERT INTO visit_minutes (minute, visits) SELECT * FROM unnest($3::timestamptz[], $4::bigint[])),
          p AS (INSERT INTO page_minutes (minute, page_path, visits) SELECT * FROM unnest($5::timestamptz[], $6::text[], $7::bigint[])),
          r AS (INSERT INTO recent_visits (received_at, visited_at, visitor_id, page_path)
                SELECT received_at, visited_at, visitor_id, page_path
                  FROM unnest($12::timestamptz[], $13::timestamptz[], $14::text[], $15::text[])
                       WITH ORDINALITY AS t(received_at, visited_at, visitor_id, page_path, n)
                 ORDER BY n)
     INSERT INTO visitor_batches (visitor_ids, first_ms, last_ms, visits) VALUES ($8::text[], $9::float8[], $10::float8[], $11::int[])`,
    [
      r.seconds.at,
      r.seconds.visits,
      r.minutes.at,
      r.minutes.visits,
      r.pages.at,
      r.pages.path,
      r.pages.visits,
      textArray(r.visitors.id),
      numberArray(r.visitors.first),
      numberArray(r.visitors.last),
      numberArray(r.visitors.visits),
      r.recent.received,
      r.recent.visited,
      r.recent.visitor,
      r.recent.path,
    ],
  );
}

/**
 * Applies up to `limit` queued visitor batches in one statement (one transaction): merges
 * them per visitor, upserts `visitors`, and moves each visitor in visitor_seconds from the
 * second of its previous last visit to the new one. PostgreSQL 18's RETURNING old/new gives
 * the previous value under the row lock, so concurrent appliers count a visitor once;
 * visitors are upserted in id order, so concurrent appliers cannot deadlock. Seconds older
 * than `cutoff` are left alone: they can never again be in the 5-minute window.
 */
export async function applyVisitorBatches(db: Queryable, cutoff: Date, limit: number): Promise<{ batches: number; visitors: number }> {
  const { rows } = await db.query<{ batches: number; visitors: number }>(
    `WITH taken AS (
       DELETE FROM visitor_batches
        WHERE id IN (SELECT id FROM visitor_batches ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED)
       RETURNING visitor_ids, first_ms, last_ms, visits
     ), merged AS (
       SELECT u.id, to_timestamp(min(u.first_ms) / 1000) AS first_at, to_timestamp(max(u.last_ms) / 1000) AS last_at,
              sum(u.visits)::bigint AS visits
         FROM taken, unnest(taken.visitor_ids, taken.first_ms, taken.last_ms, taken.visits) AS u(id, first_ms, last_ms, visits)
        GROUP BY u.id
        ORDER BY u.id
     ), up AS (
       INSERT INTO visitors AS cur (id, first_seen_at, last_seen_at, visits)
       SELECT id, first_at, last_at, visits FROM merged
       ON CONFLICT (id) DO UPDATE
          SET first_seen_at = least(cur.first_seen_at, excluded.first_seen_at),
              last_seen_at = greatest(cur.last_seen_at, excluded.last_seen_at),
              visits = cur.visits + excluded.visits
       RETURNING date_trunc('second', old.last_seen_at) AS old_sec, date_trunc('second', new.last_seen_at) AS new_sec
     ), moves AS (
       SELECT new_sec AS second, 1 AS d FROM up WHERE old_sec IS DISTINCT FROM new_sec
       UNION ALL
       SELECT old_sec, -1 FROM up WHERE old_sec IS NOT NULL AND old_sec <> new_sec AND old_sec >= $1::timestamptz
     ), moved AS (
       INSERT INTO visitor_seconds (second, visitors)
       SELECT second, sum(d) FROM moves GROUP BY second HAVING sum(d) <> 0
     )
     SELECT (SELECT count(*) FROM taken)::int AS batches, (SELECT count(*) FROM up)::int AS visitors`,
    [cutoff.toISOString(), limit],
  );
  return rows[0]!;
}

export interface LagSample {
  /** The second (ISO) the flush committed in. */
  second: string;
  visits: number;
  sumMs: number;
  maxMs: number;
}

/**
 * Records a committed flush's lag with an asynchronous commit (set_config(..., true) lasts
 * for this statement's own transaction): the visits are already durable, and losing a lag
 * sample in a crash costs nothing, so this must not add an fsync to the flush.
 */
export async function addLag(db: Queryable, lag: LagSample): Promise<void> {
  await db.query(
    `WITH async AS (SELECT set_config('synchronous_commit', 'off', true))
     INSERT INTO visit_lag_seconds (second, visits, lag_ms_sum, lag_ms_max)
     SELECT $1::timestamptz, $2, $3, $4 FROM async`,
    [lag.second, lag.visits, Math.round(lag.sumMs), Math.round(lag.maxMs)],
  );
}

/** What the live page shows; see liveSnapshot. */
export interface LiveRow {
  /** [epoch second, visits] for the seconds that had visits, oldest first. */
  per_second: Array<[number, number]>;
  current_visitors: number;
  visits_today: number;
  top_pages: Array<{ page_path: string; visits: number }>;
  recent: Array<{ visited_at: string; visitor_id: string; page_path: string; received_at: string }>;
  lag: { visits: number; avg_ms: number | null; max_ms: number | null };
}

/**
 * The live view in one statement. It reads the rollup rows of the windows (one per key
 * once compacted, plus the rows appended since the last compaction) and the newest
 * RECENT_PER_FLUSH rows of recent_visits (each flush appends its own newest that many, so
 * those are the newest of all processes): its cost does not grow with traffic (top pages
 * grow with the distinct pages of the window, query strings left out: rollup.ts, pageOf).
 * `now` bounds every window so that all processes agree on what "the last 5 minutes" is.
 * PostgreSQL cancels it after `timeoutMs` (statement_timeout), e.g. behind a stuck lock.
 */
export async function liveSnapshot(pool: Pool, now: Date, windowSeconds: number, topPages: number, timeoutMs: number): Promise<LiveRow> {
  const dayStart = new Date(Math.floor(now.getTime() / 86_400_000) * 86_400_000);
  // Pages are counted per minute: take every minute that overlaps the window.
  const firstMinute = new Date(Math.floor((now.getTime() - windowSeconds * 1000) / 60_000) * 60_000);
  const begin = `BEGIN READ ONLY; SET LOCAL statement_timeout = ${Math.max(1, Math.ceil(timeoutMs))}`;
  const { rows } = await withTransaction(pool, begin, (client) =>
    client.query<LiveRow>(
      `SELECT
         (SELECT coalesce(json_agg(json_build_array(s, v) ORDER BY s), '[]')
            FROM (SELECT extract(epoch FROM second)::bigint AS s, sum(visits)::bigint AS v
                    FROM visit_seconds
                   WHERE second > $1::timestamptz - make_interval(secs => $2 + 1) AND second <= $1::timestamptz
                   GROUP BY second) t) AS per_second,
         (SELECT coalesce(sum(visitors), 0)::bigint
            FROM visitor_seconds
           WHERE second > $1::timestamptz - make_interval(secs => $2) AND second <= $1::timestamptz) AS current_visitors,
         (SELECT coalesce(sum(visits), 0)::bigint
            FROM visit_minutes WHERE minute >= $3::timestamptz AND minute <= $1::timestamptz) AS visits_today,
         (SELECT coalesce(json_agg(json_build_object('page_path', page_path, 'visits', visits) ORDER BY visits DESC, page_path), '[]')
            FROM (SELECT page_path, sum(visits)::bigint AS visits
                    FROM page_minutes
                   WHERE minute >= $5::timestamptz AND minute <= $1::timestamptz
                   GROUP BY page_path ORDER BY visits DESC, page_path LIMIT $4) t) AS top_pages,
         (SELECT coalesce(json_agg(json_build_object('visited_at', visited_at, 'visitor_id', visitor_id,
                                                     'page_path', page_path, 'received_at', received_at) ORDER BY received_at DESC, id DESC), '[]')
            FROM (SELECT id, visited_at, visitor_id, page_path, received_at FROM recent_visits
                   ORDER BY received_at DESC, id DESC LIMIT $6) t) AS recent,
         (SELECT json_build_object('visits', coalesce(sum(visits), 0),
                                   'avg_ms', round(sum(lag_ms_sum)::numeric / nullif(sum(visits), 0)),
                                   'max_ms', max(lag_ms_max))
            FROM visit_lag_seconds
           WHERE second > $1::timestamptz - interval '60 seconds') AS lag`,
      [now.toISOString(), windowSeconds, dayStart.toISOString(), topPages, firstMinute.toISOString(), RECENT_PER_FLUSH],
    ),
  );
  return rows[0]!;
}

/**
 * Housekeeping gives way to a lock rather than waiting behind it (lock_timeout): the pass is
 * retried at the next one (15 s), and a shutdown does not wait for a lock held for ever.
 */
const HOUSEKEEPING_BEGIN = 'BEGIN; SET LOCAL lock_timeout = 5000';

/**
 * How each rollup table is compacted: its key columns and how its value columns merge.
 * Constants, never user input.
 */
const COMPACT: Array<{ table: string; time: string; keys: string; values: string; merge: string; keepZero: boolean }> = [
  { table: 'visit_seconds', time: 'second', keys: 'second', values: 'visits', merge: 'sum(visits)', keepZero: true },
  { table: 'visit_minutes', time: 'minute', keys: 'minute', values: 'visits', merge: 'sum(visits)', keepZero: true },
  { table: 'page_minutes', time: 'minute', keys: 'minute, page_path', values: 'visits', merge: 'sum(visits)', keepZero: true },
  { table: 'visitor_seconds', time: 'second', keys: 'second', values: 'visitors', merge: 'sum(visitors)', keepZero: false },
  {
    table: 'visit_lag_seconds',
    time: 'second',
    keys: 'second',
    values: 'visits, lag_ms_sum, lag_ms_max',
    merge: 'sum(visits), sum(lag_ms_sum), max(lag_ms_max)',
    keepZero: true,
  },
];

/**
 * Merges the rollup rows of each key with a time in [from, to) into one row per key, for
 * the keys that have more than one, in one transaction. Rows appended meanwhile are not in
 * the statements' snapshot and stay as they are, so no count is lost or doubled; an
 * advisory lock keeps a second process from compacting at the same time (it skips instead
 * of waiting). Returns false when another process held the lock. Fails after waiting 5 s for
 * a table lock (HOUSEKEEPING_BEGIN).
 */
export async function compactRollups(pool: Pool, from: Date, to: Date): Promise<boolean> {
  return withTransaction(pool, HOUSEKEEPING_BEGIN, async (client) => {
    const { rows } = await client.query<{ locked: boolean }>('SELECT pg_try_advisory_xact_lock(7301021) AS locked');
    if (!rows[0]!.locked) return false;
    for (const c of COMPACT) {
      const keyMatch = c.keys
        .split(', ')
        .map((k) => `r.${k} = dup.${k}`)
        .join(' AND ');
      await client.query(
        `WITH dup AS (
           SELECT ${c.keys} FROM ${c.table}
            WHERE ${c.time} >= $1::timestamptz AND ${c.time} < $2::timestamptz
            GROUP BY ${c.keys} HAVING count(*) > 1
         ), gone AS (
           DELETE FROM ${c.table} r USING dup WHERE ${keyMatch} RETURNING r.*
         )
         INSERT INTO ${c.table} (${c.keys}, ${c.values}) SELECT ${c.keys}, ${c.merge} FROM gone GROUP BY ${c.keys}${c.keepZero ? '' : ` HAVING ${c.merge} <> 0`}`,
        [from.toISOString(), to.toISOString()],
      );
    }
    return true;
  });
}

/**
 * Deletes rollup rows no live view reads again. visitor_seconds keeps 15 minutes (more than
 * the 10 minutes applyVisitorBatches still moves visitors out of); the per-second tables a
 * day; page_minutes a week; recent_visits its newest 1,000 rows. visits and visit_minutes
 * are kept.
 */
export async function deleteOldRollups(pool: Pool, now: Date): Promise<number> {
  const { rows } = await withTransaction(pool, HOUSEKEEPING_BEGIN, (client) =>
    client.query<{ n: number }>(
      `WITH a AS (DELETE FROM visitor_seconds WHERE second < $1::timestamptz - interval '15 minutes' RETURNING 1),
            b AS (DELETE FROM visit_seconds WHERE second < $1::timestamptz - interval '1 day' RETURNING 1),
            c AS (DELETE FROM visit_lag_seconds WHERE second < $1::timestamptz - interval '1 day' RETURNING 1),
            d AS (DELETE FROM page_minutes WHERE minute < $1::timestamptz - interval '7 days' RETURNING 1),
            e AS (DELETE FROM recent_visits WHERE id <= (SELECT max(id) FROM recent_visits) - 1000 RETURNING 1)
       SELECT ((SELECT count(*) FROM a) + (SELECT count(*) FROM b) + (SELECT count(*) FROM c) + (SELECT count(*) FROM d)
               + (SELECT count(*) FROM e))::bigint AS n`,
      [now.toISOString()],
    ),
  );
  return rows[0]!.n;
}

/** Visits whose visitor id starts with `prefix` (load tests tag their visitors), visited since `since`. */
export async function countVisitsByVisitorPrefix(db: Queryable, prefix: string, since: Date): Promise<number> {
  const pattern = `${prefix.replace(/[\\%_]/g, (c) => `\\${c}`)}%`;
  const { rows } = await db.query<{ n: number }>(
    'SELECT count(*)::bigint AS n FROM visits WHERE visitor_id LIKE $1 AND visited_at >= $2::timestamptz',
    [pattern, since.toISOString()],
  );
  return rows[0]!.n;
}
