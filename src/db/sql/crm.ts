/**
 * SQL of the CRM sync, one statement per function, parameterised and set-based. Staging
 * tables are chosen from a fixed table (never from input); the join of orders, customers
 * and payments sums payments per order *before* joining, so an order with three payments
 * is not counted three times (the earlier implementation's bug).
 */
import type pg from 'pg';
import type { SourceName } from '../../pipelines/crm/config.ts';
import { SluiceError } from '../../core/errors.ts';

type Q = Pick<pg.ClientBase, 'query'>;

/** Per source: the load table's text columns (= the CSV header, checked by HEADER MATCH). */
export const SOURCE_COLUMNS: Record<SourceName, readonly string[]> = {
  customers: ['id', 'first_name', 'last_name'],
  orders: ['id', 'user_id', 'order_date', 'status'],
  payments: ['id', 'order_id', 'payment_method', 'amount'],
};

/** Why a staged line is refused, in SQL over the load table `l` (NULL = good). */
const REJECT_REASON: Record<SourceName, string> = {
  customers: `CASE WHEN NOT coalesce(pg_input_is_valid(btrim(l.id), 'bigint'), false) THEN 'id is not an integer' END`,
  orders: `CASE WHEN NOT coalesce(pg_input_is_valid(btrim(l.id), 'bigint'), false) THEN 'id is not an integer'
                WHEN NOT coalesce(pg_input_is_valid(btrim(l.user_id), 'bigint'), false) THEN 'user_id is not an integer'
                WHEN nullif(btrim(l.order_date), '') IS NOT NULL AND NOT pg_input_is_valid(btrim(l.order_date), 'date')
                  THEN 'order_date is not a date' END`,
  payments: `CASE WHEN NOT coalesce(pg_input_is_valid(btrim(l.id), 'bigint'), false) THEN 'id is not an integer'
                  WHEN NOT coalesce(pg_input_is_valid(btrim(l.order_id), 'bigint'), false) THEN 'order_id is not an integer'
                  WHEN NOT coalesce(pg_input_is_valid(btrim(l.amount), 'bigint'), false) THEN 'amount is not an integer (cents)' END`,
};

const STAGE_INSERT: Record<SourceName, string> = {
  customers: `INSERT INTO crm_customers (pipeline, id, first_name, last_name)
    SELECT $1, btrim(id)::bigint, coalesce(btrim(first_name), ''), coalesce(btrim(last_name), '') FROM good`,
  orders: `INSERT INTO crm_orders (pipeline, id, user_id, order_date, status)
    SELECT $1, btrim(id)::bigint, btrim(user_id)::bigint, nullif(btrim(order_date), '')::date, coalesce(btrim(status), '') FROM good`,
  payments: `INSERT INTO crm_payments (pipeline, id, order_id, payment_method, amount_cents)
    SELECT $1, btrim(id)::bigint, btrim(order_id)::bigint, coalesce(btrim(payment_method), ''), btrim(amount)::bigint FROM good`,
};

const STAGE_TABLE: Record<SourceName, string> = { customers: 'crm_customers', orders: 'crm_orders', payments: 'crm_payments' };

export interface SourceState {
  /** As shown: a URL's password and query values masked (for display, not identity). */
  location: string;
  /**
   * Which resource was fetched (sourceIdentity: a SHA-256 of the URL with its query, without
   * its password): a request is conditional only when it is unchanged. NULL before
   * migration 0047.
   */
  location_sha256: string | null;
  etag: string | null;
  last_modified: string | null;
  sha256: string | null;
  rows: number;
  rejected: number;
}

export async function getSourceState(q: Q, pipeline: string, source: SourceName): Promise<SourceState | undefined> {
  const { rows } = await q.query<SourceState>(
    'SELECT location, location_sha256, etag, last_modified, sha256, rows, rejected FROM crm_sources WHERE pipeline = $1 AND source = $2',
    [pipeline, source],
  );
  return rows[0];
}

/** The session-local table a source's CSV is copied into (dropped at commit). */
export function createLoadTable(source: SourceName): string {
  const cols = SOURCE_COLUMNS[source].map((c) => `${c} text`).join(', ');
  return `CREATE TEMP TABLE crm_load (line bigint GENERATED ALWAYS AS IDENTITY, ${cols}) ON COMMIT DROP`;
}

