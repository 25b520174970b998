-- Live visits (issue 5): every page visit, the visitors, and the rollups the live page
-- reads. Visits arrive by group commit (src/pipelines/visits/ingest-buffer.ts): one
-- transaction per flush COPYs the visits, appends the flush's counts to the rollups and
-- queues its visitor updates, so whatever crashes, the rollups equal the visits stored.

-- Partitioned by UTC day of visited_at: old days can be detached or dropped whole, and a
-- day's rows stay together. Partitions are created on demand by visits_ensure_partition.
-- No B-tree index: `id` is unique by construction (identity), nothing looks visits up by
-- id, and a primary key (which would have to be (id, visited_at)) made each COPYed row cost
-- 60 % more in PostgreSQL (measured: 5.3 vs 3.3 us per row). A BRIN index on visited_at
-- costs nothing per row and narrows time ranges within a day; the live page's "most
-- recent" list has its own small table (recent_visits).
CREATE TABLE visits (
  id bigint GENERATED ALWAYS AS IDENTITY,
  visited_at timestamptz NOT NULL,
  visitor_id text NOT NULL,
  page_path text NOT NULL,
  received_at timestamptz NOT NULL
) PARTITION BY RANGE (visited_at);
CREATE INDEX visits_visited_at ON visits USING brin (visited_at);

-- Creates the partition of one UTC day if missing. Serialised by an advisory lock so two
-- processes that meet a new day at the same moment do not race on the catalog.
CREATE FUNCTION visits_ensure_partition(day date) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
  part text := 'visits_' || to_char(day, 'YYYYMMDD');
BEGIN
  IF to_regclass(part) IS NOT NULL THEN
    RETURN;
  END IF;
  PERFORM pg_advisory_xact_lock(7301020);
  IF to_regclass(part) IS NOT NULL THEN
    RETURN;
  END IF;
  EXECUTE format('CREATE TABLE %I PARTITION OF visits FOR VALUES FROM (%L) TO (%L)',
                 part, day::timestamp AT TIME ZONE 'UTC', (day + 1)::timestamp AT TIME ZONE 'UTC');
END
$$;

-- One row per visitor (the cookie/session id of the original app), updated in place from
-- visitor_batches. An applier run updates thousands of rows, many on the same pages: half
-- of each page stays free so those updates stay HOT (no new index entries; no index is on
-- an updated column). At fillfactor 80 only about half of them were.
CREATE TABLE visitors (
  id text PRIMARY KEY,
  first_seen_at timestamptz NOT NULL,
  last_seen_at timestamptz NOT NULL,
  visits bigint NOT NULL
) WITH (fillfactor = 50);

-- The visitor part of each flush (an outbox, written in the flush's transaction), applied
-- to `visitors` and `visitor_seconds` shortly after by whichever process gets to it first
-- (FOR UPDATE SKIP LOCKED). Upserting thousands of visitor rows is the costliest part of a
-- flush and the only one whose row locks collide between processes: out of the
-- acknowledgement path it neither slows the 202 nor blocks the other flushes, and merging
-- several flushes updates each returning visitor once.
-- Times are epoch milliseconds (float8): cheaper to produce and parse than timestamps, and
-- exact to the millisecond. Arrays are stored uncompressed (STORAGE EXTERNAL): compressing
-- a few hundred kilobytes per flush cost more CPU than the WAL it saved.
CREATE TABLE visitor_batches (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  created_at timestamptz NOT NULL DEFAULT now(),
  visitor_ids text[] STORAGE EXTERNAL NOT NULL,
  first_ms float8[] STORAGE EXTERNAL NOT NULL,
  last_ms float8[] STORAGE EXTERNAL NOT NULL,
  visits integer[] STORAGE EXTERNAL NOT NULL
);

-- Rollups are append-only: each flush appends its own rows (no primary key, no upsert), so
-- concurrent flushes of any number of processes never wait on each other's row locks.
-- Readers sum by key; maintenance compacts each key's rows into one (visits.ts,
-- compactRollups), which keeps the live page reading a few hundred rows.

-- Visits per second of visited_at (the live chart).
CREATE TABLE visit_seconds (
  second timestamptz NOT NULL,
  visits bigint NOT NULL
);
CREATE INDEX visit_seconds_second ON visit_seconds (second);

-- Visits per minute of visited_at ("visits today" reads at most 1,440 compacted rows).
CREATE TABLE visit_minutes (
  minute timestamptz NOT NULL,
  visits bigint NOT NULL
);
CREATE INDEX visit_minutes_minute ON visit_minutes (minute);

-- Visits per page and minute (top pages).
CREATE TABLE page_minutes (
  minute timestamptz NOT NULL,
  page_path text NOT NULL,
  visits bigint NOT NULL
);
CREATE INDEX page_minutes_minute ON page_minutes (minute);

-- How many visitors have their last visit in each second: the visitors of the last five
-- minutes are a sum over 300 seconds, exact and across processes, however many visitors.
-- A visitor who comes back moves from the second of the previous visit to the new one
-- (-1 there, +1 here), see src/db/sql/visits.ts, applyVisitorBatches.
CREATE TABLE visitor_seconds (
  second timestamptz NOT NULL,
  visitors bigint NOT NULL
);
CREATE INDEX visitor_seconds_second ON visitor_seconds (second);

-- The newest visits: each flush appends its own newest 20 (in the flush's transaction), so
-- the newest 20 of all processes are always here; maintenance keeps the last 1,000 rows.
CREATE TABLE recent_visits (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  received_at timestamptz NOT NULL,
  visited_at timestamptz NOT NULL,
  visitor_id text NOT NULL,
  page_path text NOT NULL
);
CREATE INDEX recent_visits_newest ON recent_visits (received_at DESC, id DESC);

-- Ingestion lag (receipt to committed, i.e. visible) per second of commit.
CREATE TABLE visit_lag_seconds (
  second timestamptz NOT NULL,
  visits bigint NOT NULL,
  lag_ms_sum bigint NOT NULL,
  lag_ms_max integer NOT NULL
);
CREATE INDEX visit_lag_seconds_second ON visit_lag_seconds (second);
