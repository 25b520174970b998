/** Real Sluice processes for tests: spawn `bin/sluice`, wait for a line, kill, clean up. */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { repoRoot } from '../../src/config.ts';
import type { TestDb } from './db.ts';

export interface Proc {
  child: ChildProcess;
  output(): string;
  /** Resolves when stdout+stderr matches `re` (rejects after `ms`). */
  waitFor(re: RegExp, ms?: number): Promise<void>;
  kill(signal?: NodeJS.Signals): Promise<void>;
}

const running = new Set<ChildProcess>();

export function startSluice(args: string[], env: Record<string, string>): Proc {
  const child = spawn(path.join(repoRoot, 'bin', 'sluice'), args, {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  running.add(child);
  child.on('exit', () => running.delete(child));
  let out = '';
  const waiters: Array<() => void> = [];
  const onData = (d: Buffer) => {
    out += d.toString();
    for (const w of waiters.splice(0)) w();
  };
  child.stdout!.on('data', onData);
  child.stderr!.on('data', onData);
  return {
    child,
    output: () => out,
    waitFor(re, ms = 60_000) {
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`timed out waiting for ${re}; output:\n${out}`)), ms);
        const check = () => {
          if (re.test(out)) {
            clearTimeout(timer);
            resolve();
          } else if (child.exitCode !== null) {
            clearTimeout(timer);
            reject(new Error(`process exited (${child.exitCode}) before ${re}; output:\n${out}`));
          } else waiters.push(check);
        };
        child.once('exit', () => {
          for (const w of waiters.splice(0)) w();
        });
        check();
      });
    },
    kill(signal: NodeJS.Signals = 'SIGTERM') {
      return new Promise((resolve) => {
        if (child.exitCode !== null || child.signalCode !== null) return resolve();
        child.once('exit', () => resolve());
        child.kill(signal);
      });
    },
  };
}

/** Kills every process started by startSluice that is still alive (call from `after`). */
export async function killAll(): Promise<void> {
  await Promise.all([...running].map((c) => new Promise<void>((resolve) => {
    c.once('exit', () => resolve());
    c.kill('SIGKILL');
  })));
}

/** Polls `fn` until it returns a truthy value (no fixed sleeps in tests: a deadline). */
export async function until<T>(fn: () => Promise<T | undefined | false | null>, what: string, ms = 60_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * Waits for a `sluice import --json` process to exit: its exit code and the outcome it
 * printed last.
 */
export async function importOutcome(p: Proc): Promise<{ code: number | null; out: { status: string; error: string } & Record<string, unknown> }> {
  const code = await new Promise<number | null>((r) => (p.child.exitCode !== null ? r(p.child.exitCode) : p.child.once('exit', r)));
  const last = p.output().trim().split('\n').pop()!;
  let out: { status: string; error: string } & Record<string, unknown>;
  try {
    out = JSON.parse(last);
  } catch {
    throw new Error(`exit ${code}, no JSON outcome: ${p.output()}`);
  }
  return { code, out };
}

/**
 * `sluice import --json` of `file` (chunks of 1,000 rows) held once its first chunk is
 * prepared, before that chunk is written (SLUICE_FAULT_PAUSE_APPLY_FILE at `pause`): then
 * `meanwhile` runs (a writer outside Sluice), `snapshot` is taken, and the import goes on.
 * Returns its outcome and that snapshot.
 */
export async function importHeldBeforeWrite<T>(o: {
  db: TestDb;
  file: string;
  pipeline: string;
  pause: string;
  meanwhile: () => Promise<unknown>;
  snapshot: () => Promise<T>;
}): Promise<{ code: number | null; out: { status: string; error: string }; before: T }> {
  fs.writeFileSync(o.pause, '');
  try {
    const p = startSluice(['import', o.file, '--pipeline', o.pipeline, '--json', '--no-progress'], {
      DATABASE_URL: o.db.url, SLUICE_CHUNK_ROWS: '1000', SLUICE_FAULT_PAUSE_APPLY_FILE: o.pause,
    });
    // The first chunk is prepared (its table exists); its write waits on the pause file.
    await until(async () => {
      if (p.child.exitCode !== null) throw new Error(`the import ended before the pause: ${p.output()}`);
      const { rowCount } = await o.db.pool.query(`SELECT 1 FROM pg_class WHERE relname LIKE 'sluice\\_stage\\_%\\_m0'`);
      return rowCount === 1;
    }, 'a prepared chunk');
    await o.meanwhile();
    const before = await o.snapshot();
    fs.rmSync(o.pause);
    return { ...(await importOutcome(p)), before };
  } finally {
    fs.rmSync(o.pause, { force: true });
  }
}

/** `p`, or a failure naming `what` when it has not settled within `ms` (a bounded wait, not a sleep). */
export function withDeadline<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no ${what} within ${ms} ms`)), ms);
  });
  return Promise.race([p, deadline]).finally(() => clearTimeout(timer));
}
