-- The provider feed (issue 4): every event the provider ever published, each sync of the
-- feed with its rejects, and the feed's version that /search caches are keyed on.
-- Provider times carry no zone (they are the venue's local time): `timestamp`, not timestamptz.

-- One fetch of the feed, whatever its outcome.
CREATE TABLE provider_syncs (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  url text NOT NULL,
  trigger text NOT NULL DEFAULT 'cli' CHECK (trigger IN ('cli', 'schedule', 'api', 'test')),
  status text NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'completed', 'failed')),
  attempts integer NOT NULL DEFAULT 0,
  bytes bigint NOT NULL DEFAULT 0,
  events_seen integer NOT NULL DEFAULT 0,
  events_new integer NOT NULL DEFAULT 0,
  -- new + updated: rows whose stored values this sync wrote.
  events_changed integer NOT NULL DEFAULT 0,
  events_rejected integer NOT NULL DEFAULT 0,
  error text,
  started_at timestamptz NOT NULL DEFAULT now(),
  finished_at timestamptz
);
CREATE INDEX provider_syncs_newest ON provider_syncs (started_at DESC);

-- Events of a sync that were refused (impossible dates, bad prices...), with the reason.
CREATE TABLE provider_sync_rejects (
  sync_id bigint NOT NULL REFERENCES provider_syncs (id) ON DELETE CASCADE,
  line integer NOT NULL,
  base_event_id text,
  event_id text,
  reason text NOT NULL,
  raw text NOT NULL
);
CREATE INDEX provider_sync_rejects_by_sync ON provider_sync_rejects (sync_id, line);

-- Base events (the provider's "plans"): latest values, and whether it was ever on sale
-- online, which decides whether its events are served.
CREATE TABLE provider_base_events (
  base_event_id text PRIMARY KEY,
  title text NOT NULL,
  sell_mode text NOT NULL CHECK (sell_mode IN ('online', 'offline')),
  organizer_company_id text,
  ever_online boolean NOT NULL,
  first_sync_id bigint NOT NULL,
  changed_sync_id bigint NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);

-- How /search renders one event (the provider API's Event object), as JSON text. Declared
-- IMMUTABLE so a stored generated column can use it: every call inside is fixed-format
-- (explicit to_char patterns, trim_scale), independent of DateStyle, locale or time zone.
CREATE FUNCTION provider_event_json(id uuid, title text, starts_at timestamp, ends_at timestamp,
                                    min_price numeric, max_price numeric)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN '{"id":"' || id::text
    || '","title":' || to_json(title)::text
    || ',"start_date":"' || to_char(starts_at, 'YYYY-MM-DD')
    || '","start_time":"' || to_char(starts_at, 'HH24:MI:SS')
    || '","end_date":"' || to_char(ends_at, 'YYYY-MM-DD')
    || '","end_time":"' || to_char(ends_at, 'HH24:MI:SS')
    || '","min_price":' || trim_scale(min_price)::text
    || ',"max_price":' || trim_scale(max_price)::text || '}';

-- Events, keyed by the provider's pair (the same event_id occurs under several base events).
-- Rows are never deleted: an event that leaves the feed stays searchable with its last values.
CREATE TABLE provider_events (
  base_event_id text NOT NULL,
  event_id text NOT NULL,
  -- UUID v5 of the pair: the public id, stable across syncs and databases.
  id uuid NOT NULL UNIQUE,
  -- title and ever_online are copied from the base event so /search reads one table.
  title text NOT NULL,
  ever_online boolean NOT NULL,
  starts_at timestamp NOT NULL,
  ends_at timestamp NOT NULL,
  sell_from timestamp,
  sell_to timestamp,
  sold_out boolean NOT NULL,
  min_price numeric(14, 2) NOT NULL,
  max_price numeric(14, 2) NOT NULL,
  -- The zones as the feed gave them (json keeps the text: half the write cost of jsonb).
  zones json NOT NULL,
  -- Hash of the event's own values (dates, flags, zones; not the base event's): an upsert
  -- writes a row only when this, the title or ever_online differs.
  content_hash text NOT NULL,
  -- The event as /search renders it, built at write time so a search only concatenates text.
  search_json text NOT NULL
    GENERATED ALWAYS AS (provider_event_json(id, title, starts_at, ends_at, min_price, max_price)) STORED,
  first_sync_id bigint NOT NULL,
  changed_sync_id bigint NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (base_event_id, event_id),
  -- /search bounds its index range with it (ends_at <= x implies starts_at <= x).
  CHECK (ends_at >= starts_at)
);
-- In /search order: a range scan that needs no sort.
CREATE INDEX provider_events_search ON provider_events (starts_at, ends_at, id) WHERE ever_online;

-- One row: the feed's version (a counter bumped in the transaction of every sync that changes
-- what /search returns) and the scheduler's next slot, which serve processes claim so only one of them fetches.
CREATE TABLE provider_feed_state (
  singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
  version bigint NOT NULL DEFAULT 0,
  changed_at timestamptz,
  next_sync_at timestamptz NOT NULL DEFAULT '-infinity'
);
INSERT INTO provider_feed_state DEFAULT VALUES;