/** COPY of the CSV (RFC 4180 as Postgres reads it); the header must name our columns in order. */
export function copyLoadTable(source: SourceName): string {
  return `COPY crm_load (${SOURCE_COLUMNS[source].join(', ')}) FROM STDIN WITH (FORMAT csv, HEADER MATCH)`;
}

export interface StageResult {
  rows: number;
  rejected: number;
  samples: Array<{ line: number; reason: string }>;
}

/**
 * Replaces the pipeline's staged rows of one source by the good lines of `crm_load`.
 * A duplicated id keeps its last line; the earlier ones are rejects.
 */
export async function replaceStaged(q: Q, pipeline: string, source: SourceName): Promise<StageResult> {
  await q.query(`CREATE TEMP TABLE crm_load_checked ON COMMIT DROP AS
    SELECT l.*, ${REJECT_REASON[source]} AS reason FROM crm_load l`);
  await q.query(`UPDATE crm_load_checked c SET reason = 'duplicate id (a later line wins)'
      FROM (SELECT line, row_number() OVER (PARTITION BY btrim(id)::bigint ORDER BY line DESC) AS rn
              FROM crm_load_checked WHERE reason IS NULL) d
     WHERE d.line = c.line AND d.rn > 1`);
  await q.query(`DELETE FROM ${STAGE_TABLE[source]} WHERE pipeline = $1`, [pipeline]);
  const ins = await q.query(`WITH good AS (SELECT * FROM crm_load_checked WHERE reason IS NULL) ${STAGE_INSERT[source]}`, [pipeline]);
  // Fresh statistics now, not when autovacuum gets round to it: the join that follows
  // would otherwise be planned for the table's old size (a nested loop over 1M orders).
  await q.query(`ANALYZE ${STAGE_TABLE[source]}`);
  const rej = await q.query<{ n: number; samples: Array<{ line: number; reason: string }> | null }>(
    `SELECT count(*)::int AS n,
            (SELECT json_agg(json_build_object('line', line + 1, 'reason', reason) ORDER BY line)
               FROM (SELECT line, reason FROM crm_load_checked WHERE reason IS NOT NULL ORDER BY line LIMIT 5) s) AS samples
       FROM crm_load_checked WHERE reason IS NOT NULL`,
  );
  const r = rej.rows[0];
  return { rows: ins.rowCount ?? 0, rejected: r?.n ?? 0, samples: r?.samples ?? [] };
}

export async function saveSourceState(q: Q, pipeline: string, source: SourceName, s: SourceState, changed: boolean): Promise<void> {
  await q.query(
    `INSERT INTO crm_sources (pipeline, source, location, location_sha256, etag, last_modified, sha256, rows, rejected, fetched_at, changed_at)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now(), now())
     ON CONFLICT (pipeline, source) DO UPDATE SET location = EXCLUDED.location, location_sha256 = EXCLUDED.location_sha256,
       etag = EXCLUDED.etag, last_modified = EXCLUDED.last_modified, sha256 = EXCLUDED.sha256, rows = EXCLUDED.rows,
       rejected = EXCLUDED.rejected, fetched_at = now(),
       changed_at = CASE WHEN $10 THEN now() ELSE crm_sources.changed_at END`,
    [pipeline, source, s.location, s.location_sha256, s.etag, s.last_modified, s.sha256, s.rows, s.rejected, changed],
  );
}

// ---- desired state -------------------------------------------------------------------

/**
 * One row per order: the deal Sluice wants. Parameters: $1 pipeline, $2 multiplier,
 * $3 decimals, $4 currency, $5 status map (jsonb), $6 default status. `title` is NULL when
 * the order's customer is missing from the customers source.
 */
