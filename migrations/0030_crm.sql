-- CRM sync (issue 6): staged sources, runs, what was created in the CRM, failures, and the
-- Postgres destination. Every table is keyed by the pipeline's name (the config's `name`),
-- so several CRM pipelines can share one database.

-- What Sluice remembers about each source: the validators of the last fetch (an unchanged
-- source is not re-processed) and the hash of its content (servers without validators).
CREATE TABLE crm_sources (
  pipeline text NOT NULL,
  source text NOT NULL CHECK (source IN ('customers', 'orders', 'payments')),
  location text NOT NULL,
  etag text,
  last_modified text,
  sha256 text,
  rows bigint NOT NULL DEFAULT 0,
  rejected bigint NOT NULL DEFAULT 0,
  fetched_at timestamptz NOT NULL DEFAULT now(),
  changed_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (pipeline, source)
);

-- Staging: the last good content of each source, replaced in the same transaction that
-- updates crm_sources, so validators and data never disagree.
CREATE TABLE crm_customers (
  pipeline text NOT NULL,
  id bigint NOT NULL,
  first_name text NOT NULL,
  last_name text NOT NULL,
  PRIMARY KEY (pipeline, id)
);

CREATE TABLE crm_orders (
  pipeline text NOT NULL,
  id bigint NOT NULL,
  user_id bigint NOT NULL,
  order_date date,
  status text NOT NULL,
  PRIMARY KEY (pipeline, id)
);

CREATE TABLE crm_payments (
  pipeline text NOT NULL,
  id bigint NOT NULL,
  order_id bigint NOT NULL,
  payment_method text NOT NULL,
  amount_cents bigint NOT NULL,
  PRIMARY KEY (pipeline, id)
);
CREATE INDEX crm_payments_by_order ON crm_payments (pipeline, order_id);

CREATE TABLE crm_runs (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  pipeline text NOT NULL,
  trigger text NOT NULL CHECK (trigger IN ('cli', 'schedule', 'api')),
  destination text NOT NULL,
  status text NOT NULL DEFAULT 'running'
    CHECK (status IN ('running', 'completed', 'skipped', 'failed')),
  forced boolean NOT NULL DEFAULT false,
  config_hash text NOT NULL,
  requests bigint NOT NULL DEFAULT 0,
  retries_429 bigint NOT NULL DEFAULT 0,
  summary jsonb NOT NULL DEFAULT '{}',
  sources jsonb NOT NULL DEFAULT '{}',
  -- destination facts: plan sizes, requests per route, retries, step timings
  details jsonb NOT NULL DEFAULT '{}',
  error text,
  started_at timestamptz NOT NULL DEFAULT now(),
  finished_at timestamptz
);
CREATE INDEX crm_runs_newest ON crm_runs (started_at DESC, id DESC);
CREATE INDEX crm_runs_by_pipeline ON crm_runs (pipeline, started_at DESC);

-- Journal of CRM records Sluice created, written as they are created (crash safety); the
-- CRM's own list stays the truth on the next read.
CREATE TABLE crm_links (
  pipeline text NOT NULL,
  kind text NOT NULL CHECK (kind IN ('person', 'deal')),
  key text NOT NULL,
  crm_id bigint NOT NULL,
  run_id bigint NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (pipeline, kind, key)
);

-- Records that failed permanently in a run (4xx other than 429, retries exhausted...).
CREATE TABLE crm_failures (
  run_id bigint NOT NULL REFERENCES crm_runs (id) ON DELETE CASCADE,
  kind text NOT NULL CHECK (kind IN ('person', 'deal')),
  key text NOT NULL,
  operation text NOT NULL,
  error text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX crm_failures_by_run ON crm_failures (run_id);

-- The Postgres destination: the same persons and deals the CRM gets.
CREATE TABLE crm_persons (
  pipeline text NOT NULL,
  customer_id text NOT NULL,
  name text NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (pipeline, customer_id)
);

CREATE TABLE crm_deals (
  pipeline text NOT NULL,
  order_id text NOT NULL,
  customer_id text NOT NULL,
  title text NOT NULL,
  value numeric NOT NULL,
  currency text NOT NULL,
  status text NOT NULL,
  order_status text NOT NULL,
  order_date date,
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (pipeline, order_id)
);
