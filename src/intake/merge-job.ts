/**
 * The merge of an uploaded import, pipelined with its parts. The merge job is sent with
 * the first part and opens ONE transaction (a MergeSession: the target's lock is taken at
 * the start), then takes each part in file order as soon as it is staged, while the
 * workers stage the next ones: the part's rows whose key this import has not met before
 * are merged at once (a chunk, straight from the part's table); rows of keys that may have
 * been met before (SeenHashes) wait in `later`, merged last, so every key's rows apply in
 * file order and the counts are those of one merge of the whole file (src/load/merge.ts).
 * When the last part is in, the later rows are merged and the outcome is recorded in the
 * same transaction, so a merge retried after a crash either finds the import completed
 * (and does nothing) or starts again from scratch. A failed or cancelled import, or too
 * many rejects, roll everything back.
 *
 * Files with several key columns (keys resolved against the records that existed before
 * the import) are merged whole once every part is staged.
 */
import { errorMessage } from '../core/errors.ts';
import type { Client, Pool } from '../db/pool.ts';
import { ownerAlive, UPLOAD_INTERRUPTED } from '../db/sql/imports.ts';
import {
  dropPartData, finishMerged, mergeConnectionName, importForWork, lockImport, mergerState, mergeWork, notifyImportFinished, requeuePart,
} from '../db/sql/intake.ts';
import { PART_QUEUE, sendJob, type Boss } from '../jobs/boss.ts';
import type { Pipeline } from '../engine/pipeline.ts';
import { mapHeader } from '../engine/row-mapper.ts';
import { importRows } from '../http/metrics.ts';
import { MergeSession, type MergeCounts } from '../load/merge.ts';
import { ident } from '../load/merge-sql.ts';
import { PreparedChunks } from '../load/prepared-chunk.ts';
import { getPipeline } from '../pipelines/index.ts';
import type { IntakeContext } from './context.ts';
import { KeyFilter } from '../engine/key-filter.ts';
import { gaveUp, recordFailure } from './fail.ts';
import { discardStaged, dropStaging, partTableName, partTables, stageTableName } from './staging.ts';

/** Tells a merge that a part of its import may have been staged (a notification or a timeout). */
export interface PartSignal {
  wait(): Promise<void>;
  close(): void;
  /**
   * Aborted when the worker stops: a merge still waiting for parts, or for its target's lock
   * (held by another import's merge), then hands over (MergeStopped).
   */
  stop?: AbortSignal;
}

/**
 * The worker running a merge is stopping (SIGTERM, SIGINT) while the merge waits for parts,
 * or for its target's lock (MergeSession.begin): it rolls back, and the worker hands the
 * merge job over (worker.ts). Waiting on would hold the stop for as long as the rest of the
 * file takes, for ever when no other worker is left to stage the parts (the stopping one
 * takes no more), or for as long as another import's merge holds the lock (its upload's
 * whole length: it is pipelined with it).
 */
export class MergeStopped extends Error {
  constructor(what = 'parts') {
    super(`the worker stopped while the merge waited for ${what}: handed over to another worker`);
  }
}

const pollOnly = (): PartSignal => ({ wait: () => new Promise((r) => setTimeout(r, 250)), close: () => {} });

const LATER = 'sluice_intake_later';

/**
 * Up to this many parts, the staging tables are dropped inside the merge's transaction
 * (whoever sees the import completed finds them gone); beyond, after its commit, so one
 * transaction never holds thousands of table locks (max_locks_per_transaction).
 */
const DROP_IN_TRANSACTION_MAX_PARTS = 500;

const active = (status: string | undefined) => status === 'queued' || status === 'running';

/** Ends the merge by rolling back: the import is over (skipped) or fails with a reason. */
class Rollback {
  readonly outcome: 'skipped' | { fail: string; read: number; rejected: number };
  constructor(outcome: 'skipped' | { fail: string; read: number; rejected: number }) {
    this.outcome = outcome;
  }
}

interface Merged {
  counts: MergeCounts;
  read: number;
  rejected: number;
  parts: number;
}

