/**
 * Configuration from the environment, read in one place. Secrets (DATABASE_URL's password,
 * SLUICE_API_TOKEN, PIPEDRIVE_API_TOKEN) are read here and never logged.
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { InvalidInputError } from './core/errors.ts';
import { wholeNumber } from './core/whole-number.ts';

/** The repository root (this file is src/config.ts). */
export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

export function env(name: string): string | undefined {
  const v = process.env[name];
  return v === undefined || v === '' ? undefined : v;
}

/** Where Sluice keeps local state (embedded Postgres, uploads); default `<repo>/.sluice`. */
export function sluiceHome(): string {
  return path.resolve(env('SLUICE_HOME') ?? path.join(repoRoot, '.sluice'));
}

/**
 * A numeric setting, `fallback` when unset. A value that is not a number is bad usage
 * (InvalidInputError: CLI exit 2); commands check their settings up front with
 * `checkSettings`, so this throws only for a setting missing from SETTINGS.
 */
export function intEnv(name: string, fallback: number): number {
  const v = env(name);
  if (v === undefined) return fallback;
  // A listed setting is held to its own rule (SLUICE_PART_ROWS >= 100...), others to a number.
  const problem = (SETTINGS[name]?.check ?? isNumber)(v);
  if (problem) throw new InvalidInputError(`${name} ${problem}, got ${JSON.stringify(v)}`);
  return Number(v);
}

/** The commands that check their settings before opening anything. */
export type SettingsCommand = 'serve' | 'worker' | 'import' | 'sync-events';

interface Setting {
  /** The commands that read it (directly or in their routes, services and workers). */
  readBy: readonly SettingsCommand[];
  /** What is wrong with `value` ("must be ..."), undefined when it is fine. */
  check(value: string): string | undefined;
}

/** What intEnv accepts. */
function isNumber(v: string): string | undefined {
  return Number.isFinite(Number(v)) ? undefined : 'must be a number';
}

function isPositiveInteger(v: string): string | undefined {
  return (wholeNumber(v) ?? 0) >= 1 ? undefined : 'must be a positive integer';
}

function wholeAtLeast(min: number, max = Number.MAX_SAFE_INTEGER): (v: string) => string | undefined {
  return (v) => {
    const n = wholeNumber(v);
    if (n !== undefined && n >= min && n <= max) return undefined;
    return max === Number.MAX_SAFE_INTEGER ? `must be a whole number of at least ${min}` : `must be a whole number from ${min} to ${max}`;
  };
}

/** The longest a timer waits: Node turns a longer setTimeout into 1 ms. */
const MAX_TIMER_MS = 2 ** 31 - 1;

function oneOf(...values: string[]): (v: string) => string | undefined {
  return (v) => (values.includes(v) ? undefined : `must be ${values.slice(0, -1).join(', ')} or ${values.at(-1)}`);
}

const serve = ['serve'] as const;
const provider = ['serve', 'sync-events'] as const;
/** Every command that opens the database (the others read them when they open it). */
const database = ['serve', 'worker', 'import', 'sync-events'] as const;
/** A timer's length in whole seconds. */
const timerSeconds = wholeAtLeast(1, Math.floor(MAX_TIMER_MS / 1000));

/**
 * Every setting with a constrained value, and the commands that read it. They are read
 * where they are used (routes, services, workers), often after the database pool, the
 * queue or a LISTEN connection is open, where a bad value would leave those behind: so each
 * command checks all of its settings first (`checkSettings`), including those it reads only
 * in some configurations (SLUICE_PROVIDER_* without SLUICE_PROVIDER_URL). A setting read
 * with intEnv must be listed here (test/cli/settings.test.ts checks it).
 */
