/** Waiting for a CLI process (startSluice) to exit, with a deadline. */
import type { Proc } from '../helpers/processes.ts';

/** Unreachable: a command that opened the database before its checks fails on it (exit 1). */
export const NO_DATABASE = 'postgres://sluice:x@127.0.0.1:1/none';

/** Resolves with the process's exit code. */
export function exited(p: Proc): Promise<number | null> {
  return new Promise((resolve) => {
    if (p.child.exitCode !== null) return resolve(p.child.exitCode);
    p.child.once('exit', (code) => resolve(code));
  });
}

/**
 * Like `exited`, but a process still alive after `ms` fails the test (call killAll in
 * `after`): for the defects where a process never exits.
 */
export function exitedWithin(p: Proc, ms: number): Promise<number | null> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`still running after ${ms} ms; output:\n${p.output()}`)), ms);
  });
  return Promise.race([exited(p), deadline]).finally(() => clearTimeout(timer));
}
