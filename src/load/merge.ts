/**
 * Runs a pipeline's merge (merge-sql.ts) in one transaction: either every row of the
 * import is folded into the target tables, or nothing is. Merges into the same target
 * are serialized by an advisory lock, so file order and counts stay exact when imports
 * (or the parts of one import) finish at the same time.
 */
import type { QueryResult } from 'pg';
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

/**
 * One merge transaction on `client`: begin() takes the target's lock, then one or more
 * staging tables are merged in file order (mergeStaged), then commit() or rollback(). A
 * pipelined import merges chunks of a file while it parses the next (import-runner.ts):
 * each chunk holds the first row of each of its keys; later rows of a key seen before go
 * to a final stage merged last with `afterChunks`, so every key's rows apply in file order.
 */
export class MergeSession {
  private readonly client: Client;
  private readonly pipeline: Pipeline;
  private readonly timings: MergeTimings;
  private readonly types: Map<string, StageType>;
  /** Keep each merge's ids (sluice_ids_all) for a final afterChunks merge. */
  private readonly chunked: boolean;

  constructor(client: Client, pipeline: Pipeline, timings: MergeTimings = {}, chunked = false) {
    this.client = client;
    this.pipeline = pipeline;
    this.timings = timings;
    this.chunked = chunked;
    this.types = new Map<string, StageType>([[pipeline.key.name, pipeline.key.type]]);
    for (const c of pipeline.columns) this.types.set(c.name, c.type);
  }

  private async step(name: string, text: string, params?: unknown[]) {
    const t0 = performance.now();
    if (process.env.SLUICE_EXPLAIN === '1' && /^\s*(WITH|INSERT|UPDATE|DELETE)/.test(text)) {
      // Diagnostics (docs/operations.md): the plan of each merge step, on stderr.
      const plan = await this.client.query(`EXPLAIN (ANALYZE, BUFFERS, WAL) ${text}`, params);
      process.stderr.write(`-- ${name}\n${plan.rows.map((r: Record<string, string>) => r['QUERY PLAN']).join('\n')}\n`);
      this.timings[name] = Math.round((this.timings[name] ?? 0) + performance.now() - t0);
      return this.client.query('SELECT 0 WHERE false');
    }
    const r = await this.client.query(text, params);
    this.timings[name] = Math.round((this.timings[name] ?? 0) + performance.now() - t0);
    return r;
  }

  async begin(): Promise<void> {
    await this.client.query('BEGIN');
    await this.step('lock', `SELECT pg_advisory_xact_lock(hashtext('${lockKey(this.pipeline.target.table)}'))`);
    await this.client.query('CREATE TEMP TABLE sluice_ids (key text, id bigint, inserted boolean, changed boolean) ON COMMIT DROP');
    if (this.pipeline.target.child) await this.client.query('CREATE TEMP TABLE sluice_child_changed (id bigint) ON COMMIT DROP');
    if (this.chunked) await this.client.query('CREATE TEMP TABLE sluice_ids_all (key text, inserted boolean, changed boolean) ON COMMIT DROP');
  }

