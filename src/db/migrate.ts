/**
 * Numbered plain-SQL migrations (migrations/NNNN_name.sql), applied in order, in one
 * transaction, under an advisory lock so concurrent starts apply each exactly once. Each
 * applied migration's SHA-256 is recorded: a file changed after it was applied stops the
 * start with an error (migrations are append-only; a change goes in a new file).
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type pg from 'pg';
import { repoRoot } from '../config.ts';
import { NonRetryableError } from '../core/errors.ts';

export const migrationsDir = path.join(repoRoot, 'migrations');

export interface Migration {
  version: number;
  name: string;
  sql: string;
}

export function listMigrations(dir = migrationsDir): Migration[] {
  return fs
    .readdirSync(dir)
    .filter((f) => /^\d{4}_[\w-]+\.sql$/.test(f))
    .sort()
    .map((f) => ({ version: Number(f.slice(0, 4)), name: f, sql: fs.readFileSync(path.join(dir, f), 'utf8') }));
}

const LOCK_KEY = 7_301_001; // arbitrary, constant: "sluice migrations"

function checksum(sql: string): string {
  return createHash('sha256').update(sql).digest('hex');
}

let warned = false;

/**
 * Says once per process (stderr) that the database holds migrations this version does not
 * have: a newer Sluice migrated it, and this one may not know its tables' new rules. Not
 * refused: migrations only add, and running an older version for a while (a rollback, a
 * rolling upgrade) is allowed; but it should not go unnoticed.
 */
function warnIfNewer(recorded: Array<{ version: number; name: string }>, known: Set<number>): void {
  const newer = recorded.filter((r) => !known.has(r.version)).map((r) => r.name);
  if (newer.length === 0 || warned) return;
  warned = true;
  process.stderr.write(`sluice: warning: the database has migrations this version of Sluice does not (${newer.join(', ')}): a newer Sluice migrated it; run the same version in every process\n`);
}

/** Applies pending migrations (from `dir`, default migrations/); returns the names applied. */
export async function migrate(pool: pg.Pool, dir = migrationsDir): Promise<string[]> {
  const client = await pool.connect();
  try {
    await client.query('BEGIN');
    await client.query('SELECT pg_advisory_xact_lock($1)', [LOCK_KEY]);
    await client.query(`CREATE TABLE IF NOT EXISTS sluice_migrations (
      version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now(), checksum text)`);
    // Databases migrated before checksums were recorded: their files are taken as applied.
    await client.query('ALTER TABLE sluice_migrations ADD COLUMN IF NOT EXISTS checksum text');
    const { rows } = await client.query<{ version: number; name: string; checksum: string | null }>('SELECT version, name, checksum FROM sluice_migrations ORDER BY version');
    const done = new Map(rows.map((r) => [r.version, r.checksum]));
    const applied: string[] = [];
    const files = listMigrations(dir);
    warnIfNewer(rows, new Set(files.map((m) => m.version)));
    for (const m of files) {
      const sum = checksum(m.sql);
      if (done.has(m.version)) {
        const recorded = done.get(m.version) ?? null;
        if (recorded === null) await client.query('UPDATE sluice_migrations SET checksum = $2 WHERE version = $1', [m.version, sum]);
        else if (recorded !== sum) {
          throw new NonRetryableError(
            `migration ${m.name} was changed after it was applied to this database (sha256 ${recorded.slice(0, 12)}... applied, ${sum.slice(0, 12)}... on disk): migrations are append-only, put the change in a new numbered migration`,
          );
        }
        continue;
      }
      try {
        await client.query(m.sql);
      } catch (err) {
        throw new Error(`migration ${m.name} failed: ${(err as Error).message}`, { cause: err });
      }
      await client.query('INSERT INTO sluice_migrations (version, name, checksum) VALUES ($1, $2, $3)', [m.version, m.name, sum]);
      applied.push(m.name);
    }
    await client.query('COMMIT');
    return applied;
  } catch (err) {
    await client.query('ROLLBACK').catch(() => {});
    throw err;
  } finally {
    client.release();
  }
}