/**
 * A staged part has fewer rows than it was completed with: its unlogged table was emptied
 * by a Postgres crash (crash recovery resets unlogged tables). The merge rolls back, the
 * part is staged again from its stored bytes, and the merge starts over.
 */
class PartLost {
  readonly n: number;
  constructor(n: number) {
    this.n = n;
  }
}

/** Hashes remembered exactly (a Set) up to this many; past it, in a KeyFilter. */
const EXACT_HASHES_MAX = 500_000;

/**
 * The key hashes met so far in an import. Exact (a Set) while they are few: a KeyFilter is
 * 16 MB whose pages are faulted in as the hashes land on them, 15-40 ms for the first 50,000
 * keys against 7-12 ms for a Set. Past EXACT_HASHES_MAX (a Set holds ~25 bytes a hash) the
 * hashes move to a KeyFilter, whose memory stays the same however many follow.
 */
export class SeenHashes {
  private exact: Set<number> | undefined = new Set();
  private filter: KeyFilter | undefined;

  /** Adds `h`; true when it may have been added before (always, when it was). */
  add(h: number): boolean {
    const exact = this.exact;
    if (!exact) return this.filter!.addHash(h);
    if (exact.has(h)) return true;
    exact.add(h);
    if (exact.size > EXACT_HASHES_MAX) {
      const filter = new KeyFilter();
      for (const x of exact) filter.addHash(x);
      this.filter = filter;
      this.exact = undefined;
    }
    return false;
  }
}

/**
 * The key hashes of a part (`list`: its keys' hashtext, comma-separated) that may have
 * been met before: in an earlier part or earlier in this part (`seen` learns this part's
 * keys). Also the number of hashes, which is the part's staged row count.
 */
export function suspectKeys(list: string | null, seen: SeenHashes): { hashes: number; suspects: Set<number> } {
  const hashes = list ? list.split(',').map(Number) : [];
  const suspects = new Set<number>();
  for (const h of hashes) if (seen.add(h)) suspects.add(h);
  return { hashes: hashes.length, suspects };
}

export async function runMerge(
  ctx: IntakeContext,
  importId: string,
  follow: (importId: string) => PartSignal = pollOnly,
): Promise<'completed' | 'failed' | 'skipped'> {
  const signal = follow(importId);
  try {
    for (;;) {
      try {
        return await merge(ctx, importId, signal);
      } catch (err) {
        // The lost parts were sent again (restageLostParts): wait for them from scratch.
        if (!(err instanceof PartLost)) throw err;
      }
    }
  } finally {
    signal.close();
  }
}

/**
 * The error of an import whose merge the queue will not run again (worker.ts: its last
 * attempt failed; service.ts: its worker died then), from the last attempt's error
 * (`merge failed: ...` when the merge threw it) and the attempts made.
 */
export function gaveUpMessage(error: string, attempts: number): string {
  return `${error.startsWith('merge failed') ? error : `merge failed: ${error}`}${gaveUp(attempts)}`;
}

/**
 * Sends again every completed part whose staging table lost rows (or is gone), in one
 * transaction on the merge's connection (a failure here drops the connection: see merge).
 */
async function restageLostParts(boss: Boss, client: Client, importId: string): Promise<void> {
  await client.query('BEGIN');
  // Under the import's row lock, as its end is recorded (fail.ts): a part put back in the
  // queue of an import failed meanwhile would stay `queued` for ever.
  const imp = await lockImport(client, importId);
  if (!imp || !active(imp.status)) {
    await client.query('ROLLBACK');
    return;
  }
  const tables = new Set(await partTables(client, importId));
  for (const p of (await mergerState(client, importId, 0))?.done ?? []) {
    const name = partTableName(importId, p.n);
    const staged = tables.has(name) ? Number((await client.query(`SELECT count(*)::bigint AS n FROM ${ident(name)}`)).rows[0].n) : -1;
    if (staged === p.accepted) continue;
    await requeuePart(client, importId, p.n);
    await sendJob(boss, client, PART_QUEUE, { importId, n: p.n });
  }
  await client.query('COMMIT');
}