  /**
   * Merges staging table `stage` (inside the transaction) and returns its counts. With
   * `afterChunks`, its keys may have been met in earlier merges of this session.
   */
  async mergeStaged(stage: string, hints: MergeHints, afterChunks = false): Promise<MergeCounts> {
    const client = this.client;
    const step = this.step.bind(this);
    const sql = mergeSql(this.pipeline, stage, this.types);
    await client.query('TRUNCATE sluice_ids');
    if (hints.hasKeyCandidates) await step('resolve_keys', sql.resolveKeys);
    // Key resolution can create duplicates the stager could not see: check them all then.
    const known = hints.possibleDuplicates !== undefined && !hints.hasKeyCandidates;
    const dups = await step('duplicates', sql.duplicates(known), known ? [hints.possibleDuplicates] : undefined);
    const dupKeys = dups.rows.map((r: { key: string }) => r.key);
    if (dupKeys.length > 0) await step('fold', sql.fold, [dupKeys]);
    for (const l of sql.lookups) await step('lookups', l);
    // A hash of the few distinct lookup values, probed per row: not a sort of every row.
    await client.query('SET LOCAL enable_mergejoin = off');
    const up = await step('upsert', sql.upsert);
    await client.query('SET LOCAL enable_mergejoin = on');
    const keys = hints.rows - (dups.rows.length > 0 ? await stagedFolded(client, stage) : 0);
    // Every key the upsert did not touch is an existing, unchanged record. A chunked session
    // records every key (a later merge's counts need to know the key was met unchanged).
    if ((up.rowCount ?? 0) < keys) {
      if (sql.missingIds) await step('missing_ids', sql.missingIds);
      else if (this.chunked && !afterChunks) await step('missing_ids', sql.untouchedKeys);
    }
    // Statistics for the planner: hash joins, not sorts, on hundreds of thousands of ids.
    await step('analyze', 'ANALYZE sluice_ids');
    if (sql.childInsert) await step('child_insert', sql.childInsert);
    if (sql.childSource && sql.childUpsert && sql.childInsertMissing && sql.childFlag) {
      await client.query('TRUNCATE sluice_child_changed');
      await step('child_source', sql.childSource);
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
    if (afterChunks) {
      const r = (await step('counts', sql.countsAfterChunks)).rows[0] as { inserted: number; updated: number; unchanged: number };
      counts = { inserted: Number(r.inserted), updated: Number(r.updated), unchanged: Number(r.unchanged) };
    } else if (dupKeys.length === 0) {
      const r = (await step('counts', sql.countsSimple)).rows[0] as { inserted: number; updated: number };
      counts = { inserted: r.inserted, updated: r.updated, unchanged: hints.rows - r.inserted - r.updated };
    } else {
      const r = (await step('counts', sql.counts)).rows[0] as { inserted: number; updated: number; unchanged: number };
      counts = { inserted: Number(r.inserted), updated: Number(r.updated), unchanged: Number(r.unchanged) };
    }
    if (this.chunked && !afterChunks) await step('ids', 'INSERT INTO sluice_ids_all SELECT key, inserted, changed FROM sluice_ids');
    return counts;
  }

  /**
   * Merges one chunk of a pipelined import: a staging table whose keys are all distinct
   * and first met in this import. The same statements as mergeStaged, sent in two round
   * trips instead of one per statement: Node is parsing the next chunk meanwhile, and each
   * round trip would wait for it to reach the event loop.
   */
  async mergeChunk(stage: string, rows: number): Promise<MergeCounts> {
    if (process.env.SLUICE_EXPLAIN === '1') return this.mergeStaged(stage, { rows, hasKeyCandidates: false, possibleDuplicates: [] });
    const sql = mergeSql(this.pipeline, stage, this.types);
    const first = ['TRUNCATE sluice_ids', ...sql.lookups, 'SET LOCAL enable_mergejoin = off', sql.upsert, 'SET LOCAL enable_mergejoin = on'];
    let t0 = performance.now();
    const r1 = (await this.client.query(first.join(';\n'))) as unknown as QueryResult[];
    this.timings.chunk_upsert = Math.round((this.timings.chunk_upsert ?? 0) + performance.now() - t0);
    const upserted = r1[r1.length - 2]!.rowCount ?? 0;
    const rest: string[] = [];
    if (upserted < rows) rest.push(sql.missingIds ?? sql.untouchedKeys);
    rest.push('ANALYZE sluice_ids');
    if (sql.childInsert) rest.push(sql.childInsert);
    if (sql.childSource && sql.childUpsert && sql.childInsertMissing && sql.childFlag) {
      rest.push(
        'TRUNCATE sluice_child_changed',
        sql.childSource,
        'SET LOCAL enable_hashjoin = off',
        'SET LOCAL enable_mergejoin = off',
        sql.childUpsert,
        sql.childInsertMissing,
        'SET LOCAL enable_hashjoin = on',
        'SET LOCAL enable_mergejoin = on',
        sql.childFlag,
      );
    }
    rest.push(sql.countsSimple, 'INSERT INTO sluice_ids_all SELECT key, inserted, changed FROM sluice_ids');
    t0 = performance.now();
    const r2 = (await this.client.query(rest.join(';\n'))) as unknown as QueryResult[];
    this.timings.chunk_rest = Math.round((this.timings.chunk_rest ?? 0) + performance.now() - t0);
    const c = r2[r2.length - 2]!.rows[0] as { inserted: number; updated: number };
    return { inserted: c.inserted, updated: c.updated, unchanged: rows - c.inserted - c.updated };
  }

  async commit(): Promise<void> {
    await this.step('commit', 'COMMIT');
  }

  async rollback(): Promise<void> {
    await this.client.query('ROLLBACK').catch(() => {});
  }
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
  const session = new MergeSession(client, pipeline, timings);
  await session.begin();
  try {
    const counts = await session.mergeStaged(stage, hints);
    // Recording the outcome in the same transaction makes a retried merge a no-op.
    if (beforeCommit) await beforeCommit(client, counts);
    await session.commit();
    return counts;
  } catch (err) {
    await session.rollback();
    throw err;
  }
}
