/**
 * Runs a pipeline's merge (merge-sql.ts) in one transaction: either every row of the
 * import is folded into the target tables, or nothing is. Merges into the same target
 * are serialized by an advisory lock, so file order and counts stay exact when imports
 * (or the parts of one import) finish at the same time.
 */
import { setTimeout as delay } from 'node:timers/promises';
import type { QueryResult } from 'pg';
import type { Client } from '../db/pool.ts';
import type { Pipeline, StageType } from '../engine/pipeline.ts';
import { ident, mergeSql, stageTypeMap, type MergeSql } from './merge-sql.ts';
import type { ChunkOrigin, PreparedChunk } from './prepared-chunk.ts';

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

/** The text whose hashtext is the advisory lock every merge into `table` takes (one at a time). */
export function lockKey(table: string): string {
  return `sluice:merge:${table}`;
}

/**
 * Between two tries for the target's lock by a merge that gives way when its worker stops
 * (MergeSession.begin): at most this late after the lock is let go does it start.
 */
const LOCK_RETRY_MS = 100;

/** One statement of a merge; `name` times it (imports.timings), settings have none. */
export interface Statement {
  name?: string;
  text: string;
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
  /** Chunks of one import: every merge keeps its keys' outcome (sluice_ids_all) for the next. */
  private readonly chunked: boolean;
  /** The counts of every merge of this session so far. */
  readonly total: MergeCounts = { inserted: 0, updated: 0, unchanged: 0 };

  private count(c: MergeCounts): MergeCounts {
    this.total.inserted += c.inserted;
    this.total.updated += c.updated;
    this.total.unchanged += c.unchanged;
    return c;
  }

