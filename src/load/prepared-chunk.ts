/**
 * Prepared chunks: the read half of a chunk's merge, run on a second connection while the
 * import's own connection writes the chunk before (chunk-sql.ts says why that is safe).
 * Two backends then share a pipelined import's Postgres work instead of one doing it all.
 * PreparedChunks runs that pipeline for `sluice import` and the intake merge alike.
 */
import type { Client, Pool } from '../db/pool.ts';
import { keyIdentity, type Pipeline, type StageType } from '../engine/pipeline.ts';
import { chunkSql, type ChunkSql } from './chunk-sql.ts';
import type { MergeSession } from './merge.ts';
import { ident, stageTypeMap } from './merge-sql.ts';

/** Where a prepared chunk came from: what MergeSession.rememberPrepared reads. */
export interface ChunkOrigin {
  prepared: string;
  /** For a narrow chunk only (its new records are not in `prepared`): its staging table and the rows left out. */
  source?: string;
  exclude?: string | undefined;
}

/** A chunk ready for MergeSession.applyChunk: its table, statements and expected counts. */
export interface PreparedChunk {
  sql: ChunkSql;
  rows: number;
  inserted: number;
  updated: number;
  /** Records the update must change; child rows it must insert and update. */
  changed: number;
  childInserts: number;
  childUpdates: number;
  /** Rows referencing a lookup row prepare did not find (apply creates or finds it). */
  unresolved: number;
}

/** The sequence behind the target's `id` (pg_get_serial_sequence), or null without one. */
async function idSequence(client: Client, pipeline: Pipeline): Promise<string | null> {
  const { rows } = await client.query(`SELECT pg_get_serial_sequence($1, 'id') AS s`, [ident(pipeline.target.table)]);
  return (rows[0]?.s as string | null) ?? null;
}

class ChunkPreparer {
  private readonly client: Client;
  private readonly pipeline: Pipeline;
  private readonly types: Map<string, StageType>;
  private readonly sequence: string | null;
  private readonly timings: Record<string, number>;

  /** References created by the merge's transaction (applyChunk), not yet in sluice_lk_known. */
  private pending: Array<Record<string, unknown>> = [];
  private readonly seen = new Set<string>();
  /** sluice_lk_known exists on the connection. */
  private knownTable = false;

  /**
   * A preparer on a connection of its own from `pool` (named `sluice-prepare` in
   * pg_stat_activity). The merge's transaction must hold the target's merge lock and
   * MergeSession.lockTargets() first. `sequence`: from idSequence() (null: records named by key).
   */
  static async open(pool: Pool, pipeline: Pipeline, sequence: string | null, timings: Record<string, number>): Promise<ChunkPreparer> {
    const client = await pool.connect();
    try {
      await client.query(`SET application_name = 'sluice-prepare'`);
    } catch (err) {
      client.release(err as Error);
      throw err;
    }
    return new ChunkPreparer(client, pipeline, sequence, timings);
  }

  /** The preparing connection (e.g. for the COPY of a chunk before its prepare). */
  get db(): Client {
    return this.client;
  }

  private constructor(client: Client, pipeline: Pipeline, sequence: string | null, timings: Record<string, number>) {
    this.client = client;
    this.pipeline = pipeline;
    this.sequence = sequence;
    this.timings = timings;
    this.types = stageTypeMap(pipeline);
  }

  /**
   * References the merge's transaction created or found for a chunk (applyChunk's
   * `created`): later chunks resolve them by id instead of leaving them to the merge.
   */
  remember(created: Array<Record<string, unknown>>): void {
    for (const r of created) {
      const id = JSON.stringify(r);
      if (this.seen.has(id)) continue;
      this.seen.add(id);
      this.pending.push(r);
    }
  }

  /**
   * Gives the connection back to the pool, cleaned (session table dropped, name reset), or
   * destroyed when `broken` (it may have failed mid-statement) or the cleaning fails.
   */
  async close(broken: boolean): Promise<void> {
    const db = this.client;
    if (broken) return db.release(true);
    try {
      // Its temporary tables (sluice_lk_known, a chunk table) go with the import.
      await db.query('DISCARD TEMP');
      await db.query('RESET application_name');
      db.release();
    } catch (err) {
      db.release(err as Error);
    }
  }

