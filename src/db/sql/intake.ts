/** Statements of the intake service: parts of uploaded files and their lifecycle. */
import type { QueryConfig } from 'pg';
import { to as copyTo } from 'pg-copy-streams';
import { firstBinaryField } from '../../load/copy-binary.ts';
import type { Client, Pool } from '../pool.ts';

type Db = Pool | Client;

/**
 * Stores part `p` of an upload while its import is unfinished; returns whether it was stored
 * and the import's status (a cancel, or a worker failing the import on an earlier part,
 * while the file still arrives).
 */
export async function insertPart(
  db: Db,
  importId: string,
  p: { n: number; firstLine: number; lastLine: number; data: Buffer },
): Promise<{ stored: boolean; status: string | null }> {
  const { rows } = await db.query<{ stored: boolean; status: string | null }>(
    `WITH imp AS (SELECT status FROM imports WHERE id = $1),
     ins AS (
       INSERT INTO import_parts (import_id, n, first_line, last_line, bytes, data)
       SELECT $1, $2, $3, $4, $5, $6 WHERE (SELECT status FROM imp) IN ('queued', 'running')
       RETURNING 1)
     SELECT EXISTS (SELECT 1 FROM ins) AS stored, (SELECT status FROM imp) AS status`,
    [importId, p.n, p.firstLine, p.lastLine, p.data.length, p.data],
  );
  return rows[0]!;
}

export async function setImportFormat(
  db: Db,
  id: string,
  f: { header: string[]; encoding: string; delimiter: string | null },
): Promise<void> {
  await db.query(`UPDATE imports SET header = $2, encoding = $3, delimiter = $4, updated_at = now() WHERE id = $1`, [
    id, f.header, f.encoding, f.delimiter,
  ]);
}

/**
 * Records the end of an upload; null when its import is unfinished, else its status (it
 * ended while the last parts arrived). The status is read by a statement of its own: a cancel
 * committing while the update waited for it is seen only by a newer snapshot.
 */
export async function setPartsTotal(db: Db, id: string, total: number, bytes: number): Promise<string | null> {
  const { rowCount } = await db.query(
    `UPDATE imports SET parts_total = $2, file_bytes = $3, updated_at = now() WHERE id = $1 AND status IN ('queued', 'running')`,
    [id, total, bytes],
  );
  return rowCount === 1 ? null : endedStatus(db, id);
}

/**
 * The status of an import a conditional update found over (cancelled, failed, completed),
 * read by a statement of its own (the update saw the row as of its snapshot); `deleted` when
 * the row is gone.
 */
export async function endedStatus(db: Db, id: string): Promise<string> {
  const { rows } = await db.query<{ status: string }>('SELECT status FROM imports WHERE id = $1', [id]);
  return rows[0]?.status ?? 'deleted';
}

export interface PartWork {
  /** The import's status; the part was claimed only if it is queued or running. */
  status: string;
  pipeline: string;
  header: string[] | null;
  encoding: string | null;
  delimiter: string | null;
  /** Undefined (null) when the part was not claimed: already completed, or the import is over. */
  attempts: number | null;
  first_line: number;
  last_line: number;
}

/**
 * Claims a part for processing (attempts + 1) and marks the import running, in one round
 * trip; returns the import's format, `attempts` null when the part is not to be worked on
 * (completed already, or the import is finished or cancelled), or undefined for an unknown
 * import. The part's bytes: partData.
 */