  constructor(client: Client, pipeline: Pipeline, timings: MergeTimings = {}, chunked = false) {
    this.client = client;
    this.pipeline = pipeline;
    this.timings = timings;
    this.chunked = chunked;
    this.types = stageTypeMap(pipeline);
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

  /**
   * Runs statements and returns the last one's result: one per round trip, each timed, or
   * with `batch` all in one round trip timed as `batch` (SLUICE_EXPLAIN: one by one).
   */
  private async run(statements: Statement[], batch?: string): Promise<QueryResult> {
    if (batch && process.env.SLUICE_EXPLAIN !== '1') {
      const t0 = performance.now();
      const r = (await this.client.query(statements.map((x) => x.text).join(';\n'))) as unknown as QueryResult | QueryResult[];
      this.timings[batch] = Math.round((this.timings[batch] ?? 0) + performance.now() - t0);
      return Array.isArray(r) ? r[r.length - 1]! : r;
    }
    let last: QueryResult | undefined;
    for (const x of statements) last = x.name ? await this.step(x.name, x.text) : await this.client.query(x.text);
    return last!;
  }

  /**
   * Opens the transaction and takes the target's lock, waiting for the merge that holds it.
   * With `stop` (a worker's merge, src/intake/merge-job.ts), the wait ends when `stop` is
   * aborted: the transaction is rolled back and begin returns false. Without it (`sluice
   * import`), it waits as long as the other merge takes.
   */
  async begin(stop?: AbortSignal): Promise<boolean> {
    await this.client.query('BEGIN');
    if (!(await this.lock(stop))) {
      await this.rollback();
      return false;
    }
    await this.client.query(`CREATE TEMP TABLE sluice_ids (key text, id bigint, inserted boolean, changed boolean) ON COMMIT DROP;
      CREATE TEMP TABLE sluice_ids_all (key text, inserted boolean, changed boolean) ON COMMIT DROP
      ${this.pipeline.target.child ? '; CREATE TEMP TABLE sluice_child_changed (id bigint) ON COMMIT DROP' : ''}`);
    return true;
  }

  /**
   * Takes the target's lock (timed as `lock`); false when `stop` was aborted first. A backend
   * waiting in pg_advisory_xact_lock gets out only by a cancel sent on another connection,
   * so with `stop` the lock is tried (pg_try_advisory_xact_lock) every LOCK_RETRY_MS, and
   * at once when `stop` is aborted. A stopping worker's merge then gives way instead of
   * holding the stop until another import's merge ends (32 s in a review, behind a slow
   * upload). Tries do not queue: a `sluice import` waiting in pg_advisory_xact_lock takes
   * the lock before them, and merges trying take it in no particular order.
   */
  private async lock(stop?: AbortSignal): Promise<boolean> {
    const key = `hashtext('${lockKey(this.pipeline.target.table)}')`;
    if (!stop) {
      await this.step('lock', `SELECT pg_advisory_xact_lock(${key})`);
      return true;
    }
    const t0 = performance.now();
    try {
      for (;;) {
        if ((await this.client.query(`SELECT pg_try_advisory_xact_lock(${key}) AS ok`)).rows[0].ok) return true;
        if (stop.aborted) return false;
        // Rejects (AbortError) when `stop` is aborted: the next turn tries once more, then gives way.
        await delay(LOCK_RETRY_MS, undefined, { signal: stop }).catch(() => {});
      }
    } finally {
      this.timings.lock = Math.round((this.timings.lock ?? 0) + performance.now() - t0);
    }
  }

  /** Lookups resolved, the target's probe, missing lookups created, then the upsert. */
  private upsertStatements(sql: MergeSql): Statement[] {
    return [
      { text: 'TRUNCATE sluice_ids' },
      ...sql.lookups.map((text) => ({ name: 'lookups', text })),
      // A hash of the few distinct lookup values, probed per row: not a sort of every row.
      { text: 'SET LOCAL enable_mergejoin = off' },
      // The target is reached through its indexes only: its statistics go stale inside the
      // import's transaction (autovacuum may even record it empty while it holds millions of
      // uncommitted rows), and a plan that scans it per chunk, or per row, never ends.
      { text: 'SET LOCAL enable_seqscan = off' },
      ...sql.probe.map((text) => ({ name: 'probe', text })),
      // The references the probed records take that are missing: a few distinct values.
      ...(sql.createLookups.length
        ? [{ text: 'SET LOCAL enable_seqscan = on' }, ...sql.createLookups.map((text) => ({ name: 'lookups', text })), { text: 'SET LOCAL enable_seqscan = off' }]
        : []),
      // Changed records by primary key (see merge-sql.ts), never a scan of the target.
      { text: 'SET LOCAL enable_hashjoin = off' },
      { name: 'upsert', text: sql.upsert },
      { text: 'SET LOCAL enable_hashjoin = on' },
      { text: 'SET LOCAL enable_seqscan = on' },
    ];
  }

  /**
   * After the upsert: the child table, the chunk's outcome kept for later merges (`keep`),
   * then the counts (last: its result is the run's).
   */
  private restStatements(sql: MergeSql, keep: boolean, counts: string): Statement[] {
    const s: Statement[] = [{ text: 'SET LOCAL enable_mergejoin = on' }];
    // Statistics for the planner: hash joins, not sorts, on hundreds of thousands of ids.
    s.push({ name: 'analyze', text: 'ANALYZE sluice_ids' });
    if (sql.childInsert) s.push({ name: 'child_insert', text: sql.childInsert });
    if (sql.childSource && sql.childUpsert && sql.childInsertMissing && sql.childFlag) {
      s.push(
        { text: 'TRUNCATE sluice_child_changed' },
        { name: 'child_source', text: sql.childSource },
        // Only the child-table join is left in these two statements: probe its primary key
        // per row instead of hashing the whole child table.
        { text: 'SET LOCAL enable_hashjoin = off' },
        { text: 'SET LOCAL enable_mergejoin = off' },
        { text: 'SET LOCAL enable_seqscan = off' },
        { name: 'child_update', text: sql.childUpsert },
        { name: 'child_insert_missing', text: sql.childInsertMissing },
        { text: 'SET LOCAL enable_hashjoin = on' },
        { text: 'SET LOCAL enable_mergejoin = on' },
        { text: 'SET LOCAL enable_seqscan = on' },
        { name: 'child_flag', text: sql.childFlag },
      );
    }
    if (keep) s.push({ name: 'ids', text: 'INSERT INTO sluice_ids_all SELECT key, inserted, changed FROM sluice_ids' });
    s.push({ name: 'counts', text: counts });
    return s;
  }

  /**
   * Merges staging table `stage` (inside the transaction) and returns its counts (also
   * added to `total`). With `afterChunks`, its keys may have been met in earlier merges of
   * this session.
   */
  async mergeStaged(stage: string, hints: MergeHints, afterChunks = false): Promise<MergeCounts> {
    const step = this.step.bind(this);
    const sql = mergeSql(this.pipeline, stage, this.types);
    if (hints.hasKeyCandidates) {
      await this.client.query('SET LOCAL enable_seqscan = off');
      await step('resolve_keys', sql.resolveKeys);
      await this.client.query('SET LOCAL enable_seqscan = on');
    }
    // Key resolution can create duplicates the stager could not see: check them all then.
    const known = hints.possibleDuplicates !== undefined && !hints.hasKeyCandidates;
    const dups = await step('duplicates', sql.duplicates(known), known ? [hints.possibleDuplicates] : undefined);
    const dupKeys = dups.rows.map((r: { key: string }) => r.key);
    if (dupKeys.length > 0) await step('fold', sql.fold, [dupKeys]);
    await this.run(this.upsertStatements(sql));
    const simple = dupKeys.length === 0 && !afterChunks;
    const c = await this.run(this.restStatements(sql, this.chunked && !afterChunks, simple ? sql.countsSimple : sql.counts));
    const r = c.rows[0] as { inserted: number; updated: number; unchanged?: number };
    return this.count({ inserted: r.inserted, updated: r.updated, unchanged: r.unchanged ?? hints.rows - r.inserted - r.updated });
  }

  /**
   * Merges one chunk of a pipelined import: a staging table whose keys are all distinct
   * and first met in this import. mergeStaged's statements in two round trips instead of
   * one per statement: Node is parsing the next chunk meanwhile, and each round trip would
   * wait for it to reach the event loop.
   */
  async mergeChunk(stage: string, rows: number): Promise<MergeCounts> {
    const sql = mergeSql(this.pipeline, stage, this.types);
    await this.run(this.upsertStatements(sql), 'chunk_upsert');
    const c = await this.run(this.restStatements(sql, true, sql.countsSimple), 'chunk_rest');
    const r = c.rows[0] as { inserted: number; updated: number };
    return this.count({ inserted: r.inserted, updated: r.updated, unchanged: rows - r.inserted - r.updated });
  }

  /**
   * Before chunks are prepared on another connection: the target tables locked against
   * anything that would move their rows (VACUUM FULL, CLUSTER, ALTER TABLE) until this
   * transaction ends, so the tuple ids prepare records stay valid (chunk-sql.ts).
   */
  async lockTargets(): Promise<void> {
    const t = this.pipeline.target;
    await this.client.query(`LOCK TABLE ${[t.table, ...(t.child ? [t.child.table] : [])].map(ident).join(', ')} IN ROW EXCLUSIVE MODE`);
  }

  /**
   * Writes a chunk prepared on another connection (prepared-chunk.ts), in one round trip:
   * the references its rows need that did not exist, then records and child rows at their
   * tuple ids or inserted, no probe. Each write must touch as many rows as prepare counted: a writer outside
   * Sluice changing those records in between fails the import (nothing is written).
   */
  async applyChunk(c: PreparedChunk): Promise<{ counts: MergeCounts; created: Array<Record<string, unknown>> }> {
    const s: Statement[] = [];
    let created: number | undefined;
    if (c.unresolved > 0) {
      s.push(...c.sql.lookups.map((text) => ({ name: 'lookups', text })), { name: 'lookups', text: c.sql.fillLookups! });
      created = s.length;
      s.push({ text: c.sql.known!.created });
    }
    // The writes below reach the target and its child only by tuple id: with every other
    // way to read them off, the plan is the prepared table read once with a TID fetch per
    // record (chunk-sql.ts).
    const off = ['seqscan', 'indexscan', 'indexonlyscan', 'bitmapscan', 'hashjoin', 'mergejoin'];
    s.push(...off.map((x) => ({ text: `SET LOCAL enable_${x} = off` })));
    const checked: Array<{ what: string; expected: number; at: number }> = [];
    const write = (what: string, text: string | undefined, expected: number) => {
      if (!text) return;
      checked.push({ what, expected, at: s.length });
      s.push({ name: `apply_${what.replace(/ /g, '_')}`, text });
    };
    write('update', c.sql.update, c.changed);
    write('child update', c.sql.childUpdate, c.childUpdates);
    s.push(...off.map((x) => ({ text: `SET LOCAL enable_${x} = on` })));
    // The inserts read no target table (a narrow chunk's joins its staging table to the few
    // records found: a hash of those).
    write('insert', c.sql.insert, c.inserted);
    write('child insert', c.sql.childInsert, c.childInserts);
    let createdRows: Array<Record<string, unknown>> = [];
    if (process.env.SLUICE_EXPLAIN === '1') {
      if (created === undefined) {
        await this.run(s);
      } else {
        await this.run(s.slice(0, created));
        createdRows = (await this.client.query(c.sql.known!.created)).rows;
        await this.run(s.slice(created + 1));
      }
    } else {
      const t0 = performance.now();
      const results = (await this.client.query(s.map((x) => x.text).join(';\n'))) as unknown as QueryResult[];
      this.timings.apply = Math.round((this.timings.apply ?? 0) + performance.now() - t0);
      for (const w of checked) {
        const got = results[w.at]?.rowCount;
        if (got !== w.expected) {
          throw new Error(`${this.pipeline.target.table} changed outside this import while it ran: the ${w.what} of a chunk touched ${got} rows, expected ${w.expected}; nothing was imported`);
        }
      }
      if (created !== undefined) createdRows = results[created]!.rows;
    }
    const counts = this.count({ inserted: c.inserted, updated: c.updated, unchanged: c.rows - c.inserted - c.updated });
    return { counts, created: createdRows };
  }

  /**
   * Before the last merge of a session whose chunks were prepared: the outcome of the keys
   * of `stage` met in those chunks (sluice_ids_all, read by the last merge's counts). A
   * narrow chunk's new records are the rows of its staging table not in its prepared table.
   */
  async rememberPrepared(chunks: ChunkOrigin[], stage: string): Promise<void> {
    await this.run(this.rememberStatements(chunks, stage));
  }

  /** rememberPrepared's statements, one `ids` per chunk (test/intake/merge-ids-plan.test.ts reads their plans). */
  rememberStatements(chunks: ChunkOrigin[], stage: string): Statement[] {
    const K = ident(this.pipeline.key.name);
    const later = `(SELECT s.${K} FROM ${ident(stage)} s)`;
    return [
      // Hash or merge joins only. None of these tables has statistics (part and prepared
      // tables are never analyzed, `stage` is a temporary table), and a narrow chunk's
      // `exclude` (hashtext of the key = ANY of its keys met before, an expression no
      // statistics describe) is estimated to leave 1 row of the thousands there are: the
      // plan was a nested loop reading `stage` once per row of the part: 17.6-19.6 s, and
      // 66-132 s into a fuller table, against 0.21-0.37 s (keys repeated across parts). ANALYZE of
      // `stage` got a hash join on that file too, but leaves the 1-row estimate, costs
      // ~80 ms and slowed the merge of `stage` after it.
      { text: 'SET LOCAL enable_nestloop = off' },
      ...chunks.map((c): Statement => {
        const P = ident(c.prepared);
        return {
          name: 'ids',
          text: c.source
            ? `INSERT INTO sluice_ids_all SELECT m.${K}, p.tid IS NULL, coalesce(p.changed OR p.cchanged, false)
                 FROM ${ident(c.source)} m LEFT JOIN ${P} p ON p.key = m.${K}
                WHERE m.${K} IN ${later} ${c.exclude ? `AND NOT (${c.exclude})` : ''}`
            : `INSERT INTO sluice_ids_all SELECT p.key, p.tid IS NULL, p.changed OR p.cchanged FROM ${P} p WHERE p.key IN ${later}`,
        };
      }),
      { text: 'SET LOCAL enable_nestloop = on' },
    ];
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
