/**
 * SQL of the CRM sync's destinations. The Pipedrive planner compares the desired persons
 * and deals (src/db/sql/crm.ts) with a snapshot of the CRM (session temp tables filled
 * from every page of the list endpoints) in one set-based pass; the Postgres destination
 * upserts the same deals in one statement.
 */
import type pg from 'pg';
import { DESIRED_DEALS, DESIRED_PERSONS } from './crm.ts';

type Q = Pick<pg.ClientBase, 'query'>;

/** A run's session tables (dropped at its end, and before it starts, to be sure). */
export const RUN_TABLES = 'crm_remote_persons, crm_remote_deals, crm_want_persons, crm_want_deals, crm_plan_persons, crm_plan_deals';

/** Temp tables live as long as the run's dedicated connection; recreated per run. */
export async function createSnapshotTables(q: Q): Promise<void> {
  await q.query(`DROP TABLE IF EXISTS ${RUN_TABLES}`);
  await q.query(`CREATE TEMP TABLE crm_remote_persons (crm_id bigint NOT NULL, key text NOT NULL, name text)`);
  await q.query(`CREATE TEMP TABLE crm_remote_deals (crm_id bigint NOT NULL, key text NOT NULL, title text, value numeric,
    currency text, person_id bigint, status text, expected_close_date date)`);
}

export interface RemotePerson {
  crmId: number;
  key: string | null;
  name: string | null;
}

export interface RemoteDeal {
  crmId: number;
  key: string | null;
  title: string | null;
  value: number | null;
  currency: string | null;
  personId: number | null;
  status: string | null;
  expectedCloseDate: string | null;
}

/** Records without a key are not Sluice's: left out of the snapshot. */
const keyed = <R extends { key: string | null }>(rows: R[]) => rows.filter((r): r is R & { key: string } => r.key !== null);

export async function insertRemotePersons(q: Q, page: RemotePerson[]): Promise<void> {
  const rows = keyed(page);
  if (!rows.length) return;
  await q.query(`INSERT INTO crm_remote_persons SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[])`, [
    rows.map((r) => r.crmId), rows.map((r) => r.key), rows.map((r) => r.name),
  ]);
}

export async function insertRemoteDeals(q: Q, page: RemoteDeal[]): Promise<void> {
  const rows = keyed(page);
  if (!rows.length) return;
  await q.query(
    `INSERT INTO crm_remote_deals SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::numeric[], $5::text[],
       $6::bigint[], $7::text[], $8::date[])`,
    [
      rows.map((r) => r.crmId), rows.map((r) => r.key), rows.map((r) => r.title), rows.map((r) => r.value),
      rows.map((r) => r.currency), rows.map((r) => r.personId), rows.map((r) => r.status), rows.map((r) => r.expectedCloseDate),
    ],
  );
}

/**
 * One snapshot row per key, so the plan is a plain hash join: of the CRM records holding a
 * key (copies made by hand, or by the old job) the lowest id stays; a record read twice
 * (list pages overlap, and are read again after a shift: src/pipelines/crm/pipedrive-lists.ts)
 * stays once. One hash aggregate over the snapshot, then work on the repeated keys only;
 * returns how many keys several CRM records hold.
 */
async function dropDuplicates(q: Q, remote: 'crm_remote_persons' | 'crm_remote_deals'): Promise<number> {
  const { rows } = await q.query<{ keys: number }>(
    `WITH d AS (SELECT key, min(crm_id) AS keep, max(crm_id) AS top FROM ${remote} GROUP BY key HAVING count(*) > 1),
          rep AS (SELECT r.ctid AS tid, r.key, r.crm_id > d.keep AS other FROM ${remote} r JOIN d USING (key)),
          one AS (SELECT key, min(tid) AS tid FROM rep WHERE NOT other GROUP BY key),
          gone AS (DELETE FROM ${remote} r WHERE r.ctid IN (SELECT x.tid FROM rep x JOIN one USING (key) WHERE x.other OR x.tid <> one.tid))
     SELECT count(*) FILTER (WHERE top > keep)::int AS keys FROM d`,
  );
  return rows[0]?.keys ?? 0;
}

export interface PlanCounts {
  create: number;
  update: number;
  unchanged: number;
  fail: number;
  /** Keys held by more than one CRM record (the lowest id is the one Sluice maintains). */
  duplicates: number;
}

/** The plan tables hold only the work (create, update, fail); unchanged = desired - work. */
async function counts(q: Q, table: 'crm_plan_persons' | 'crm_plan_deals', want: string, duplicates: number): Promise<PlanCounts> {
  const { rows } = await q.query<{ action: keyof PlanCounts; n: number }>(
    `SELECT action, count(*)::int AS n FROM ${table} GROUP BY action
     UNION ALL SELECT 'unchanged', (SELECT count(*) FROM ${want}) - (SELECT count(*) FROM ${table})`,
  );
  const c: PlanCounts = { create: 0, update: 0, unchanged: 0, fail: 0, duplicates };
  for (const r of rows) c[r.action] = Number(r.n);
  return c;
}

