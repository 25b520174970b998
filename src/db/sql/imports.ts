/** Statements on `imports` and `import_rejects` (one function per statement). */
import type { Pool, Client } from '../pool.ts';

type Db = Pool | Client;

export interface ImportRow {
  id: string;
  pipeline: string;
  file_name: string | null;
  file_bytes: number | null;
  source: string;
  status: 'queued' | 'running' | 'completed' | 'failed' | 'cancelled';
  error: string | null;
  rows_read: number;
  rows_inserted: number;
  rows_updated: number;
  rows_unchanged: number;
  rows_rejected: number;
  options: Record<string, unknown>;
  timings: Record<string, number>;
  created_at: Date;
  started_at: Date | null;
  finished_at: Date | null;
}

export async function createImport(
  db: Db,
  v: { id?: string; pipeline: string; fileName: string | null; fileBytes: number | null; source: string; status: 'queued' | 'running'; options?: object },
): Promise<string> {
  const { rows } = await db.query<{ id: string }>(
    `INSERT INTO imports (id, pipeline, file_name, file_bytes, source, status, options, started_at)
     VALUES (coalesce($7::uuid, gen_random_uuid()), $1, $2, $3, $4, $5, $6, CASE WHEN $5 = 'running' THEN now() END) RETURNING id`,
    [v.pipeline, v.fileName, v.fileBytes, v.source, v.status, JSON.stringify(v.options ?? {}), v.id ?? null],
  );
  return rows[0]!.id;
}

/**
 * A CLI import's connection holds this session lock for the import's whole life, and an
 * upload's for the upload's: an import left `running` (or an upload left unfinished) whose
 * lock can be taken was stopped (killed) mid-way.
 */
function ownerLock(fn: 'pg_advisory_lock' | 'pg_try_advisory_lock' | 'pg_try_advisory_xact_lock' | 'pg_advisory_unlock', param: string): string {
  return `SELECT ${fn}(hashtext('sluice:import:' || ${param})) AS ok`;
}

/**
 * Whether the owner of import `id` (the process receiving its upload) still holds its lock.
 * Run outside a transaction: the lock, when it is free, is taken and let go at once.
 */
export async function ownerAlive(db: Db, id: string): Promise<boolean> {
  return !(await db.query(ownerLock('pg_try_advisory_xact_lock', '$1::text'), [id])).rows[0].ok;
}

export async function lockImportOwner(client: Client, id: string): Promise<void> {
  await client.query(ownerLock('pg_advisory_lock', '$1::text'), [id]);
}

export async function unlockImportOwner(client: Client, id: string): Promise<void> {
  await client.query(ownerLock('pg_advisory_unlock', '$1::text'), [id]);
}

/**
 * The imports failOrphans looks at: CLI imports left running, uploads left queued before
 * their merge was sent. Unfinished ones only, read through the partial index
 * imports_unfinished (migration 0046), not by scanning every finished import.
 */
export const ORPHANS = {
  cli: `source = 'cli' AND status = 'running'`,
  upload: `source <> 'cli' AND status = 'queued' AND parts_total IS NULL AND NOT merge_enqueued`,
} as const;

/**
 * The imports matching `where` whose owner lock is free (their owner died), failed with
 * `error`, each while holding that lock, and passed to `cleanup`; their ids returned.
 * Safe to run from several processes at once (every `sluice import`, every server's
 * reaper): an import is failed only by the one holding its lock, and only while it still
 * matches `where`, so exactly one of them fails it and cleans it up; an import whose owner is
 * alive (its lock held) is skipped. The lock is a session lock on `client`: a caller whose
 * call throws must not hand `client` back to a pool as it is.
 */
async function failOrphans(client: Client, where: string, error: string, cleanup: (id: string) => Promise<void>): Promise<string[]> {
  const { rows } = await client.query<{ id: string }>(`SELECT id FROM imports WHERE ${where}`);
  const failed: string[] = [];
  for (const { id } of rows) {
    if (!(await client.query(ownerLock('pg_try_advisory_lock', '$1::text'), [id])).rows[0].ok) continue;
    try {
      const r = await client.query(
        `UPDATE imports SET status = 'failed', error = $2, finished_at = now(), updated_at = now() WHERE id = $1 AND ${where}`,
        [id, error],
      );
      if (r.rowCount) {
        await cleanup(id);
        failed.push(id);
      }
    } finally {
      await unlockImportOwner(client, id);
    }
  }
  return failed;
}

/**
 * CLI imports left `running` by a process that died: marked failed ("interrupted"; their
 * merge transaction was rolled back by the server, so nothing of them was written) and
 * passed to `cleanup` (their staging tables), each while holding its owner lock. Run by
 * every `sluice import` before it starts and by `sluice serve`'s reaper (src/intake/service.ts).
 */
export function failInterruptedImports(client: Client, cleanup: (id: string) => Promise<void>): Promise<string[]> {
  return failOrphans(client, ORPHANS.cli, 'interrupted (the process stopped before the import finished; nothing of it was written)', cleanup);
}

/**
 * Uploads whose receiving process died before their merge was sent (before their first part
 * was stored): left `queued` with no job that would ever end them. Marked failed and passed
 * to `cleanup` (their staging table), each while holding its owner lock (an upload still
 * going on holds it: skipped). Run by `sluice serve`'s reaper (src/intake/service.ts).
 */
export function failInterruptedUploads(client: Client, cleanup: (id: string) => Promise<void>): Promise<string[]> {
  return failOrphans(client, ORPHANS.upload, UPLOAD_INTERRUPTED, cleanup);
}

