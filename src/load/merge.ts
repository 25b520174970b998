/**
 * Runs a pipeline's merge (merge-sql.ts) in one transaction: either every row of the
 * import is folded into the target tables, or nothing is. Merges into the same target
 * are serialized by an advisory lock, so file order and counts stay exact when imports
 * (or the parts of one import) finish at the same time.
 */
import type { Client } from '../db/pool.ts';
import type { Pipeline, StageType } from '../engine/pipeline.ts';
import { ident, mergeSql } from './merge-sql.ts';

export interface MergeCounts {
  inserted: number;
  updated: number;
  unchanged: number;
}

export interface MergeTimings {
  [step: string]: number;
}

export interface MergeHints {
  /** Rows in staging before folding. */
  rows: number;
  /** Some rows carry several key candidates (resolved against existing records first). */
  hasKeyCandidates: boolean;
  /**
   * Keys that may occur on more than one row, when the stager saw every row (a key not in
   * this list occurs once). Undefined: unknown, every key is checked.
   */
  possibleDuplicates?: string[];
}

/** Rows removed by folding: staged rows minus rows now in staging. */
async function stagedFolded(client: Client, stage: string): Promise<number> {
  const { rows } = await client.query(`SELECT coalesce(sum(n - 1), 0)::bigint AS folded FROM ${ident(stage)} WHERE n > 1`);
  return Number(rows[0].folded);
}

function lockKey(table: string): string {
  return `sluice:merge:${table}`;
}

/** Merges staging table `stage` into the pipeline target. The caller owns `client`. */
export async function mergeStage(
  client: Client,
  pipeline: Pipeline,
  stage: string,
  hints: MergeHints,
  timings: MergeTimings = {},
  beforeCommit?: (client: Client, counts: MergeCounts) => Promise<void>,
): Promise<MergeCounts> {
  const types = new Map<string, StageType>([[pipeline.key.name, pipeline.key.type]]);
  for (const c of pipeline.columns) types.set(c.name, c.type);
  const sql = mergeSql(pipeline, stage, types);
  const explain = process.env.SLUICE_EXPLAIN === '1';
  const step = async (name: string, text: string, params?: unknown[]) => {
    const t0 = performance.now();
    if (explain && /^\s*(WITH|INSERT|UPDATE|DELETE)/.test(text)) {
      // Diagnostics (docs/operations.md): the plan of each merge step, on stderr.
      const plan = await client.query(`EXPLAIN (ANALYZE, BUFFERS, WAL) ${text}`, params);
      process.stderr.write(`-- ${name}\n${plan.rows.map((r: Record<string, string>) => r['QUERY PLAN']).join('\n')}\n`);
      timings[name] = Math.round((timings[name] ?? 0) + performance.now() - t0);
      return client.query('SELECT 0 WHERE false');
    }
    const r = await client.query(text, params);
    timings[name] = Math.round((timings[name] ?? 0) + performance.now() - t0);
    return r;
  };
  await client.query('BEGIN');
  try {
    await step('lock', `SELECT pg_advisory_xact_lock(hashtext('${lockKey(pipeline.target.table)}'))`);
    if (hints.hasKeyCandidates) await step('resolve_keys', sql.resolveKeys);
    // Key resolution can create duplicates the stager could not see: check them all then.
    const known = hints.possibleDuplicates !== undefined && !hints.hasKeyCandidates;
    const dups = await step('duplicates', sql.duplicates(known), known ? [hints.possibleDuplicates] : undefined);
    const dupKeys = dups.rows.map((r: { key: string }) => r.key);
    if (dupKeys.length > 0) await step('fold', sql.fold, [dupKeys]);
    for (const l of sql.lookups) await step('lookups', l);
    await client.query('CREATE TEMP TABLE sluice_ids (key text, id bigint, inserted boolean, changed boolean) ON COMMIT DROP');
    const up = await step('upsert', sql.upsert);
    const keys = hints.rows - (dups.rows.length > 0 ? await stagedFolded(client, stage) : 0);
    // Every key the upsert did not touch is an existing, unchanged record.
    if (sql.missingIds && (up.rowCount ?? 0) < keys) await step('missing_ids', sql.missingIds);
    // Statistics for the planner: hash joins, not sorts, on hundreds of thousands of ids.
    await step('analyze', 'ANALYZE sluice_ids');
    if (sql.childInsert) await step('child_insert', sql.childInsert);
    if (sql.childSource && sql.childUpsert && sql.childInsertMissing && sql.childFlag) {
      await step('child_source', sql.childSource);
      await client.query('CREATE TEMP TABLE sluice_child_changed (id bigint) ON COMMIT DROP');
      // Only the child-table join is left in these two statements: probe its primary key
      // per row instead of hashing the whole child table.
      await client.query('SET LOCAL enable_hashjoin = off');
      await client.query('SET LOCAL enable_mergejoin = off');
      await step('child_update', sql.childUpsert);
      await step('child_insert_missing', sql.childInsertMissing);
      await client.query('SET LOCAL enable_hashjoin = on');
      await client.query('SET LOCAL enable_mergejoin = on');
      await step('child_flag', sql.childFlag);
    }
    let counts: MergeCounts;
    if (dupKeys.length === 0) {
      const r = (await step('counts', sql.countsSimple)).rows[0] as { inserted: number; updated: number };
      counts = { inserted: r.inserted, updated: r.updated, unchanged: hints.rows - r.inserted - r.updated };
    } else {
      const r = (await step('counts', sql.counts)).rows[0] as { inserted: number; updated: number; unchanged: number };
      counts = { inserted: Number(r.inserted), updated: Number(r.updated), unchanged: Number(r.unchanged) };
    }
    // Recording the outcome in the same transaction makes a retried merge a no-op.
    if (beforeCommit) await beforeCommit(client, counts);
    await step('commit', 'COMMIT');
    return counts;
  } catch (err) {
    await client.query('ROLLBACK').catch(() => {});
    throw err;
  }
}
