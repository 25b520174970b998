/** Statements of the intake service: parts of uploaded files and their lifecycle. */
import type { Client, Pool } from '../pool.ts';

type Db = Pool | Client;

export async function insertPart(db: Db, importId: string, p: { n: number; firstLine: number; lastLine: number; data: Buffer }): Promise<void> {
  await db.query(
    `INSERT INTO import_parts (import_id, n, first_line, last_line, bytes, data) VALUES ($1, $2, $3, $4, $5, $6)`,
    [importId, p.n, p.firstLine, p.lastLine, p.data.length, p.data],
  );
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

export async function setPartsTotal(db: Db, id: string, total: number, bytes: number): Promise<void> {
  await db.query(`UPDATE imports SET parts_total = $2, file_bytes = $3, updated_at = now() WHERE id = $1`, [id, total, bytes]);
}

export interface PartWork {
  attempts: number;
  first_line: number;
  last_line: number;
  data: Buffer;
}

/** Claims a part for processing (attempts + 1); undefined when it is already completed. */
export async function startPart(db: Db, importId: string, n: number): Promise<PartWork | undefined> {
  const { rows } = await db.query<PartWork>(
    `UPDATE import_parts SET status = 'running', attempts = attempts + 1, started_at = now(), error = NULL
      WHERE import_id = $1 AND n = $2 AND status IN ('queued', 'running', 'failed')
      RETURNING attempts, first_line, last_line, data`,
    [importId, n],
  );
  await db.query(`UPDATE imports SET status = 'running', started_at = coalesce(started_at, now()), updated_at = now()
                   WHERE id = $1 AND status = 'queued'`, [importId]);
  return rows[0];
}

export async function completePart(
  db: Db,
  importId: string,
  n: number,
  c: { read: number; accepted: number; rejected: number; keyCandidates: boolean },
): Promise<void> {
  await db.query(
    `UPDATE import_parts SET status = 'completed', rows_read = $3, rows_accepted = $4, rows_rejected = $5,
            key_candidates = $6, finished_at = now(), error = NULL
      WHERE import_id = $1 AND n = $2`,
    [importId, n, c.read, c.accepted, c.rejected, c.keyCandidates],
  );
}

export async function failPart(db: Db, importId: string, n: number, error: string, final: boolean): Promise<void> {
  await db.query(
    `UPDATE import_parts SET status = CASE WHEN $4 THEN 'failed' ELSE status END, error = $3, finished_at = CASE WHEN $4 THEN now() END
      WHERE import_id = $1 AND n = $2`,
    [importId, n, error, final],
  );
}

/** Locks the import row: part completions of one import are serialized by it. */
export async function lockImport(db: Db, id: string): Promise<{ status: string; parts_total: number | null } | undefined> {
  const { rows } = await db.query(`SELECT status, parts_total FROM imports WHERE id = $1 FOR UPDATE`, [id]);
  return rows[0] as { status: string; parts_total: number | null } | undefined;
}

/**
 * Marks the merge as due when every part is completed and the upload is finished; true for
 * exactly one caller (the import row is locked by the caller).
 */
export async function claimMerge(db: Db, id: string): Promise<boolean> {
  const { rowCount } = await db.query(
    `UPDATE imports SET merge_enqueued = true
      WHERE id = $1 AND NOT merge_enqueued AND parts_total IS NOT NULL AND status IN ('queued', 'running')
        AND parts_total = (SELECT count(*) FROM import_parts WHERE import_id = $1 AND status = 'completed')`,
    [id],
  );
  return (rowCount ?? 0) > 0;
}

export interface PartTotals {
  read: number;
  accepted: number;
  rejected: number;
  key_candidates: boolean;
}

export async function partTotals(db: Db, id: string): Promise<PartTotals> {
  const { rows } = await db.query<PartTotals>(
    `SELECT coalesce(sum(rows_read), 0)::bigint AS read, coalesce(sum(rows_accepted), 0)::bigint AS accepted,
            coalesce(sum(rows_rejected), 0)::bigint AS rejected, coalesce(bool_or(key_candidates), false) AS key_candidates
       FROM import_parts WHERE import_id = $1`,
    [id],
  );
  return rows[0]!;
}

export async function dropPartData(db: Db, id: string): Promise<void> {
  await db.query(`UPDATE import_parts SET data = NULL WHERE import_id = $1`, [id]);
}

export async function cancelImportRow(db: Db, id: string): Promise<boolean> {
  const { rowCount } = await db.query(
    `UPDATE imports SET status = 'cancelled', finished_at = now(), updated_at = now()
      WHERE id = $1 AND status IN ('queued', 'running')`,
    [id],
  );
  await db.query(`UPDATE import_parts SET status = 'cancelled', data = NULL WHERE import_id = $1 AND status IN ('queued', 'running')`, [id]);
  return (rowCount ?? 0) > 0;
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
