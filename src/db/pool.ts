/**
 * Connections. `databaseUrl()` is DATABASE_URL when set, else the embedded server's URL
 * (started on demand). `openDb()` returns a pool with migrations applied.
 */
import pg from 'pg';
import { env } from '../config.ts';
import { InvalidInputError } from '../core/errors.ts';
import { maskUrlPasswords } from '../core/url-credentials.ts';
import { clientClass, connectionSettings, newClient, type ConnectionSettings } from './connection.ts';
import { ensureEmbedded } from './embedded.ts';
import { migrate } from './migrate.ts';

// int8 (counts, ids) as JS numbers: every value Sluice stores is far below 2^53.
pg.types.setTypeParser(20, (v) => Number(v));

export type Pool = pg.Pool;
export type Client = pg.PoolClient;

let cachedUrl: string | undefined;

/**
 * DATABASE_URL if it is a PostgreSQL URL, else bad usage (exit 2) naming the variable: `not a
 * url` failed later as "getaddrinfo ENOTFOUND base", a bad port as "Invalid URL". The value
 * is shown with its password and query values masked.
 */
function checkedUrl(value: string): string {
  // A socket directory and a database name (`/var/run/postgresql dbname`), as pg takes them.
  let ok = value.startsWith('/');
  if (!ok && /^(postgres|postgresql|socket):/i.test(value)) {
    try {
      new URL(value);
      ok = true;
    } catch {
      // An empty host, the socket named by ?host= (`postgres://user:pw@/db?host=/cloudsql/x`):
      // pg takes it, the WHATWG parser does not. A bad port or host is still refused.
      ok = /^postgres(ql)?:\/\/[^/?#@]*@?\//i.test(value);
    }
  }
  if (!ok) {
    throw new InvalidInputError(`DATABASE_URL must be a postgres:// or postgresql:// URL (user, password, host, port, database), got ${maskUrlPasswords(value)}`);
  }
  return value;
}

/** The database URL: DATABASE_URL, else the embedded server's (database `sluice`). */
export async function databaseUrl(): Promise<string> {
  const fromEnv = env('DATABASE_URL');
  if (fromEnv) return checkedUrl(fromEnv);
  if (cachedUrl) return cachedUrl;
  const adminUrl = await ensureEmbedded();
  await ensureDatabase(adminUrl, 'sluice');
  cachedUrl = withDatabase(adminUrl, 'sluice');
  return cachedUrl;
}

export function withDatabase(url: string, database: string): string {
  const u = new URL(url);
  u.pathname = `/${database}`;
  return u.toString();
}

/** Creates `database` if missing (race-safe: a concurrent creator wins, we carry on). */
export async function ensureDatabase(adminUrl: string, database: string, template?: string): Promise<void> {
  const client = newClient({ connectionString: adminUrl });
  await client.connect();
  try {
    const { rowCount } = await client.query('SELECT 1 FROM pg_database WHERE datname = $1', [database]);
    if (rowCount) return;
    const tmpl = template ? ` TEMPLATE ${client.escapeIdentifier(template)}` : '';
    await client.query(`CREATE DATABASE ${client.escapeIdentifier(database)}${tmpl}`);
  } catch (err) {
    // 42P04 duplicate_database, 23505 when two creators race on the catalog.
    const code = (err as { code?: string }).code;
    if (code !== '42P04' && code !== '23505') throw err;
  } finally {
    await client.end();
  }
}

export interface OpenDbOptions {
  url?: string;
  max?: number;
  /**
   * Connections kept open however long they stay idle (pg-pool's `min`; the others close
   * after 10 s idle). For the long-running processes: a connection opened anew costs the
   * request that needs it a SCRAM exchange, a backend's start and that backend's cold
   * catalog caches, which made an upload arriving after a quiet spell slower than one right
   * after another (README, intake benchmark).
   */
  keep?: number;
  migrate?: boolean;
  applicationName?: string;
  /** Connect timeout and keepalives (src/db/connection.ts); default: the SLUICE_DB_* settings. */
  connection?: Partial<ConnectionSettings>;
}

/** A pool on the Sluice database, migrated unless `migrate: false`. */
export async function openDb(options: OpenDbOptions = {}): Promise<Pool> {
  // Read first: a bad SLUICE_DB_* value is refused before the embedded server starts.
  const settings = { ...connectionSettings(), ...options.connection };
  const url = options.url ?? (await databaseUrl());
  const pool = new pg.Pool({
    // Every connection opens within the connect timeout and has keepalives on both ends. No
    // pool-level connectionTimeoutMillis: that would also bound the wait for a free
    // connection of a busy pool, which is no lost connection and ends with a release.
    Client: clientClass(settings),
    connectionString: url,
    max: options.max ?? 10,
    min: options.keep ?? 0,
    application_name: options.applicationName ?? 'sluice',
  });
  // An idle client that loses its connection must not crash the process; the next
  // checkout gets a fresh one.
  pool.on('error', () => {});
  // Same for a checked-out client (pg_terminate_backend, a server restart): without a
  // listener its 'error' event would crash the process; the query in flight rejects anyway
  // and the caller's retry logic takes over.
  pool.on('connect', (client) => client.on('error', () => {}));
  if (options.migrate !== false) {
    try {
      await migrate(pool);
    } catch (err) {
      // Its connections would keep the process alive (pg's idle timeout: 10 s).
      await pool.end().catch(() => {});
      throw err;
    }
  }
  return pool;
}

/**
 * Runs `fn` on one pool client inside a transaction opened by `begin` (`BEGIN`, or BEGIN
 * with SET LOCAL limits built by the caller from its own numbers): see transactionOn. A
 * client whose ROLLBACK fails (its connection lost) is not handed back to the pool.
 */
export async function withTransaction<T>(pool: Pool, begin: string, fn: (client: Client) => Promise<T>): Promise<T> {
  const client = await pool.connect();
  let broken: Error | undefined;
  try {
    return await transactionOn(client, begin, () => fn(client), (e) => (broken = e));
  } finally {
    client.release(broken);
  }
}

/**
 * Runs `fn` inside a transaction on `client`, opened by `begin`, then COMMIT; when anything
 * throws, ROLLBACK and the error goes on. A ROLLBACK that fails leaves the connection unfit
 * to reuse (it may still be inside the transaction): `onBroken` gets that error, and the
 * caller then releases the client with it (destroyed, not pooled).
 */
export async function transactionOn<T>(client: Client, begin: string, fn: () => Promise<T>, onBroken: (err: Error) => void): Promise<T> {
  try {
    await client.query(begin);
    const result = await fn();
    await client.query('COMMIT');
    return result;
  } catch (err) {
    await client.query('ROLLBACK').catch((e: Error) => onBroken(e));
    throw err;
  }
}
