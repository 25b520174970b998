-- Overlapping syncs (a slow provider, two serve processes, a CLI sync during serve's): a
-- fetch that started earlier but commits later must not put its older values over those of
-- a fetch that started after it. Each attempt of a sync takes a number from this sequence
-- just before it sends the request; a row keeps the number of the fetch its values came from,
-- and the merge writes over a row only with values from a fetch numbered higher.
-- A sequence, not a clock: it orders fetch starts across sessions and machines (every
-- process asks this one database), never goes backwards when a clock is stepped, and never
-- gives two fetches the same value. CACHE 1 (the default, said here on purpose): values
-- cached per session would not follow the order of the calls across sessions.
CREATE SEQUENCE provider_fetch_seq AS bigint CACHE 1;

-- Per attempt: its number and the database's clock when it took it (null: no fetch yet, or
-- a sync from before this migration). A completed sync's are those of its committed attempt.
ALTER TABLE provider_syncs
  ADD COLUMN fetch_seq bigint,
  ADD COLUMN fetch_started_at timestamptz,
  -- Events of the fetch whose stored values came from a fetch numbered higher (started
  -- later, merged earlier): left as they were, and not counted as changed.
  ADD COLUMN events_superseded integer NOT NULL DEFAULT 0;

-- The fetch whose values a row holds. Rows stored before this migration get 0: older than
-- any fetch numbered from now on (the sequence starts at 1), so the next sync updates them
-- as before. A constant default: no table rewrite.
ALTER TABLE provider_base_events ADD COLUMN fetch_seq bigint NOT NULL DEFAULT 0;
ALTER TABLE provider_events ADD COLUMN fetch_seq bigint NOT NULL DEFAULT 0;