export const DESIRED_DEALS = `
  WITH paid AS (
    SELECT order_id, sum(amount_cents) AS cents FROM crm_payments WHERE pipeline = $1 GROUP BY order_id
  )
  SELECT o.id::text AS key, o.user_id::text AS person_key,
         CASE WHEN c.id IS NOT NULL THEN btrim(c.last_name || ' ' || c.first_name) END AS title,
         round(coalesce(p.cents, 0) * $2::numeric / 100, $3::int) AS value,
         $4::text AS currency,
         coalesce($5::jsonb ->> o.status, $6::text) AS status,
         o.status AS order_status,
         o.order_date
    FROM crm_orders o
    LEFT JOIN crm_customers c ON c.pipeline = o.pipeline AND c.id = o.user_id
    LEFT JOIN paid p ON p.order_id = o.id
   WHERE o.pipeline = $1`;

/** One row per customer: the person Sluice wants ($1 pipeline). */
export const DESIRED_PERSONS = `
  SELECT id::text AS key, btrim(first_name || ' ' || last_name) AS name FROM crm_customers WHERE pipeline = $1`;

export interface ValueParams {
  pipeline: string;
  multiplier: number;
  decimals: number;
  currency: string;
  statusMap: Record<string, string>;
  defaultStatus: string;
}

export function desiredParams(v: ValueParams): unknown[] {
  return [v.pipeline, v.multiplier, v.decimals, v.currency, JSON.stringify(v.statusMap), v.defaultStatus];
}

// ---- runs, links, failures -------------------------------------------------------------

export interface RunRow {
  id: number;
  pipeline: string;
  trigger: string;
  destination: string;
  status: string;
  forced: boolean;
  requests: number;
  retries_429: number;
  summary: Record<string, unknown>;
  sources: Record<string, unknown>;
  details: Record<string, unknown>;
  error: string | null;
  started_at: Date;
  finished_at: Date | null;
}

/** Runs left `running` by a process that died (the caller holds the pipeline's lock). */
export async function failInterruptedRuns(q: Q, pipeline: string): Promise<number> {
  const r = await q.query(
    `UPDATE crm_runs SET status = 'failed', error = 'interrupted (the process stopped before the run finished)',
       finished_at = now() WHERE pipeline = $1 AND status = 'running'`,
    [pipeline],
  );
  return r.rowCount ?? 0;
}

export async function insertRun(q: Q, r: { pipeline: string; trigger: string; destination: string; forced: boolean; configHash: string }): Promise<number> {
  const { rows } = await q.query<{ id: number }>(
    `INSERT INTO crm_runs (pipeline, trigger, destination, forced, config_hash) VALUES ($1, $2, $3, $4, $5) RETURNING id`,
    [r.pipeline, r.trigger, r.destination, r.forced, r.configHash],
  );
  return (rows[0] as { id: number }).id;
}

/**
 * A running run's progress. `requests` never goes down here: while the run is going the
 * column holds the requests reserved ahead of sending (reserveRequests), which the run's
 * own count only catches up with; finishRun settles it to the real count.
 */
export async function updateRunProgress(q: Q, id: number, requests: number, retries429: number, summary: unknown): Promise<void> {
  // Only while running, as finishRun: a run failed from outside keeps that row as it is.
  await q.query(`UPDATE crm_runs SET requests = greatest(requests, $2), retries_429 = $3, summary = $4 WHERE id = $1 AND status = 'running'`, [
    id,
    requests,
    retries429,
    JSON.stringify(summary),
  ]);
}

/**
 * Reserves requests of a running run before they are sent: `requests` becomes at least
 * `upTo`, so a process killed at any moment leaves a count no lower than what it sent (the
 * daily budget sums this column). finishRun replaces it by the real count.
 */
export async function reserveRequests(q: Q, id: number, upTo: number): Promise<void> {
  const { rowCount } = await q.query(`UPDATE crm_runs SET requests = greatest(requests, $2) WHERE id = $1 AND status = 'running'`, [id, upTo]);
  // Not running any more: another process took this run for a dead one's and failed it
  // (this one lost its pipeline lock with its connection). Nothing more may be sent: what
  // it sends now is counted nowhere.
  if (rowCount !== 1) throw new SluiceError('conflict', `run ${id} is no longer recorded as running (its pipeline lock was lost, and another process failed it): stopped before sending more`);
}

