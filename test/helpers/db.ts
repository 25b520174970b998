/**
 * Real PostgreSQL for tests, isolated per test file: each `testDb()` is a fresh database
 * cloned from a migrated template (created once per migration set). The base server is
 * DATABASE_URL when set, else the embedded server of SLUICE_HOME (scripts/run-tests.ts
 * points it at .sluice-test). A database is dropped only when the test file passes.
 */
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before } from 'node:test';
import pg from 'pg';
import { env } from '../../src/config.ts';
import { ensureEmbedded } from '../../src/db/embedded.ts';
import { listMigrations, migrate } from '../../src/db/migrate.ts';
import { openDb, withDatabase, type Pool } from '../../src/db/pool.ts';

export interface TestDb {
  url: string;
  pool: Pool;
  name: string;
  /** Closes the pool and drops the database (call from `after`). */
  close(): Promise<void>;
}

async function serverUrl(): Promise<string> {
  return env('DATABASE_URL') ?? (await ensureEmbedded());
}

async function ensureTemplate(admin: pg.Client, base: string): Promise<string> {
  const hash = createHash('sha256');
  for (const m of listMigrations()) hash.update(m.name).update(m.sql);
  const name = `sluice_tmpl_${hash.digest('hex').slice(0, 12)}`;
  await admin.query('SELECT pg_advisory_lock(7301002)');
  try {
    const { rowCount } = await admin.query('SELECT 1 FROM pg_database WHERE datname = $1', [name]);
    if (!rowCount) {
      await admin.query(`CREATE DATABASE ${admin.escapeIdentifier(name)}`);
      const pool = new pg.Pool({ connectionString: withDatabase(base, name), max: 1 });
      try {
        await migrate(pool);
      } finally {
        await pool.end();
      }
    }
  } finally {
    await admin.query('SELECT pg_advisory_unlock(7301002)');
  }
  return name;
}

/** A fresh, migrated database for one test file. */
export async function testDb(options: { max?: number } = {}): Promise<TestDb> {
  const base = await serverUrl();
  const admin = new pg.Client({ connectionString: base });
  await admin.connect();
  let name: string;
  try {
    const template = await ensureTemplate(admin, base);
    name = `sluice_test_${randomBytes(5).toString('hex')}`;
    await admin.query(`CREATE DATABASE ${admin.escapeIdentifier(name)} TEMPLATE ${admin.escapeIdentifier(template)}`);
  } finally {
    await admin.end();
  }
  const url = withDatabase(base, name);
  const pool = await openDb({ url, max: options.max ?? 10, migrate: false });
  return {
    url,
    pool,
    name,
    async close() {
      await pool.end();
      const a = new pg.Client({ connectionString: base });
      await a.connect();
      try {
        await a.query(`DROP DATABASE IF EXISTS ${a.escapeIdentifier(name)} WITH (FORCE)`);
      } finally {
        await a.end();
      }
    },
  };
}

/**
 * A test file's database and scratch directory, the set-up most file-importing tests share:
 * registers before() (testDb(), handed to `use`) and after() (`first`, e.g. killAll for
 * the processes the tests started, then the database closed and the directory removed).
 * Returns the directory, made at once (tests write their files there).
 */
export function testDbAndDir(prefix: string, use: (db: TestDb) => void, first?: () => Promise<void>): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  let db: TestDb | undefined;
  before(async () => {
    db = await testDb();
    use(db);
  });
  after(async () => {
    await first?.();
    await db?.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return dir;
}