/** The error of an import whose upload stopped before its end (its server died). */
export const UPLOAD_INTERRUPTED = 'upload interrupted: the server receiving the file stopped, or lost its database connection, before the end of the file; nothing was imported, send it again';

export interface ImportOutcome {
  status: 'completed' | 'failed' | 'cancelled';
  error?: string | null;
  read: number;
  inserted: number;
  updated: number;
  unchanged: number;
  rejected: number;
  timings: Record<string, number>;
}

/** Records the outcome; with `onlyIfRunning`, only while the import is queued/running. Returns whether it did. */
export async function finishImport(db: Db, id: string, o: ImportOutcome, onlyIfRunning = false): Promise<boolean> {
  const r = await db.query(
    `UPDATE imports SET status = $2, error = $3, rows_read = $4, rows_inserted = $5, rows_updated = $6,
            rows_unchanged = $7, rows_rejected = $8, timings = timings || $9::jsonb,
            finished_at = now(), updated_at = now()
      WHERE id = $1 AND (NOT $10 OR status IN ('queued', 'running'))`,
    [id, o.status, o.error ?? null, o.read, o.inserted, o.updated, o.unchanged, o.rejected, JSON.stringify(o.timings), onlyIfRunning],
  );
  return (r.rowCount ?? 0) > 0;
}

export async function getImport(db: Db, id: string): Promise<ImportRow | undefined> {
  if (!/^[0-9a-f-]{36}$/i.test(id)) return undefined;
  const { rows } = await db.query<ImportRow>('SELECT * FROM imports WHERE id = $1', [id]);
  return rows[0];
}

export interface RejectRow {
  id: number;
  line: number;
  field: string | null;
  reason: string;
  raw: string;
}

/** Field rejects of an import: values left out of rows that were imported (not in `rejected`). */
export async function fieldRejectCount(db: Db, id: string): Promise<number> {
  const { rows } = await db.query<{ n: number }>('SELECT count(*)::int AS n FROM import_rejects WHERE import_id = $1 AND field IS NOT NULL', [id]);
  return rows[0]!.n;
}

/** Rejects of an import in line order, `limit` at a time after the cursor (line, id). */
export async function listRejects(db: Db, id: string, after: { line: number; id: number }, limit: number): Promise<RejectRow[]> {
  const { rows } = await db.query<RejectRow>(
    `SELECT id, line, field, reason, raw FROM import_rejects
      WHERE import_id = $1 AND (line, id) > ($2, $3) ORDER BY line, id LIMIT $4`,
    [id, after.line, after.id, limit],
  );
  return rows;
}

/**
 * Retention (src/intake/retention.ts): the statuses an import ends in. Only imports in one of
 * them are ever deleted; a queued or running one is someone's work in progress, whatever its age.
 */
const FINISHED = `status IN ('completed', 'failed', 'cancelled')`;

/** Arbitrary, constant: "sluice imports retention", one sweeper at a time. */
const RETENTION_LOCK = 7_301_003;

/**
 * The retention's cutoff: the server's now() less `days` days (Postgres's clock, not this
 * process's, which may disagree with the finished_at it wrote). ISO 8601 to the microsecond,
 * as to_json writes it, so passing it back as `$n::timestamptz` loses nothing.
 */
export async function retentionCutoff(db: Db, days: number): Promise<string> {
  const { rows } = await db.query<{ cutoff: string }>(`SELECT to_json(now() - make_interval(days => $1::int)) #>> '{}' AS cutoff`, [days]);
  return rows[0]!.cutoff;
}

/**
 * Takes the retention's lock for the caller's transaction: false when another process
 * holds it (it is sweeping; the caller skips rather than deleting the same rows behind it).
 */
export async function tryRetentionLock(client: Client): Promise<boolean> {
  const { rows } = await client.query<{ ok: boolean }>('SELECT pg_try_advisory_xact_lock($1) AS ok', [RETENTION_LOCK]);
  return rows[0]!.ok;
}

/**
 * Up to `limit` imports that ended before `cutoff`, oldest first. (No index leads with
 * finished_at: a scan of imports, once per retention batch.)
 */
export async function expiredImports(db: Db, cutoff: string, limit: number): Promise<string[]> {
  const { rows } = await db.query<{ id: string }>(
    `SELECT id FROM imports WHERE ${FINISHED} AND finished_at < $1::timestamptz ORDER BY finished_at, id LIMIT $2`,
    [cutoff, limit],
  );
  return rows.map((r) => r.id);
}

/**
 * Deletes up to `limit` rejects of the imports `ids`; how many went. Rows are picked by
 * ctid (a TID scan): import_rejects has no key of its own, and its `id` no index. Run before
 * deleteExpiredImports, a batch at a time, so no transaction deletes an import's hundreds of
 * thousands of rejects at once through the cascade.
 */
export async function deleteRejectsOf(db: Db, ids: string[], limit: number): Promise<number> {
  const { rowCount } = await db.query(
    `DELETE FROM import_rejects
      WHERE ctid = ANY (ARRAY(SELECT ctid FROM import_rejects WHERE import_id = ANY ($1::uuid[]) LIMIT $2))`,
    [ids, limit],
  );
  return rowCount ?? 0;
}

/**
 * Deletes the imports `ids` that still ended before `cutoff` (checked again on the row
 * deleted), with their parts (ON DELETE CASCADE; their rejects went first, deleteRejectsOf);
 * how many went.
 */
export async function deleteExpiredImports(db: Db, ids: string[], cutoff: string): Promise<number> {
  const { rowCount } = await db.query(
    `DELETE FROM imports WHERE id = ANY ($1::uuid[]) AND ${FINISHED} AND finished_at < $2::timestamptz`,
    [ids, cutoff],
  );
  return rowCount ?? 0;
}