async function merge(ctx: IntakeContext, importId: string, signal: PartSignal): Promise<'completed' | 'failed' | 'skipped'> {
  const { pool } = ctx;
  const start = await mergeWork(pool, importId);
  if (!start || !active(start.status)) {
    // Ended before its merge began (failed, cancelled): what its parts staged goes.
    if (start && start.status !== 'completed') await discardStaged(pool, importId, 'merge').catch(() => {});
    return 'skipped';
  }
  const pipeline = getPipeline(start.pipeline);
  const stage = stageTableName(importId);
  const timings: Record<string, number> = {};
  const client = await pool.connect();
  let broken = false;
  try {
    // Told apart from the part workers' connections in pg_stat_activity, and found by a
    // cancel of its import (endMergeConnection, cancel.ts).
    await client.query(`SELECT set_config('application_name', $1, false)`, [mergeConnectionName(importId)]);
    const t0 = performance.now();
    // Rows in the import's main staging table come from a version that staged there: such
    // an import is merged whole, as are files with several key columns.
    const legacy = (await client.query(`SELECT EXISTS (SELECT 1 FROM ${ident(stage)}) AS rows`)).rows[0].rows as boolean;
    const chunked = !legacy && (!start.header || mapHeader(pipeline, start.header).keyIndexes.length <= 1);
    const session = new MergeSession(client, pipeline, timings, chunked);
    // Another import's merge into the same target may hold its lock for minutes (a merge
    // follows its upload): a stopping worker does not wait for it.
    if (!(await session.begin(signal.stop))) throw new MergeStopped("its target's lock");
    let merged: Merged;
    try {
      merged = await followParts(client, session, { pipeline, importId, stage, chunked, pool }, timings, signal);
      const t = performance.now();
      await dropPartData(client, importId);
      if (merged.parts <= DROP_IN_TRANSACTION_MAX_PARTS) await dropStaging(client, importId);
      timings.cleanup = Math.round(performance.now() - t);
      timings.merge = Math.round(performance.now() - t0);
      if (!(await finishMerged(client, importId, { read: merged.read, rejected: merged.rejected, ...merged.counts, timings }))) {
        throw new Rollback('skipped');
      }
      await notifyImportFinished(client, importId);
      await session.commit();
    } catch (err) {
      await session.rollback();
      if (err instanceof PartLost) await restageLostParts(ctx.boss!, client, importId);
      throw err;
    }
    if (merged.parts > DROP_IN_TRANSACTION_MAX_PARTS) await dropStaging(pool, importId).catch(() => {});
    importRows.inc({ pipeline: pipeline.name, outcome: 'inserted' }, merged.counts.inserted);
    importRows.inc({ pipeline: pipeline.name, outcome: 'updated' }, merged.counts.updated);
    importRows.inc({ pipeline: pipeline.name, outcome: 'unchanged' }, merged.counts.unchanged);
    importRows.inc({ pipeline: pipeline.name, outcome: 'rejected' }, merged.rejected);
    return 'completed';
  } catch (err) {
    if (err instanceof PartLost || err instanceof MergeStopped) throw err;
    if (err instanceof Rollback) {
      if (err.outcome === 'skipped') {
        // Ended by someone else (a failed part, a cancel), whose drop may have given way to
        // this merge's locks, released by the rollback above.
        const now = (await importForWork(pool, importId))?.status;
        if (now === 'failed' || now === 'cancelled') await discardStaged(pool, importId, 'merge').catch(() => {});
        return 'skipped';
      }
      // The end first (its parts still queued or running with it, an upload cut short
      // leaves some), so no part commits a table after the drop; then what was staged.
      const ended = await recordFailure(pool, importId, {
        error: err.outcome.fail, read: err.outcome.read, inserted: 0, updated: 0, unchanged: 0, rejected: err.outcome.rejected, timings,
      });
      await discardStaged(pool, importId, 'merge').catch(() => {});
      // Ended by someone else meanwhile (a cancel): theirs to announce.
      if (!ended) return 'skipped';
      await notifyImportFinished(pool, importId);
      return 'failed';
    }
    broken = true;
    const now = await importForWork(pool, importId).catch(() => undefined);
    if (now?.status === 'cancelled' || now?.status === 'failed') {
      // Its connection may be broken, its backend's locks not yet let go: give way.
      await discardStaged(pool, importId).catch(() => {});
      return 'skipped';
    }
    if (!now) return 'skipped'; // the upload failed and took its import with it
    throw new Error(`merge failed: ${errorMessage(err)}`, { cause: err });
  } finally {
    if (!broken) await client.query('RESET application_name').catch(() => (broken = true));
    // A connection that failed mid-merge is not handed back to the pool.
    client.release(broken || undefined);
  }
}