/**
 * The desired persons and deals, materialised once the sources are staged (while the CRM
 * is still being read): the plan then joins two small-per-row temp tables.
 */
export async function createDesiredTables(q: Q, params: unknown[]): Promise<void> {
  await q.query(`CREATE TEMP TABLE crm_want_persons AS ${DESIRED_PERSONS}`, [params[0]]);
  await q.query(`CREATE TEMP TABLE crm_want_deals AS ${DESIRED_DEALS}`, params);
  await q.query('ANALYZE crm_want_persons, crm_want_deals');
}

/**
 * Plans persons: create what the CRM lacks, update a differing name; the unchanged are
 * only counted. Runs as soon as every page of persons is in (the deals may still be read).
 */
export async function planPersons(q: Q): Promise<PlanCounts> {
  // Autovacuum never analyzes temp tables: without statistics the planner may join a
  // million-row snapshot by nested loop.
  await q.query('ANALYZE crm_remote_persons');
  const duplicates = await dropDuplicates(q, 'crm_remote_persons');
  await q.query(
    `CREATE TEMP TABLE crm_plan_persons AS
     SELECT row_number() OVER (ORDER BY w.key) AS seq, w.key, w.name, r.crm_id,
            CASE WHEN r.crm_id IS NULL THEN 'create' ELSE 'update' END AS action
       FROM crm_want_persons w
       LEFT JOIN crm_remote_persons r USING (key)
      WHERE r.crm_id IS NULL OR r.name IS DISTINCT FROM w.name`,
  );
  await q.query('CREATE INDEX ON crm_plan_persons (seq)');
  return counts(q, 'crm_plan_persons', 'crm_want_persons', duplicates);
}

/**
 * Plans deals against the person map (the snapshot plus the persons created in this run).
 * `fail`: the order's customer is not in the source, or its person could not be created.
 */
export async function planDeals(q: Q): Promise<PlanCounts> {
  await q.query('ANALYZE crm_remote_persons, crm_remote_deals'); // persons: with those created in this run
  const duplicates = await dropDuplicates(q, 'crm_remote_deals');
  await q.query(
    `CREATE TEMP TABLE crm_plan_deals AS
     SELECT row_number() OVER (ORDER BY key) AS seq, * FROM (
       SELECT w.key, w.person_key, w.title, w.value, w.currency, w.status,
              w.order_date, pm.crm_id AS person_crm_id, r.crm_id,
              r.title AS r_title, r.value AS r_value, r.currency AS r_currency, r.person_id AS r_person_id,
              r.status AS r_status, r.expected_close_date AS r_date,
              CASE WHEN w.title IS NULL OR pm.crm_id IS NULL THEN 'fail'
                   WHEN r.crm_id IS NULL THEN 'create'
                   WHEN (r.title, r.value, r.currency, r.person_id, r.status, r.expected_close_date)
                        IS NOT DISTINCT FROM (w.title, w.value, w.currency, pm.crm_id, w.status, w.order_date) THEN 'unchanged'
                   ELSE 'update' END AS action
         FROM crm_want_deals w
         LEFT JOIN crm_remote_persons pm ON pm.key = w.person_key
         LEFT JOIN crm_remote_deals r ON r.key = w.key) j
      WHERE action <> 'unchanged'`,
  );
  await q.query('CREATE INDEX ON crm_plan_deals (seq)');
  return counts(q, 'crm_plan_deals', 'crm_want_deals', duplicates);
}

export interface PersonWork {
  seq: number;
  key: string;
  name: string;
  crm_id: number | null;
  action: 'create' | 'update';
}

export interface DealWork {
  seq: number;
  key: string;
  person_key: string;
  title: string;
  value: string;
  currency: string;
  status: string;
  order_date: string | null;
  person_crm_id: number;
  crm_id: number | null;
  r_title: string | null;
  r_value: string | null;
  r_currency: string | null;
  r_person_id: number | null;
  r_status: string | null;
  r_date: string | null;
  action: 'create' | 'update';
}

/** The next batch of creates and updates after `seq` (keyset over the plan's index). */
export async function nextPersonWork(q: Q, afterSeq: number, limit: number): Promise<PersonWork[]> {
  // The person plan holds only creates and updates (a deal plan also holds its fails).
  const { rows } = await q.query<PersonWork>(
    `SELECT seq::int, key, name, crm_id, action FROM crm_plan_persons WHERE seq > $1 ORDER BY seq LIMIT $2`,
    [afterSeq, limit],
  );
  return rows;
}

export async function nextDealWork(q: Q, afterSeq: number, limit: number): Promise<DealWork[]> {
  const { rows } = await q.query<DealWork>(
    `SELECT seq::int, key, person_key, title, value::text, currency, status, to_char(order_date, 'YYYY-MM-DD') AS order_date,
            person_crm_id, crm_id, r_title, r_value::text, r_currency, r_person_id, r_status,
            to_char(r_date, 'YYYY-MM-DD') AS r_date, action
       FROM crm_plan_deals WHERE seq > $1 AND action IN ('create', 'update') ORDER BY seq LIMIT $2`,
    [afterSeq, limit],
  );
  return rows;
}

