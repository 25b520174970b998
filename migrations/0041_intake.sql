-- The intake service (issue 3): an uploaded file is stored in Postgres as parts (so any
-- worker on any machine can read it; only DATABASE_URL is shared), each part a queue job.
ALTER TABLE imports
  ADD COLUMN header text[],
  ADD COLUMN encoding text,
  ADD COLUMN delimiter text,
  ADD COLUMN parts_total integer,
  ADD COLUMN merge_enqueued boolean NOT NULL DEFAULT false;

CREATE TABLE import_parts (
  import_id uuid NOT NULL REFERENCES imports (id) ON DELETE CASCADE,
  n integer NOT NULL,
  first_line bigint NOT NULL,
  last_line bigint NOT NULL,
  bytes integer NOT NULL,
  data bytea,
  status text NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'running', 'completed', 'failed', 'cancelled')),
  attempts integer NOT NULL DEFAULT 0,
  error text,
  rows_read integer NOT NULL DEFAULT 0,
  rows_accepted integer NOT NULL DEFAULT 0,
  rows_rejected integer NOT NULL DEFAULT 0,
  key_candidates boolean NOT NULL DEFAULT false,
  started_at timestamptz,
  finished_at timestamptz,
  PRIMARY KEY (import_id, n)
);
-- Part bytes are short-lived (cleared after the merge): store them uncompressed, which is
-- several times cheaper to write than pglz.
ALTER TABLE import_parts ALTER COLUMN data SET STORAGE EXTERNAL;
