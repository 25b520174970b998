/**
 * Runs `sluice serve` as a child process on a free loopback port, for the load test, the
 * benchmark and the tests (a separate process: its own core, and it can be killed -9).
 * Ready when it prints "sluice: listening on <url>".
 */
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { repoRoot } from '../config.ts';

export interface ServeProcess {
  url: string;
  child: ChildProcess;
  /** Output so far (stdout and stderr), for error reports. */
  output(): string;
  /** SIGTERM (graceful: flushes what it took) and wait for the exit. */
  stop(): Promise<void>;
  /** SIGKILL: no flush, no goodbye. */
  kill(): Promise<void>;
}

export interface ServeOptions {
  /** Environment on top of this process's (DATABASE_URL, SLUICE_VISITS_FLUSH_MS...). */
  env?: Record<string, string | undefined>;
  /** Give up waiting for "listening" after this long (default 60 s). */
  startTimeoutMs?: number;
}

export async function startServe(options: ServeOptions = {}): Promise<ServeProcess> {
  const child = spawn(path.join(repoRoot, 'bin', 'sluice'), ['serve', '--port', '0', '--host', '127.0.0.1'], {
    cwd: repoRoot,
    env: { ...process.env, ...options.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`sluice serve did not start in time:\n${out}`)), options.startTimeoutMs ?? 60_000);
    const onData = (chunk: Buffer) => {
      out += chunk.toString('utf8');
      const m = /sluice: listening on (http:\/\/\S+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]!);
      }
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`sluice serve exited (${code ?? signal}) before listening:\n${out}`));
    });
  });
  const signalAndWait = async (signal: NodeJS.Signals) => {
    if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    await exited;
  };
  return {
    url,
    child,
    output: () => out,
    stop: () => signalAndWait('SIGTERM'),
    kill: () => signalAndWait('SIGKILL'),
  };
}
