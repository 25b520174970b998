-- Every file import, whatever its pipeline, and the rows it rejected.
CREATE TABLE imports (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  pipeline text NOT NULL,
  file_name text,
  file_bytes bigint,
  source text NOT NULL DEFAULT 'cli',
  status text NOT NULL DEFAULT 'queued'
    CHECK (status IN ('queued', 'running', 'completed', 'failed', 'cancelled')),
  error text,
  rows_read bigint NOT NULL DEFAULT 0,
  rows_inserted bigint NOT NULL DEFAULT 0,
  rows_updated bigint NOT NULL DEFAULT 0,
  rows_unchanged bigint NOT NULL DEFAULT 0,
  rows_rejected bigint NOT NULL DEFAULT 0,
  options jsonb NOT NULL DEFAULT '{}',
  timings jsonb NOT NULL DEFAULT '{}',
  created_at timestamptz NOT NULL DEFAULT now(),
  started_at timestamptz,
  finished_at timestamptz,
  updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX imports_newest ON imports (created_at DESC, id DESC);

-- A reject is a row (field IS NULL) or a single field (field = its column; the row itself
-- was imported without that value) that Sluice refused, with the reason and the raw text.
CREATE TABLE import_rejects (
  id bigint GENERATED ALWAYS AS IDENTITY,
  import_id uuid NOT NULL REFERENCES imports (id) ON DELETE CASCADE,
  line bigint NOT NULL,
  field text,
  reason text NOT NULL,
  raw text NOT NULL
);
CREATE INDEX import_rejects_by_import ON import_rejects (import_id, line, id);