export const SETTINGS: Readonly<Record<string, Setting>> = {
  SLUICE_PORT: { readBy: serve, check: wholeAtLeast(0, 65535) },
  // At least servePoolMinimum(SLUICE_WORKERS) as well: SLUICE_WORKERS + 8, 5 without workers (checked by serve).
  SLUICE_DB_POOL: { readBy: serve, check: wholeAtLeast(1) },
  // Every connection's (src/db/connection.ts). A connect timeout under 100 ms would refuse
  // healthy connections; the keepalive bounds are Linux's (TCP_KEEPIDLE and TCP_KEEPINTVL
  // at most 32767 s, TCP_KEEPCNT 127); an idle of 0 leaves the server's and the OS's own.
  SLUICE_DB_CONNECT_TIMEOUT_MS: { readBy: database, check: wholeAtLeast(100, MAX_TIMER_MS) },
  SLUICE_DB_KEEPALIVE_IDLE_S: { readBy: database, check: wholeAtLeast(0, 32767) },
  SLUICE_DB_KEEPALIVE_INTERVAL_S: { readBy: database, check: wholeAtLeast(1, 32767) },
  SLUICE_DB_KEEPALIVE_COUNT: { readBy: database, check: wholeAtLeast(1, 127) },
  SLUICE_LOG_LEVEL: { readBy: serve, check: oneOf('fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent') },
  SLUICE_MAX_UPLOAD_BYTES: { readBy: serve, check: wholeAtLeast(1) },
  // `yes` or `true` read as off without a word (only 1 allows).
  SLUICE_FETCH_ALLOW_PRIVATE: { readBy: serve, check: oneOf('0', '1') },
  // Each part is a table and a job: -1 made one-row parts, thousands of them.
  SLUICE_PART_ROWS: { readBy: serve, check: wholeAtLeast(100) },
  // -1 started no workers without a word: whole, 0 or more.
  SLUICE_WORKERS: { readBy: serve, check: wholeAtLeast(0) },
  SLUICE_REAP_INTERVAL_MS: { readBy: serve, check: wholeAtLeast(1000, MAX_TIMER_MS) },
  SLUICE_WORKER_WARMUP: { readBy: ['serve', 'worker'], check: oneOf('0', '1') },
  SLUICE_LIVE_MAX_STREAMS: { readBy: serve, check: wholeAtLeast(0) },
  SLUICE_SEARCH_CACHE: { readBy: serve, check: oneOf('strict', 'notify', 'off') },
  SLUICE_VISITS_BATCH_MAX: { readBy: serve, check: wholeAtLeast(1) },
  SLUICE_VISITS_BATCH_BYTES: { readBy: serve, check: wholeAtLeast(1) },
  SLUICE_VISITS_FLUSH_MS: { readBy: serve, check: wholeAtLeast(0, MAX_TIMER_MS) },
  SLUICE_VISITS_MAX_PENDING: { readBy: serve, check: wholeAtLeast(1) },
  SLUICE_VISITS_MAX_PENDING_MB: { readBy: serve, check: wholeAtLeast(1) },
  SLUICE_VISITS_FLUSHES: { readBy: serve, check: wholeAtLeast(1) },
  SLUICE_VISITS_TIMEOUT_MS: { readBy: serve, check: wholeAtLeast(1, MAX_TIMER_MS) },
  SLUICE_VISITS_APPLY_MS: { readBy: serve, check: wholeAtLeast(0, MAX_TIMER_MS) },
  SLUICE_VISITS_MAINTENANCE: { readBy: serve, check: oneOf('0', '1') },
  SLUICE_VISITS_MAINTENANCE_MS: { readBy: serve, check: wholeAtLeast(1000, MAX_TIMER_MS) },
  // Days a finished import is kept (0: for ever; src/intake/retention.ts). -1 would put the
  // cutoff in the future and delete every finished import at once; 100 years at most.
  SLUICE_IMPORTS_RETENTION_DAYS: { readBy: serve, check: wholeAtLeast(0, 36500) },
  SLUICE_IMPORTS_RETENTION_MS: { readBy: serve, check: wholeAtLeast(1000, MAX_TIMER_MS) },
  // Read by `serve` and `sync events` (whose --interval, --timeout, --idle-timeout and
  // --retries flags are held to the same rules). Seconds become timers: at most 2^31-1 ms, or
  // Node fires them every millisecond. An interval of 0 fetched the provider in a loop (348
  // syncs in 6 s): at least 1 s. Retries: -1 ran no attempt at all; a fraction is no count.
  SLUICE_PROVIDER_INTERVAL_S: { readBy: provider, check: timerSeconds },
  SLUICE_PROVIDER_TIMEOUT_S: { readBy: provider, check: timerSeconds },
  SLUICE_PROVIDER_IDLE_TIMEOUT_S: { readBy: provider, check: timerSeconds },
  SLUICE_PROVIDER_RETRIES: { readBy: provider, check: (v) => isNumber(v) ?? wholeAtLeast(0)(v) },
  // Read by the import runner (src/engine/import-runner.ts, chunkRows) once the import's
  // row exists: a bad value would be recorded as a failed import instead of refused.
  SLUICE_CHUNK_ROWS: { readBy: ['import'], check: isPositiveInteger },
};

/**
 * Checks every setting `command` reads (SETTINGS) and throws one InvalidInputError naming
 * each bad value. Call it before opening anything (pool, queue, embedded server).
 */
export function checkSettings(command: SettingsCommand): void {
  const problems: string[] = [];
  for (const [name, s] of Object.entries(SETTINGS)) {
    const v = env(name);
    if (v === undefined || !s.readBy.includes(command)) continue;
    const problem = s.check(v);
    if (problem) problems.push(`${name} ${problem}, got ${JSON.stringify(v)}`);
  }
  if (problems.length > 0) throw new InvalidInputError(problems.join('; '));
}