/**
 * Records every deal the planner could not send, with its reason, in one statement. The
 * run's person failures are in crm_failures by then: an unconfirmed person create (error
 * starting with `unconfirmedPrefix`) is named as such, the next run settles it.
 */
export async function recordPlannedDealFailures(q: Q, runId: number, unconfirmedPrefix: string): Promise<number> {
  const r = await q.query(
    `INSERT INTO crm_failures (run_id, kind, key, operation, error)
     SELECT $1, 'deal', p.key, CASE WHEN p.crm_id IS NULL THEN 'create' ELSE 'update' END,
            CASE WHEN p.title IS NULL THEN 'customer ' || p.person_key || ' is not in the customers source'
                 WHEN starts_with(f.error, $2) THEN 'person ' || p.person_key || ': its create is unconfirmed (the next run finds or creates it, then this deal)'
                 ELSE 'person ' || p.person_key || ' is not in the CRM (its create failed)' END
       FROM crm_plan_deals p
       LEFT JOIN LATERAL (SELECT error FROM crm_failures f WHERE f.run_id = $1 AND f.kind = 'person' AND f.key = p.person_key LIMIT 1) f ON true
      WHERE p.action = 'fail'`,
    [runId, unconfirmedPrefix],
  );
  return r.rowCount ?? 0;
}

// ---- Postgres destination ----------------------------------------------------------------

export interface UpsertCounts {
  created: number;
  updated: number;
  unchanged: number;
  failed: number;
}

/** Upserts persons; only rows whose values differ are written. */
export async function upsertPersons(q: Q, pipeline: string): Promise<UpsertCounts> {
  const { rows } = await q.query<UpsertCounts>(
    `WITH want AS (${DESIRED_PERSONS}),
     up AS (
       INSERT INTO crm_persons (pipeline, customer_id, name) SELECT $1, key, name FROM want
       ON CONFLICT (pipeline, customer_id) DO UPDATE SET name = EXCLUDED.name, updated_at = now()
        WHERE crm_persons.name IS DISTINCT FROM EXCLUDED.name
       RETURNING (xmax = 0) AS inserted)
     SELECT count(*) FILTER (WHERE inserted)::int AS created, count(*) FILTER (WHERE NOT inserted)::int AS updated,
            ((SELECT count(*) FROM want) - count(*))::int AS unchanged, 0 AS failed FROM up`,
    [pipeline],
  );
  return rows[0] as UpsertCounts;
}

/** Upserts deals (params of DESIRED_DEALS); orders without a customer are failures. */
export async function upsertDeals(q: Q, params: unknown[]): Promise<UpsertCounts> {
  const { rows } = await q.query<UpsertCounts>(
    `WITH want AS (${DESIRED_DEALS}),
     up AS (
       INSERT INTO crm_deals (pipeline, order_id, customer_id, title, value, currency, status, order_status, order_date)
       SELECT $1, key, person_key, title, value, currency, status, order_status, order_date FROM want WHERE title IS NOT NULL
       ON CONFLICT (pipeline, order_id) DO UPDATE SET customer_id = EXCLUDED.customer_id, title = EXCLUDED.title,
         value = EXCLUDED.value, currency = EXCLUDED.currency, status = EXCLUDED.status,
         order_status = EXCLUDED.order_status, order_date = EXCLUDED.order_date, updated_at = now()
        WHERE (crm_deals.customer_id, crm_deals.title, crm_deals.value, crm_deals.currency, crm_deals.status,
               crm_deals.order_status, crm_deals.order_date)
              IS DISTINCT FROM (EXCLUDED.customer_id, EXCLUDED.title, EXCLUDED.value, EXCLUDED.currency,
               EXCLUDED.status, EXCLUDED.order_status, EXCLUDED.order_date)
       RETURNING (xmax = 0) AS inserted)
     SELECT count(*) FILTER (WHERE inserted)::int AS created, count(*) FILTER (WHERE NOT inserted)::int AS updated,
            ((SELECT count(*) FROM want WHERE title IS NOT NULL) - count(*))::int AS unchanged,
            (SELECT count(*) FROM want WHERE title IS NULL)::int AS failed FROM up`,
    params,
  );
  return rows[0] as UpsertCounts;
}

/** The orders the Postgres destination could not write, as failures of the run. */
export async function recordMissingCustomerFailures(q: Q, runId: number, params: unknown[]): Promise<void> {
  await q.query(
    `INSERT INTO crm_failures (run_id, kind, key, operation, error)
     SELECT $7, 'deal', key, 'upsert', 'customer ' || person_key || ' is not in the customers source'
       FROM (${DESIRED_DEALS}) w WHERE title IS NULL`,
    [...params, runId],
  );
}