export async function finishRun(
  q: Q,
  id: number,
  f: { status: string; requests: number; retries429: number; summary: unknown; sources: unknown; details: unknown; error: string | null },
): Promise<void> {
  // Only while running: a run another process failed meanwhile (it lost its lock) keeps
  // that outcome.
  await q.query(
    `UPDATE crm_runs SET status = $2, requests = $3, retries_429 = $4, summary = $5, sources = $6, details = $7,
       error = $8, finished_at = now() WHERE id = $1 AND status = 'running'`,
    [id, f.status, f.requests, f.retries429, JSON.stringify(f.summary), JSON.stringify(f.sources), JSON.stringify(f.details ?? {}), f.error],
  );
}

/**
 * The last run that did its work (completed): its failed and unconfirmed records, and
 * whether a source was staged anew after it finished (a run that failed after staging
 * leaves work for the next one).
 */
export async function lastCompletedRun(
  q: Q,
  pipeline: string,
): Promise<{ config_hash: string; failed: number; unconfirmed: number; staged_since: boolean } | undefined> {
  const { rows } = await q.query<{ config_hash: string; failed: number; unconfirmed: number; staged_since: boolean }>(
    `SELECT r.config_hash,
            coalesce((r.summary #>> '{persons,failed}')::int, 0) + coalesce((r.summary #>> '{deals,failed}')::int, 0) AS failed,
            coalesce((r.summary #>> '{persons,unconfirmed}')::int, 0) + coalesce((r.summary #>> '{deals,unconfirmed}')::int, 0) AS unconfirmed,
            EXISTS (SELECT 1 FROM crm_sources s WHERE s.pipeline = r.pipeline AND s.changed_at > r.finished_at) AS staged_since
       FROM crm_runs r WHERE r.pipeline = $1 AND r.status = 'completed' ORDER BY r.id DESC LIMIT 1`,
    [pipeline],
  );
  return rows[0];
}

/** The first key of a pipeline's run lock (pg_try_advisory_lock(PIPELINE_LOCK, hashtext(pipeline))). */
const PIPELINE_LOCK = 7301030;

/** A pipeline's run as the schedule sees it at start (lastRuns). */
export interface LastRun {
  id: number;
  status: 'running' | 'completed' | 'skipped' | 'failed';
  started_at: Date;
  /**
   * When it ended: finished_at; for a run still marked running, its last progress
   * (started_at + the summary's duration_ms, written at most a second apart) or its start.
   */
  ended_at: Date;
  /** Failed and unconfirmed persons and deals it left (0 unless it completed with some). */
  failed: number;
  unconfirmed: number;
  /**
   * Marked running while some session holds the pipeline's lock: a run in progress in
   * another process, not one left by a process that died.
   */
  in_progress: boolean;
}

/**
 * The pipeline's newest runs (up to `limit`), newest first, whatever their trigger or
 * status, and the database's clock (`now`: the runs' times are its own). The lock is looked
 * up in pg_locks, not taken: taking it, even for a moment, would refuse a run starting then.
 */
export async function lastRuns(q: Q, pipeline: string, limit = 50): Promise<{ runs: LastRun[]; now: Date }> {
  const { rows } = await q.query<LastRun & { db_now: Date }>(
    `SELECT r.id, r.status, r.started_at,
            coalesce(r.finished_at, r.started_at + coalesce((r.summary ->> 'duration_ms')::bigint, 0) * interval '1 millisecond') AS ended_at,
            coalesce((r.summary #>> '{persons,failed}')::int, 0) + coalesce((r.summary #>> '{deals,failed}')::int, 0) AS failed,
            coalesce((r.summary #>> '{persons,unconfirmed}')::int, 0) + coalesce((r.summary #>> '{deals,unconfirmed}')::int, 0) AS unconfirmed,
            r.status = 'running' AND EXISTS (
              SELECT 1 FROM pg_locks l
               WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
                 AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                 AND l.classid = ${PIPELINE_LOCK} AND l.objid = hashtext(r.pipeline)::oid
            ) AS in_progress,
            now() AS db_now
       FROM crm_runs r WHERE r.pipeline = $1 ORDER BY r.started_at DESC, r.id DESC LIMIT $2`,
    [pipeline, limit],
  );
  if (rows.length === 0) return { runs: [], now: (await q.query<{ now: Date }>('SELECT now()')).rows[0]!.now };
  return { runs: rows.map(({ db_now: _, ...r }) => r), now: rows[0]!.db_now };
}

