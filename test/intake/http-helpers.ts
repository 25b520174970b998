/**
 * Shared by the intake HTTP and dashboard tests: a server context with the real job queue
 * (and optionally real workers), multipart bodies built by hand (so tests control field
 * order), lead CSVs, and deadline-bounded waits on an import's state (its end, its stored
 * parts, its staging and bytes gone, its row gone): each a poll of a condition, not a sleep.
 */
import { randomBytes } from 'node:crypto';
import type { AppContext } from '../../src/http/context.ts';
import type { IntakeContext } from '../../src/intake/index.ts';
import { importStatus, startWorkers, type ImportStatus, type RunningWorkers } from '../../src/intake/index.ts';
import { startBoss, type Boss } from '../../src/jobs/boss.ts';
import { stagingTables } from '../../src/load/staging.ts';
import { testDb, type TestDb } from '../helpers/db.ts';

export type Ctx = AppContext & IntakeContext;

export interface Intake {
  ctx: Ctx;
  /** Stops the workers (if any) and the queue. */
  stop(): Promise<void>;
}

/** The queue on the test database, plus `workers` part workers when > 0. */
export async function startIntake(db: TestDb, options: { workers?: number; apiToken?: string } = {}): Promise<Intake> {
  const boss = await startBoss(db.url);
  const ctx: Ctx = { pool: db.pool, boss, apiToken: options.apiToken };
  let workers: RunningWorkers | undefined;
  try {
    if (options.workers) workers = await startWorkers(ctx, { concurrency: options.workers });
  } catch (err) {
    await boss.stop({ graceful: false });
    throw err;
  }
  return {
    ctx,
    async stop() {
      await workers?.stop();
      await boss.stop({ graceful: true, timeout: 10_000 });
    },
  };
}

export type FormPart = { name: string; value: string } | { name: string; filename: string; content: string | Buffer; type?: string };