export async function startPart(db: Db, importId: string, n: number): Promise<PartWork | undefined> {
  const query: QueryConfig = {
    text: `WITH imp AS (
       SELECT status, pipeline, header, encoding, delimiter FROM imports WHERE id = $1
     ), part AS (
       UPDATE import_parts SET status = 'running', attempts = attempts + 1, started_at = clock_timestamp(), error = NULL
        WHERE import_id = $1 AND n = $2 AND status IN ('queued', 'running', 'failed')
          AND (SELECT status FROM imp) IN ('queued', 'running')
       RETURNING attempts, first_line, last_line
     ), started AS (
       UPDATE imports SET status = 'running', started_at = coalesce(started_at, clock_timestamp()), updated_at = now()
        WHERE id = $1 AND status = 'queued' AND EXISTS (SELECT 1 FROM part)
     )
     SELECT json_build_object('status', imp.status, 'pipeline', imp.pipeline, 'header', imp.header, 'encoding', imp.encoding,
              'delimiter', imp.delimiter, 'attempts', part.attempts, 'first_line', part.first_line, 'last_line', part.last_line)::text AS work
       FROM imp LEFT JOIN part ON true`,
    values: [importId, n],
  };
  const { rows } = await db.query<{ work: string }>(query);
  const row = rows[0];
  return row && (JSON.parse(row.work) as PartWork);
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/**
 * A part's stored bytes; null once they are gone (its import ended). Read by a binary COPY:
 * the bytes as they are stored. A query would send a bytea as hex text, twice the bytes for
 * Postgres to write and for pg to decode (~10 ms of Node CPU per 1.5 MB part against ~3.5),
 * and pg's binary results are no way out: pg reads every binary field as UTF-8 text before
 * making it a Buffer again, which turns each byte that is not UTF-8 (any accent of a
 * Windows-1252 file) into U+FFFD. COPY takes no parameters: the id and number are checked
 * to be a UUID and a whole number, so nothing but those reaches the SQL text.
 */
export async function partData(client: Client, importId: string, n: number): Promise<Buffer | null> {
  if (!UUID.test(importId) || !Number.isSafeInteger(n) || n < 0) throw new Error(`invalid part ${importId}/${n}`);
  const out = client.query(copyTo(`COPY (SELECT data FROM import_parts WHERE import_id = '${importId}' AND n = ${n}) TO STDOUT (FORMAT binary)`));
  const chunks: Buffer[] = [];
  for await (const chunk of out as AsyncIterable<Buffer>) chunks.push(chunk);
  return firstBinaryField(Buffer.concat(chunks));
}

/**
 * Marks part `n` completed and, when it is the last part of a fully received upload whose
 * merge was not sent with its part 0 (accepted by an earlier version), the merge as due;
 * true for exactly one caller, who enqueues the merge. The caller MUST hold
 * the import row lock (lockImport) taken in an earlier statement of its transaction: this
 * statement's snapshot then sees every part completed before it.
 */
export async function completePart(
  db: Db,
  importId: string,
  n: number,
  c: { read: number; accepted: number; rejected: number; keyCandidates: boolean; timings: Record<string, number> },
): Promise<boolean> {
  const { rowCount } = await db.query(
    `WITH done AS (
       UPDATE import_parts SET status = 'completed', rows_read = $3, rows_accepted = $4, rows_rejected = $5,
              key_candidates = $6, timings = $7, finished_at = clock_timestamp(), error = NULL
        WHERE import_id = $1 AND n = $2
       RETURNING n)
     UPDATE imports SET merge_enqueued = true
      WHERE id = $1 AND NOT merge_enqueued AND parts_total IS NOT NULL AND status IN ('queued', 'running')
        AND parts_total = (SELECT count(*) FROM import_parts WHERE import_id = $1 AND status = 'completed' AND n <> $2)
                          + (SELECT count(*) FROM done)`,
    [importId, n, c.read, c.accepted, c.rejected, c.keyCandidates, JSON.stringify(c.timings)],
  );
  return (rowCount ?? 0) > 0;
}

export async function failPart(db: Db, importId: string, n: number, error: string, final: boolean): Promise<void> {
  await db.query(
    `UPDATE import_parts SET status = CASE WHEN $4 THEN 'failed' ELSE status END, error = $3, finished_at = CASE WHEN $4 THEN now() END
      WHERE import_id = $1 AND n = $2`,
    [importId, n, error, final],
  );
}

/**
 * Locks the import row: part completions of one import are serialized by it. FOR NO KEY
 * UPDATE, not FOR UPDATE: a part that has COPYed rejects holds a KEY SHARE lock on the row
 * (import_rejects' foreign key), which FOR UPDATE waits for; two such parts each waited for
 * the other's and Postgres aborted one ("deadlock detected"), failing leads uploads with
 * rejects under load. The row's key never changes.
 */
export async function lockImport(db: Db, id: string): Promise<{ status: string; parts_total: number | null } | undefined> {
  const { rows } = await db.query(`SELECT status, parts_total FROM imports WHERE id = $1 FOR NO KEY UPDATE`, [id]);
  return rows[0] as { status: string; parts_total: number | null } | undefined;
}

export interface MergeWork {
  pipeline: string;
  status: string;
  header: string[] | null;
  options: { maxRejectRatio?: number };
  read: number;
  accepted: number;
  rejected: number;
  key_candidates: boolean;
}

/** What the merge needs: the import's pipeline, status and options, and its parts' totals. */
export async function mergeWork(db: Db, id: string): Promise<MergeWork | undefined> {
  const { rows } = await db.query<MergeWork>(
    `SELECT i.pipeline, i.status, i.header, i.options, t.* FROM imports i, LATERAL (
       SELECT coalesce(sum(rows_read), 0)::bigint AS read, coalesce(sum(rows_accepted), 0)::bigint AS accepted,
              coalesce(sum(rows_rejected), 0)::bigint AS rejected, coalesce(bool_or(key_candidates), false) AS key_candidates
         FROM import_parts WHERE import_id = i.id) t
      WHERE i.id = $1`,
    [id],
  );
  return rows[0];
}

/**
 * Records the merged import's outcome (in the merge's transaction, so a retried merge finds
 * it done); false when the import is no longer queued or running (cancelled meanwhile).
 * finished_at is the clock at this statement, not the start of the merge's transaction.
 */
export async function finishMerged(
  db: Db,
  id: string,
  o: { read: number; inserted: number; updated: number; unchanged: number; rejected: number; timings: Record<string, number> },
): Promise<boolean> {
  const r = await db.query(
    `UPDATE imports SET status = 'completed', error = NULL, rows_read = $2, rows_inserted = $3, rows_updated = $4,
            rows_unchanged = $5, rows_rejected = $6, timings = timings || $7::jsonb,
            finished_at = clock_timestamp(), updated_at = clock_timestamp()
      WHERE id = $1 AND status IN ('queued', 'running')`,
    [id, o.read, o.inserted, o.updated, o.unchanged, o.rejected, JSON.stringify(o.timings)],
  );
  return (r.rowCount ?? 0) > 0;
}

/** Marks the merge of an import as enqueued (it is sent with the first part). */
export async function setMergeEnqueued(db: Db, id: string): Promise<void> {
  await db.query('UPDATE imports SET merge_enqueued = true WHERE id = $1', [id]);
}

/**
 * What a merge following the parts needs: the import's status, its parts_total (null while
 * the upload goes on) and the staged (completed) parts from `from` on, in order, with their
 * accepted rows.
 */
export async function mergerState(
  db: Db,
  id: string,
  from: number,
): Promise<{ status: string; parts_total: number | null; done: Array<{ n: number; accepted: number }> } | undefined> {
  const { rows } = await db.query(
    `SELECT i.status, i.parts_total,
            coalesce((SELECT json_agg(json_build_object('n', n, 'accepted', rows_accepted) ORDER BY n)
                        FROM import_parts WHERE import_id = i.id AND n >= $2 AND status = 'completed'), '[]') AS done
       FROM imports i WHERE i.id = $1`,
    [id, from],
  );
  return rows[0] as { status: string; parts_total: number | null; done: Array<{ n: number; accepted: number }> } | undefined;
}

/** Puts a completed part back in the queue's hands (its bytes are kept until the merge commits). */
export async function requeuePart(db: Db, id: string, n: number): Promise<void> {
  await db.query(`UPDATE import_parts SET status = 'queued', finished_at = NULL WHERE import_id = $1 AND n = $2`, [id, n]);
}

/** Payload prefix of a part-staged notification on the jobs channel (then the import id). */
export const PART_DONE = 'part-done:';

/** Wakes a merge waiting for the parts of `importId` (in the part's transaction: at COMMIT). */
export async function notifyPartDone(db: Db, channel: string, importId: string): Promise<void> {
  await db.query('SELECT pg_notify($1, $2)', [channel, `${PART_DONE}${importId}`]);
}

/** NOTIFY channel whose payload is the id of an import that just finished (any outcome). */
export const IMPORTS_CHANNEL = 'sluice_imports';

/**
 * Tells listeners that import `id` is finished; inside the transaction that records the
 * outcome, it is delivered at its COMMIT (a client can wait for it instead of polling).
 */
export async function notifyImportFinished(db: Db, id: string): Promise<void> {
  await db.query('SELECT pg_notify($1, $2)', [IMPORTS_CHANNEL, id]);
}

export async function partCompleted(db: Db, importId: string, n: number): Promise<boolean> {
  const { rows } = await db.query(`SELECT 1 FROM import_parts WHERE import_id = $1 AND n = $2 AND status = 'completed'`, [importId, n]);
  return rows.length > 0;
}

/** The stored bytes of an import's parts, dropped once it is over (completed or not). */
export async function dropPartData(db: Db, id: string): Promise<void> {
  await db.query(`UPDATE import_parts SET data = NULL WHERE import_id = $1 AND data IS NOT NULL`, [id]);
}

/** The stored bytes of every import that is over: what a process that died left behind. */
export async function dropFinishedPartData(db: Db): Promise<number> {
  const { rowCount } = await db.query(
    `UPDATE import_parts p SET data = NULL FROM imports i
      WHERE i.id = p.import_id AND i.status NOT IN ('queued', 'running') AND p.data IS NOT NULL`,
  );
  return rowCount ?? 0;
}

/** The name of an intake merge's connection in pg_stat_activity (merge-job.ts). */
export function mergeConnectionName(importId: string): string {
  return `sluice-merge ${importId}`;
}

/**
 * Ends the connection of a merge of import `id` still at work (its connection is named by
 * mergeConnectionName), and waits up to 5 s for its backend to exit: Postgres rolls its
 * transaction back and lets go of its locks, the target's merge lock included. For an
 * import already recorded as cancelled: a merge in a long statement (the last rows of a big
 * file, an index under contention) or waiting for another import's merge to let go of the
 * target would otherwise go on until that ends, holding its worker's merge slot and, in the
 * first case, the target. Returns how many connections were ended (0 or 1).
 */
export async function endMergeConnection(db: Db, id: string): Promise<number> {
  const { rows } = await db.query<{ n: number }>(
    `SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000))::int AS n
       FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1 AND pid <> pg_backend_pid()`,
    [mergeConnectionName(id)],
  );
  return rows[0]!.n;
}

export async function cancelImportRow(db: Db, id: string): Promise<boolean> {
  const { rowCount } = await db.query(
    `UPDATE imports SET status = 'cancelled', finished_at = now(), updated_at = now()
      WHERE id = $1 AND status IN ('queued', 'running')`,
    [id],
  );
  if (!rowCount) return false;
  // The parts' bytes go with the staging tables (discardStaged, src/intake/cancel.ts).
  await cancelUnfinishedParts(db, id);
  return true;
}

/**
 * The parts still queued or running of an import that ended without completing (cancelled,
 * failed) become `cancelled`: their jobs find the import over and do nothing (startPart
 * claims a part only while its import is queued or running, and a part in flight rolls back
 * when it sees it over, lockImport), so nothing would end them. Call it after the import's
 * end is recorded (or in the same transaction): a part then cannot be claimed or completed
 * again. A part that failed keeps `failed` and its error.
 */
export async function cancelUnfinishedParts(db: Db, id: string): Promise<void> {
  await db.query(`UPDATE import_parts SET status = 'cancelled' WHERE import_id = $1 AND status IN ('queued', 'running')`, [id]);
}

export async function importForWork(db: Db, id: string) {
  const { rows } = await db.query<{
    pipeline: string;
    status: string;
    header: string[] | null;
    encoding: string | null;
    delimiter: string | null;
    options: { maxRejectRatio?: number };
    parts_total: number | null;
  }>(`SELECT pipeline, status, header, encoding, delimiter, options, parts_total FROM imports WHERE id = $1`, [id]);
  return rows[0];
}

/** Imports queued or running, by pipeline and status (its partial index, migration 0046): /metrics. */
export async function unfinishedImportCounts(db: Db): Promise<Array<{ pipeline: string; status: string; n: number }>> {
  const { rows } = await db.query<{ pipeline: string; status: string; n: number }>(
    `SELECT pipeline, status, count(*)::int AS n FROM imports WHERE status IN ('queued', 'running') GROUP BY 1, 2`,
  );
  return rows;
}

/** Jobs of `queues` waiting (created, retry) or active, by queue and state: /metrics. */
export async function liveJobCounts(db: Db, queues: string[]): Promise<Array<{ queue: string; state: string; n: number }>> {
  const { rows } = await db.query<{ queue: string; state: string; n: number }>(
    `SELECT name AS queue, state::text, count(*)::int AS n FROM pgboss.job
      WHERE name = ANY ($1::text[]) AND state IN ('created', 'retry', 'active') GROUP BY 1, 2`,
    [queues],
  );
  return rows;
}