/** Requests this pipeline sent since UTC midnight (the daily budget's spend). */
export async function requestsToday(q: Q, pipeline: string): Promise<number> {
  const { rows } = await q.query<{ n: number }>(
    `SELECT coalesce(sum(requests), 0)::bigint AS n FROM crm_runs
      WHERE pipeline = $1 AND started_at >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'`,
    [pipeline],
  );
  return rows[0]?.n ?? 0;
}

export async function listRuns(q: Q, limit: number, pipeline?: string): Promise<RunRow[]> {
  const { rows } = await q.query<RunRow>(
    `SELECT id, pipeline, trigger, destination, status, forced, requests, retries_429, summary, sources, details, error,
            started_at, finished_at
       FROM crm_runs WHERE ($2::text IS NULL OR pipeline = $2) ORDER BY started_at DESC, id DESC LIMIT $1`,
    [limit, pipeline ?? null],
  );
  return rows;
}

export interface Link {
  kind: 'person' | 'deal';
  key: string;
  crmId: number;
}

export async function insertLinks(q: Q, pipeline: string, runId: number, links: Link[]): Promise<void> {
  if (!links.length) return;
  await q.query(
    `INSERT INTO crm_links (pipeline, kind, key, crm_id, run_id)
     SELECT $1, kind, key, crm_id, $2 FROM unnest($3::text[], $4::text[], $5::bigint[]) AS t (kind, key, crm_id)
     ON CONFLICT (pipeline, kind, key) DO UPDATE SET crm_id = EXCLUDED.crm_id, run_id = EXCLUDED.run_id, created_at = now()`,
    [pipeline, runId, links.map((l) => l.kind), links.map((l) => l.key), links.map((l) => l.crmId)],
  );
}

export interface Failure {
  kind: 'person' | 'deal';
  key: string;
  operation: string;
  error: string;
}

export async function insertFailures(q: Q, runId: number, failures: Failure[]): Promise<void> {
  if (!failures.length) return;
  await q.query(
    `INSERT INTO crm_failures (run_id, kind, key, operation, error)
     SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[])`,
    [runId, failures.map((f) => f.kind), failures.map((f) => f.key), failures.map((f) => f.operation), failures.map((f) => f.error)],
  );
}

export async function listFailures(q: Q, runId: number, limit = 1000): Promise<Failure[]> {
  const { rows } = await q.query<Failure>(
    'SELECT kind, key, operation, error FROM crm_failures WHERE run_id = $1 ORDER BY created_at, key LIMIT $2',
    [runId, limit],
  );
  return rows;
}

/** Whether run `runId` was recorded. */
export async function runExists(q: Q, runId: number): Promise<boolean> {
  const { rows } = await q.query<{ found: boolean }>('SELECT EXISTS (SELECT 1 FROM crm_runs WHERE id = $1) AS found', [runId]);
  return rows[0]!.found;
}

/** Session-level lock per pipeline, so the CLI and `serve` never run one pipeline twice. */
export async function tryLockPipeline(q: Q, pipeline: string): Promise<boolean> {
  const { rows } = await q.query<{ ok: boolean }>(`SELECT pg_try_advisory_lock(${PIPELINE_LOCK}, hashtext($1)) AS ok`, [pipeline]);
  return rows[0]?.ok === true;
}

export async function unlockPipeline(q: Q, pipeline: string): Promise<void> {
  await q.query(`SELECT pg_advisory_unlock(${PIPELINE_LOCK}, hashtext($1))`, [pipeline]);
}

/** How big the CRM was at the end of the pipeline's last run that said (list paging hint). */
export async function lastCrmSize(q: Q, pipeline: string): Promise<{ persons: number; deals: number } | undefined> {
  const { rows } = await q.query<{ size: { persons: number; deals: number } }>(
    `SELECT details -> 'crm_size' AS size FROM crm_runs WHERE pipeline = $1 AND details ? 'crm_size' ORDER BY id DESC LIMIT 1`,
    [pipeline],
  );
  return rows[0]?.size;
}