/** A multipart/form-data body (RFC 7578) with the parts in the given order. */
export function multipart(parts: FormPart[]): { payload: Buffer; headers: Record<string, string> } {
  const boundary = `----sluice${randomBytes(8).toString('hex')}`;
  const chunks: Buffer[] = [];
  for (const p of parts) {
    if ('value' in p) {
      chunks.push(Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="${p.name}"\r\n\r\n${p.value}\r\n`));
    } else {
      chunks.push(Buffer.from(
        `--${boundary}\r\nContent-Disposition: form-data; name="${p.name}"; filename="${p.filename}"\r\n` +
        `Content-Type: ${p.type ?? 'text/csv'}\r\n\r\n`,
      ));
      chunks.push(Buffer.isBuffer(p.content) ? p.content : Buffer.from(p.content));
      chunks.push(Buffer.from('\r\n'));
    }
  }
  chunks.push(Buffer.from(`--${boundary}--\r\n`));
  return { payload: Buffer.concat(chunks), headers: { 'content-type': `multipart/form-data; boundary=${boundary}` } };
}

/** A leads CSV with `good` valid rows (emails from `prefix`) and `bad` rows with a bad email. */
export function leadsCsv(good: number, bad = 0, prefix = 'lead'): string {
  const lines = ['Email,Name,Cidade,UF'];
  for (let i = 0; i < good; i++) lines.push(`${prefix}${i}@example.com,Lead ${i},Recife,PE`);
  for (let i = 0; i < bad; i++) lines.push(`not-an-email-${i},"Bad, ${i}",Recife,PE`);
  return `${lines.join('\n')}\n`;
}

/**
 * Polls `check` until it returns a value other than undefined, or fails after `timeoutMs`
 * with the last value seen (a bounded wait on a condition, not a sleep).
 */
export async function waitFor<T>(what: string, check: () => Promise<T | undefined>, timeoutMs = 60_000, everyMs = 100): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/**
 * Polls import `id`'s status until it has ended (any status but queued or running) and
 * returns that status. `read` is how the test looks: GET /imports/<id> (over HTTP or
 * in-process), or a pool, for importStatus straight from the database. An undefined status
 * (no such import yet) is waited on. `timeoutMs`: 60 s by default.
 */
export function waitForImportEnd(id: string, read: TestDb['pool'] | ((id: string) => Promise<ImportStatus | undefined>), timeoutMs = 60_000): Promise<ImportStatus> {
  const look = typeof read === 'function' ? read : (i: string) => importStatus(read, i);
  return waitFor(`import ${id} to finish`, async () => {
    const s = await look(id);
    return s === undefined || s.status === 'queued' || s.status === 'running' ? undefined : s;
  }, timeoutMs);
}

/** GET <base>/imports/<id>, its body as it comes (a reader for waitForImportEnd). */
export function statusOverHttp(base: string): (id: string) => Promise<ImportStatus> {
  return async (id) => (await (await fetch(`${base}/imports/${id}`)).json()) as ImportStatus;
}

/**
 * Which import a wait is about: `id`, and/or its `fileName` (null: none given, as a raw body
 * without file_name) and `status` (e.g. still `queued`).
 */
export interface ImportMatch {
  id?: string;
  fileName?: string | null;
  status?: ImportStatus['status'];
}

/**
 * Waits until an import matching `match` has at least `atLeast` parts stored (rows in
 * import_parts, whatever their status) and returns its id (the first found when several
 * match). `timeoutMs` and `everyMs` as for waitFor.
 */
export function waitForStoredParts(what: string, pool: TestDb['pool'], match: ImportMatch & { atLeast: number }, timeoutMs = 60_000, everyMs = 100): Promise<string> {
  const params: unknown[] = [match.atLeast];
  const where = ['(SELECT count(*) FROM import_parts p WHERE p.import_id = i.id) >= $1'];
  if (match.id !== undefined) where.push(`i.id = $${params.push(match.id)}`);
  if (match.fileName === null) where.push('i.file_name IS NULL');
  else if (match.fileName !== undefined) where.push(`i.file_name = $${params.push(match.fileName)}`);
  if (match.status !== undefined) where.push(`i.status = $${params.push(match.status)}`);
  return waitFor(what, async () => {
    const { rows } = await pool.query<{ id: string }>(`SELECT i.id FROM imports i WHERE ${where.join(' AND ')}`, params);
    return rows[0]?.id;
  }, timeoutMs, everyMs);
}

/**
 * Waits until import `id` has left nothing behind (leftovers: no staging table, no part
 * holding its bytes), as an ended import's clean-up does just after its end is recorded.
 */
export function waitForNoLeftovers(what: string, db: TestDb, importId: string, timeoutMs = 60_000): Promise<true> {
  return waitFor(what, async () => {
    const left = await leftovers(db, importId);
    return left.tables === 0 && left.bytes === 0 ? true : undefined;
  }, timeoutMs);
}

/** Waits until the row of import `id` is deleted (an upload cut or aborted removes its import). */
export function waitForImportRemoved(pool: TestDb['pool'], id: string, timeoutMs = 60_000, everyMs = 100): Promise<true> {
  return waitFor(`import ${id} removed`, async () => ((await pool.query('SELECT 1 FROM imports WHERE id = $1', [id])).rows.length === 0 ? true : undefined), timeoutMs, everyMs);
}

/** The staging tables of every import in the database (`sluice_stage_%`). */
export async function stagingTableCount(pool: TestDb['pool']): Promise<number> {
  const { rows } = await pool.query<{ n: number }>(`SELECT count(*)::int AS n FROM pg_tables WHERE tablename LIKE 'sluice_stage_%'`);
  return rows[0]!.n;
}

/** Waits until no import has a staging table left (stagingTableCount is 0). */
export function waitForNoStaging(what: string, pool: TestDb['pool'], timeoutMs = 60_000): Promise<true> {
  return waitFor(what, async () => ((await stagingTableCount(pool)) === 0 ? true : undefined), timeoutMs);
}

/**
 * Fresh databases, each with a queue on it (no supervision: the processes under test do
 * that), for tests of real worker and server processes; `close` stops and drops them all.
 */
export function queueDatabases() {
  const dbs: TestDb[] = [];
  const bosses: Boss[] = [];
  return {
    async setup() {
      const db = await testDb();
      dbs.push(db);
      const boss = await startBoss(db.url, { supervise: false });
      bosses.push(boss);
      return { db, ctx: { pool: db.pool, boss } };
    },
    /** A queue to stop with the others (e.g. one that supervises). */
    keep(boss: Boss) {
      bosses.push(boss);
    },
    async close() {
      for (const b of bosses) await b.stop({ graceful: false }).catch(() => {});
      for (const d of dbs) await d.close();
    },
  };
}

/** The stored name and city of the leads with these emails, in email order. */
export async function leadsWithCity(db: TestDb, emails: string[]): Promise<Array<{ email: string; name: string; city: string }>> {
  const { rows } = await db.pool.query<{ email: string; name: string; city: string }>(
    `SELECT l.email, l.name, c.name AS city FROM leads l JOIN cities c ON c.id = l.city_id WHERE l.email = ANY ($1::text[]) ORDER BY l.email`,
    [emails],
  );
  return rows;
}

/** What an import left behind: its staging tables (stagingTables) and the parts still holding their bytes. */
export async function leftovers(db: TestDb, importId: string): Promise<{ tables: number; bytes: number }> {
  const { rows } = await db.pool.query<{ n: number }>('SELECT count(*)::int AS n FROM import_parts WHERE import_id = $1 AND data IS NOT NULL', [importId]);
  return { tables: (await stagingTables(db.pool, importId)).length, bytes: rows[0]!.n };
}

/** Every column of every lead and its lead_infos row, ids and timestamps aside, references by name: to compare two imports' tables. */
export async function leadsSnapshot(pool: TestDb['pool']): Promise<unknown[]> {
  const { rows } = await pool.query<{ lead: unknown }>(
    `SELECT to_jsonb(l) - 'id' - 'created_at' - 'updated_at' - 'city_id' - 'state_id'
              || jsonb_build_object('city', (SELECT name FROM cities WHERE id = l.city_id),
                                    'state', (SELECT acronym FROM states WHERE id = l.state_id),
                                    'info', (SELECT to_jsonb(i) - 'lead_id' - 'created_at' - 'updated_at' FROM lead_infos i WHERE i.lead_id = l.id)) AS lead
       FROM leads l ORDER BY l.email`,
  );
  return rows.map((r) => r.lead);
}
