/**
 * Runs a pipeline's merge (merge-sql.ts) in one transaction: either every row of the
 * import is folded into the target tables, or nothing is. Merges into the same target
 * are serialized by an advisory lock, so file order and counts stay exact when imports
 * (or the parts of one import) finish at the same time.
 */
import type { Client } from '../db/pool.ts';
import type { Pipeline, StageType } from '../engine/pipeline.ts';
import { mergeSql } from './merge-sql.ts';

export interface MergeCounts {
  inserted: number;
  updated: number;
  unchanged: number;
}

export interface MergeTimings {
  [step: string]: number;
}

function lockKey(table: string): string {
  return `sluice:merge:${table}`;
}

/** Merges staging table `stage` into the pipeline target. The caller owns `client`. */
export async function mergeStage(
  client: Client,
  pipeline: Pipeline,
  stage: string,
  hasKeyCandidates: boolean,
  timings: MergeTimings = {},
): Promise<MergeCounts> {
  const types = new Map<string, StageType>([[pipeline.key.name, pipeline.key.type]]);
  for (const c of pipeline.columns) types.set(c.name, c.type);
  const sql = mergeSql(pipeline, stage, types);
  const step = async (name: string, text: string) => {
    const t0 = performance.now();
    const r = await client.query(text);
    timings[name] = Math.round((timings[name] ?? 0) + performance.now() - t0);
    return r;
  };
  await client.query('BEGIN');
  try {
    await step('lock', `SELECT pg_advisory_xact_lock(hashtext('${lockKey(pipeline.target.table)}'))`);
    if (hasKeyCandidates) await step('resolve_keys', sql.resolveKeys);
    await step('fold', sql.fold);
    for (const l of sql.lookups) await step('lookups', l);
    await client.query('CREATE TEMP TABLE sluice_ids (key text, id bigint, inserted boolean, changed boolean) ON COMMIT DROP');
    await step('upsert', sql.upsert);
    if (sql.missingIds) await step('missing_ids', sql.missingIds);
    if (sql.childUpsert) await step('child_upsert', sql.childUpsert);
    const { rows } = await step('counts', sql.counts);
    await step('commit', 'COMMIT');
    const r = rows[0] as { inserted: number; updated: number; unchanged: number };
    return { inserted: Number(r.inserted), updated: Number(r.updated), unchanged: Number(r.unchanged) };
  } catch (err) {
    await client.query('ROLLBACK').catch(() => {});
    throw err;
  }
}