  /**
   * Prepares staging table `source` (distinct keys, none met before in this import) into a
   * new unlogged table `prepared`, committed so that the merge's transaction can read it.
   * `exclude`: rows of `source` left out (condition on alias `m`); `shared`: the merge's
   * connection can read `source` too (chunkSql: a narrow chunk).
   */
  async prepare(source: string, prepared: string, exclude?: string, shared = false): Promise<PreparedChunk> {
    const t0 = performance.now();
    const sql = chunkSql(this.pipeline, this.types, source, prepared, this.sequence, exclude, shared);
    if (sql.known) {
      if (!this.knownTable) {
        await this.client.query(sql.known.create);
        this.knownTable = true;
      }
      if (this.pending.length > 0) {
        await this.client.query(sql.known.insert, [JSON.stringify(this.pending)]);
        this.pending = [];
      }
    }
    try {
      if (process.env.SLUICE_EXPLAIN === '1') {
        // Diagnostics (docs/operations.md): the plan of the prepared table's statement.
        for (const text of sql.prepare) {
          if (!text.startsWith('CREATE UNLOGGED TABLE')) {
            await this.client.query(text);
            continue;
          }
          const plan = await this.client.query(`EXPLAIN (ANALYZE, BUFFERS) ${text}`);
          process.stderr.write(`-- prepare\n${plan.rows.map((r: Record<string, string>) => r['QUERY PLAN']).join('\n')}\n`);
        }
      } else {
        await this.client.query(sql.prepare.join(';\n'));
      }
    } catch (err) {
      await this.client.query('ROLLBACK').catch(() => {});
      throw err;
    }
    const c = (await this.client.query(sql.counts)).rows[0] as Record<string, number>;
    this.timings.prepare = Math.round((this.timings.prepare ?? 0) + performance.now() - t0);
    return {
      sql,
      rows: c.rows!,
      inserted: c.inserted!,
      updated: c.updated!,
      changed: c.changed!,
      childInserts: c.child_inserts!,
      childUpdates: c.child_updates!,
      unresolved: c.unresolved!,
    };
  }
}

/**
 * Chunks prepared in order on a second connection and written in order by the merge's
 * transaction (MergeSession.applyChunk): chunk n + 1 is prepared while chunk n is written.
 */
export class PreparedChunks {
  /** The chunks so far (prepared tables `<stage>_m<n>`), in file order. */
  readonly chunks: ChunkOrigin[] = [];
  private readonly session: MergeSession;
  private readonly preparer: ChunkPreparer;
  private readonly timings: Record<string, number>;
  private prepared: Promise<unknown> = Promise.resolve();
  private readonly writes: Array<Promise<unknown>> = [];
  /** A preparation or write failed: the connection may be mid-statement. */
  private failed = false;
  private closed = false;

  private constructor(session: MergeSession, preparer: ChunkPreparer, timings: Record<string, number>) {
    this.session = session;
    this.preparer = preparer;
    this.timings = timings;
  }

  /**
   * Locks the targets (MergeSession.lockTargets) and opens the preparing connection, inside
   * `session`'s open transaction (on `client`), which holds the merge lock. Null when the
   * target's records are named by an id without a sequence to draw new ids from: chunks are
   * then merged whole (MergeSession.mergeChunk).
   */
  static async open(pool: Pool, client: Client, session: MergeSession, pipeline: Pipeline, timings: Record<string, number>): Promise<PreparedChunks | null> {
    const byKey = keyIdentity(pipeline.target);
    const sequence = byKey ? null : await idSequence(client, pipeline);
    if (!byKey && !sequence) return null;
    await session.lockTargets();
    return new PreparedChunks(session, await ChunkPreparer.open(pool, pipeline, sequence, timings), timings);
  }

  /** The preparing connection. */
  get db(): Client {
    return this.preparer.db;
  }

  /**
   * Schedules chunk `prepared`: `stage` runs on the preparing connection once the chunk
   * before is prepared and names the staging table to prepare from (and the rows to leave
   * out, a condition on alias `m`; `shared` when the merge's connection can read that table
   * until the merge ends); `beforeWrite` runs on the merge's connection once the
   * chunk before is written, then the chunk is written. Waits first until the preparing
   * connection is free and the chunk two back is written, so at most two chunks are
   * prepared ahead of the writes; throws the first failure of an earlier chunk.
   */
  async add(
    prepared: string,
    stage: (db: Client) => Promise<{ source: string; exclude?: string | undefined; shared?: boolean }>,
    beforeWrite?: () => Promise<void>,
  ): Promise<void> {
    // Timed as wait_for_prepare: the preparing connection busy, or the writes behind.
    const t0 = performance.now();
    await Promise.all([this.prepared, this.writes.at(-2)]);
    this.timings.wait_for_prepare = Math.round((this.timings.wait_for_prepare ?? 0) + performance.now() - t0);
    const origin: ChunkOrigin = { prepared };
    this.chunks.push(origin);
    const prep = this.prepared.then(async () => {
      const s = await stage(this.db);
      const c = await this.preparer.prepare(s.source, prepared, s.exclude, s.shared);
      if (c.sql.narrow) Object.assign(origin, { source: s.source, exclude: s.exclude });
      return c;
    });
    const before = this.writes.at(-1);
    const write = Promise.all([prep, before]).then(async ([c]) => {
      await beforeWrite?.();
      this.preparer.remember((await this.session.applyChunk(c)).created);
    });
    // Observed at once: an unobserved rejection would end the process before settle().
    prep.catch(() => (this.failed = true));
    write.catch(() => (this.failed = true));
    this.prepared = prep;
    this.writes.push(write);
  }

  /** Waits for every chunk scheduled; throws the first failure. */
  async settle(): Promise<void> {
    await Promise.all([this.prepared, ...this.writes]);
  }

  /** Waits for whatever is in flight, then gives the connection back (destroyed after a failure). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.allSettled([this.prepared, ...this.writes]);
    await this.preparer.close(this.failed);
  }
}
