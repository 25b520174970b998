/** The status of an import as the HTTP API and the dashboard show it. */
import { InvalidInputError } from '../core/errors.ts';
import type { Pool } from '../db/pool.ts';

export interface ImportStatus {
  id: string;
  pipeline: string;
  file_name: string | null;
  status: 'queued' | 'running' | 'completed' | 'failed' | 'cancelled';
  error: string | null;
  parts: { total: number; completed: number; failed: number; running: number };
  rows: { read: number; inserted: number; updated: number; unchanged: number; rejected: number };
  rejects_by_reason: Record<string, number>;
  created_at: string;
  started_at: string | null;
  finished_at: string | null;
  rows_per_s: number | null;
  eta_s: number | null;
  part_list: Array<{ n: number; status: string; rows: number; attempts: number; error: string | null }>;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

interface Row {
  id: string;
  pipeline: string;
  file_name: string | null;
  status: ImportStatus['status'];
  error: string | null;
  parts_total: number | null;
  rows_read: number;
  rows_inserted: number;
  rows_updated: number;
  rows_unchanged: number;
  rows_rejected: number;
  created_at: Date;
  /** created_at to the microsecond, UTC, for the list's cursor. */
  cursor_at: string;
  started_at: Date | null;
  finished_at: Date | null;
  part_list: ImportStatus['part_list'] | null;
  parts_read: number;
  parts_rejected: number;
  by_reason: Record<string, number> | null;
  now: Date;
}

// One statement per status (the dashboard and clients poll it): the part list, the
// progress sums and the reject counts by reason class (the text before the first colon,
// most frequent first) come with the import row.
const SELECT = `
  SELECT i.id, i.pipeline, i.file_name, i.status, i.error, i.parts_total, i.rows_read, i.rows_inserted,
         i.rows_updated, i.rows_unchanged, i.rows_rejected, i.created_at, i.started_at, i.finished_at, now() AS now,
         to_char(i.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS cursor_at,
         p.part_list, p.parts_read, p.parts_rejected,
         (SELECT json_object_agg(r.reason, r.n ORDER BY r.n DESC)
            FROM (SELECT split_part(reason, ':', 1) AS reason, count(*)::int AS n
                    FROM import_rejects WHERE import_id = i.id GROUP BY 1) r) AS by_reason
    FROM imports i
    CROSS JOIN LATERAL (
      SELECT json_agg(json_build_object('n', n, 'status', status, 'rows', rows_read, 'attempts', attempts, 'error', error) ORDER BY n) AS part_list,
             coalesce(sum(rows_read), 0)::bigint AS parts_read, coalesce(sum(rows_rejected), 0)::bigint AS parts_rejected
        FROM import_parts WHERE import_id = i.id) p`;

function toStatus(r: Row): ImportStatus {
  const list = r.part_list ?? [];
  const count = (s: string) => list.filter((p) => p.status === s).length;
  const finished = r.status === 'completed' || r.status === 'failed' || r.status === 'cancelled';
  // Rows read and rejected come from the import row once the merge recorded them (completed,
  // or failed by the merge, e.g. too many rejects); otherwise from the parts: while they run,
  // and for an import cancelled or failed before its merge, whose row holds zeros while its
  // parts and their rejects are there to see.
  const merged = r.status === 'completed' || (r.status === 'failed' && Number(r.rows_read) > 0);
  const read = merged || list.length === 0 ? Number(r.rows_read) : Number(r.parts_read);
  const rejected = merged || list.length === 0 ? Number(r.rows_rejected) : Number(r.parts_rejected);
  const end = r.finished_at ?? r.now;
  const secs = r.started_at ? (end.getTime() - r.started_at.getTime()) / 1000 : 0;
  const rowsPerS = secs > 0 && read > 0 ? Math.round(read / secs) : null;
  const total = r.parts_total ?? list.length;
  const done = count('completed');
  // 0 once completed; none for an import that ended otherwise (0 would read as "done").
  const eta = r.status === 'completed' ? 0 : finished ? null : rowsPerS && done > 0 && total > done ? Math.round(((read / done) * (total - done)) / rowsPerS) : null;
  return {
    id: r.id,
    pipeline: r.pipeline,
    file_name: r.file_name,
    status: r.status,
    error: r.error,
    parts: { total, completed: done, failed: count('failed'), running: count('running') },
    rows: { read, inserted: Number(r.rows_inserted), updated: Number(r.rows_updated), unchanged: Number(r.rows_unchanged), rejected },
    rejects_by_reason: r.by_reason ?? {},
    created_at: r.created_at.toISOString(),
    started_at: r.started_at?.toISOString() ?? null,
    finished_at: r.finished_at?.toISOString() ?? null,
    rows_per_s: rowsPerS,
    eta_s: eta,
    part_list: list,
  };
}

export async function importStatus(pool: Pool, id: string): Promise<ImportStatus | undefined> {
  if (!UUID.test(id)) return undefined;
  const { rows } = await pool.query<Row>(`${SELECT} WHERE i.id = $1`, [id]);
  if (!rows[0]) return undefined;
  return toStatus(rows[0]);
}

/** What the log line of an import's end says: the import row alone (no parts, no rejects). */
export type ImportEnd = Pick<ImportStatus, 'id' | 'pipeline' | 'file_name' | 'status' | 'error' | 'rows' | 'created_at' | 'started_at' | 'finished_at'>;

/** The import's end (its row only: cheap after every merge), undefined while it is unfinished or gone. */
export async function importEnd(pool: Pool, id: string): Promise<ImportEnd | undefined> {
  const { rows } = await pool.query<Pick<Row, 'id' | 'pipeline' | 'file_name' | 'status' | 'error' | 'rows_read' | 'rows_inserted' | 'rows_updated' | 'rows_unchanged' | 'rows_rejected' | 'created_at' | 'started_at' | 'finished_at'>>(
    `SELECT id, pipeline, file_name, status, error, rows_read, rows_inserted, rows_updated, rows_unchanged, rows_rejected, created_at, started_at, finished_at
       FROM imports WHERE id = $1 AND status IN ('completed', 'failed', 'cancelled')`,
    [id],
  );
  const r = rows[0];
  if (!r) return undefined;
  return {
    id: r.id, pipeline: r.pipeline, file_name: r.file_name, status: r.status, error: r.error,
    rows: { read: Number(r.rows_read), inserted: Number(r.rows_inserted), updated: Number(r.rows_updated), unchanged: Number(r.rows_unchanged), rejected: Number(r.rows_rejected) },
    created_at: r.created_at.toISOString(), started_at: r.started_at?.toISOString() ?? null, finished_at: r.finished_at?.toISOString() ?? null,
  };
}

/** Writes describeImportEnd's line to stderr (`sluice worker`, `sluice serve`'s workers). */
export function logImportEnd(s: ImportEnd): void {
  process.stderr.write(`sluice: ${describeImportEnd(s)}\n`);
}

/**
 * One line for an operator's log on an import that ended: `import <id> (purchases,
 * base_teste.txt) completed in 0.81 s: 49,998 read, 49,998 inserted, 0 updated, 0
 * unchanged, 0 rejected`, or `... failed after 2.3 s: <error>` (stored errors have their URL
 * credentials masked already).
 */
/** 1234567 as `1,234,567`. Not toLocaleString: its first call loads ICU's number formatting, ~40 ms of CPU in every process's first use. */
export function groupDigits(x: number): string {
  return String(x).replace(/\B(?=(\d{3})+$)/g, ',');
}

/** The operator's line for an upload stored whole (`sluice serve`, the import's start). */
export function logImportReceived(r: { id: string; pipeline: string; fileName: string | null; parts: number; bytes: number; ms: number }): void {
  process.stderr.write(
    `sluice: import ${r.id} (${r.pipeline}${r.fileName ? `, ${r.fileName}` : ''}) received: ${groupDigits(r.bytes)} bytes in ${groupDigits(r.parts)} part${r.parts === 1 ? '' : 's'}, ${(r.ms / 1000).toFixed(2)} s\n`,
  );
}

function describeImportEnd(s: ImportEnd): string {
  const from = s.started_at ?? s.created_at;
  const secs = s.finished_at ? ` ${s.status === 'completed' ? 'in' : 'after'} ${((Date.parse(s.finished_at) - Date.parse(from)) / 1000).toFixed(2)} s` : '';
  const what = `import ${s.id} (${s.pipeline}${s.file_name ? `, ${s.file_name}` : ''}) ${s.status}${secs}`;
  if (s.status !== 'completed') return `${what}${s.error ? `: ${s.error}` : ''}`;
  const r = s.rows;
  return `${what}: ${groupDigits(r.read)} read, ${groupDigits(r.inserted)} inserted, ${groupDigits(r.updated)} updated, ${groupDigits(r.unchanged)} unchanged, ${groupDigits(r.rejected)} rejected`;
}

/**
 * A cursor's time: created_at to the microsecond, as Postgres writes it in UTC (a JavaScript
 * Date keeps milliseconds only, and imports created within one millisecond were skipped).
 */
const CURSOR_TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z$/;

/** Imports newest first; `cursor` is the opaque next_cursor of the previous page. */
export async function listImports(pool: Pool, page: { cursor?: string | undefined; limit: number }): Promise<{ imports: ImportStatus[]; next_cursor: string | null }> {
  let after: [string, string] | undefined;
  if (page.cursor) {
    const [ts, id] = Buffer.from(page.cursor, 'base64url').toString('utf8').split('|');
    if (!ts || !id || !UUID.test(id) || !CURSOR_TIME.test(ts)) throw new InvalidInputError('invalid cursor');
    after = [ts, id];
  }
  const { rows } = await pool.query<Row>(
    `${SELECT} ${after ? 'WHERE (i.created_at, i.id) < ($2::timestamptz, $3::uuid)' : ''} ORDER BY i.created_at DESC, i.id DESC LIMIT $1`,
    after ? [page.limit + 1, after[0], after[1]] : [page.limit + 1],
  );
  const more = rows.length > page.limit;
  const pageRows = rows.slice(0, page.limit);
  const imports = pageRows.map(toStatus);
  const last = pageRows[pageRows.length - 1];
  const next = more && last ? Buffer.from(`${last.cursor_at}|${last.id}`).toString('base64url') : null;
  return { imports, next_cursor: next };
}