/**
 * Inside the open session: follows the parts in file order, merging each as it is staged
 * (chunked) or all at the end; returns the counts and the parts' totals. Throws Rollback
 * when the import is over (failed, cancelled, deleted) or must fail.
 */
async function followParts(
  client: Client,
  session: MergeSession,
  o: { pipeline: Pipeline; importId: string; stage: string; chunked: boolean; pool: Pool },
  timings: Record<string, number>,
  signal: PartSignal,
): Promise<Merged> {
  const key = ident(o.pipeline.key.name);
  const later = ident(LATER);
  const seen = o.chunked ? new SeenHashes() : undefined;
  if (o.chunked) await client.query(`CREATE TEMP TABLE ${later} (LIKE ${ident(o.stage)} INCLUDING DEFAULTS) ON COMMIT DROP`);
  // Parts are prepared on a second connection while this one writes the part before
  // (src/load/prepared-chunk.ts); a target whose id has no sequence is merged here whole.
  const preparing = o.chunked ? await PreparedChunks.open(o.pool, client, session, o.pipeline, timings) : null;
  try {
    /**
     * Merges part `n` as a chunk, after moving to `later` the rows whose key may have been met
     * before: in an earlier part or earlier in this part (SeenHashes). Keys are compared by
     * their hashtext; two keys sharing one are both moved, which is safe.
     */
    const mergePart = async (n: number, accepted: number) => {
      if (preparing) return preparePart(n, accepted);
      const table = ident(partTableName(o.importId, n));
      const suspects = await splitPart(client, n, accepted);
      let rows = accepted;
      if (suspects.length > 0) {
        const moved = await client.query(
          `WITH moved AS (DELETE FROM ${table} WHERE hashtext(${key}::text) = ANY ($1::int[]) RETURNING *) INSERT INTO ${later} SELECT * FROM moved`,
          [suspects],
        );
        rows -= moved.rowCount ?? 0;
      }
      if (rows > 0) await session.mergeChunk(partTableName(o.importId, n), rows);
    };

    /**
     * The hashes of part `n`'s keys that may have been met before (read on `db`); PartLost
     * when the part has fewer rows than it was completed with.
     */
    const splitPart = async (db: Client, n: number, accepted: number): Promise<number[]> => {
      const t = performance.now();
      const list = (await db.query(`SELECT string_agg(hashtext(${key}::text)::text, ',') AS h FROM ${ident(partTableName(o.importId, n))}`)).rows[0].h as string | null;
      const r = suspectKeys(list, seen!);
      timings.split = Math.round((timings.split ?? 0) + performance.now() - t);
      if (r.hashes !== accepted) throw new PartLost(n);
      return [...r.suspects];
    };

    /**
     * mergePart with a second connection: the split and the part's preparation there (the
     * rows of keys met before left out, not deleted: the part table is not this transaction's
     * to change while another connection reads it), the moved rows and the writes here.
     */
    const preparePart = async (n: number, accepted: number) => {
      const name = partTableName(o.importId, n);
      const table = ident(name);
      let suspects: number[] = [];
      await preparing!.add(
        `${o.stage}_m${n}`,
        async (db) => {
          suspects = await splitPart(db, n, accepted);
          // Integers from hashtext: safe as SQL text. The part table stays until the merge
          // ends, and the merge's connection reads it (shared).
          return { source: name, exclude: suspects.length > 0 ? `hashtext(m.${key}::text) = ANY ('{${suspects.join(',')}}'::int[])` : undefined, shared: true };
        },
        async () => {
          if (suspects.length > 0) {
            await client.query(`INSERT INTO ${later} SELECT * FROM ${table} WHERE hashtext(${key}::text) = ANY ($1::int[])`, [suspects]);
          }
        },
      );
    };

    let next = 0;
    let waited = 0;
    let parts = 0;
    for (;;) {
      // On a pooled connection, not the merge's: that one is busy writing the part before, and
      // the parts staged meanwhile are to be prepared now, not after that write.
      const state = await mergerState(o.pool, o.importId, next);
      if (!state || !active(state.status)) throw new Rollback('skipped');
      for (const p of state.done) {
        if (p.n !== next) break;
        if (o.chunked && p.accepted > 0) await mergePart(p.n, p.accepted);
        next++;
      }
      if (state.parts_total !== null && next >= state.parts_total) {
        parts = state.parts_total;
        break;
      }
      // Still uploading, or not any more: the process receiving the file holds the import's
      // owner lock until its last part is stored (accept.ts). Free with the end still unknown:
      // it was killed mid-upload, and the rest of the file will never come.
      if (state.parts_total === null && !(await ownerAlive(o.pool, o.importId))) {
        const again = await mergerState(o.pool, o.importId, next);
        if (again && active(again.status) && again.parts_total === null) {
          throw new Rollback({ fail: UPLOAD_INTERRUPTED, read: 0, rejected: 0 });
        }
        continue;
      }
      if (signal.stop?.aborted) throw new MergeStopped();
      const t = performance.now();
      await signal.wait();
      waited += performance.now() - t;
    }
    timings.wait_for_parts = Math.round(waited);
    if (preparing) await preparing.settle();
    // Every part is staged: their totals decide whether anything is merged at all.
    const work = await mergeWork(client, o.importId);
    if (!work || !active(work.status)) throw new Rollback('skipped');
    const read = Number(work.read);
    const rejected = Number(work.rejected);
    if (read === 0) throw new Rollback({ fail: 'invalid file: no data rows after the header', read, rejected });
    const max = work.options.maxRejectRatio ?? 1;
    if (rejected / read > max) {
      throw new Rollback({ fail: `rejected ${rejected} of ${read} rows (${((rejected / read) * 100).toFixed(1)}%), above max-reject-ratio ${max}: nothing was imported`, read, rejected });
    }
    if (o.chunked) {
      const waiting = Number((await client.query(`SELECT count(*)::bigint AS n FROM ${later}`)).rows[0].n);
      if (waiting > 0) {
        if (preparing) await session.rememberPrepared(preparing.chunks, LATER);
        await session.mergeStaged(LATER, { rows: waiting, hasKeyCandidates: false }, true);
      }
    } else {
      // The whole file at once, from one table: the parts are gathered into the staging table.
      const t = performance.now();
      const tables = await partTables(client, o.importId);
      for (let i = 0; i < tables.length; i += 100) {
        const from = tables.slice(i, i + 100).map((name) => `SELECT * FROM ${ident(name)}`);
        await client.query(`INSERT INTO ${ident(o.stage)} ${from.join(' UNION ALL ')}`);
      }
      timings.gather = Math.round(performance.now() - t);
      const accepted = Number((await client.query(`SELECT count(*)::bigint AS n FROM ${ident(o.stage)}`)).rows[0].n);
      if (accepted !== Number(work.accepted)) throw new PartLost(-1);
      await session.mergeStaged(o.stage, { rows: accepted, hasKeyCandidates: work.key_candidates });
    }
    return { counts: session.total, read, rejected, parts };
  } finally {
    await preparing?.close();
  }
}
