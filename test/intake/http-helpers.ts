/**
 * Shared by the intake HTTP and dashboard tests: a server context with the real job queue
 * (and optionally real workers), multipart bodies built by hand (so tests control field
 * order), lead CSVs, and a deadline-bounded wait.
 */
import { randomBytes } from 'node:crypto';
import type { AppContext } from '../../src/http/context.ts';
import type { IntakeContext } from '../../src/intake/index.ts';
import { startWorkers, type RunningWorkers } from '../../src/intake/index.ts';
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
