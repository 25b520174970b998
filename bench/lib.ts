/** Helpers shared by the benchmark scripts. */
import fs from 'node:fs';
import pg from 'pg';
import { withDatabase } from '../src/db/pool.ts';

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

export async function admin<T>(url: string, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end();
  }
}

export async function dropDatabase(server: string, name: string): Promise<void> {
  await admin(withDatabase(server, 'postgres'), (c) => c.query(`DROP DATABASE IF EXISTS ${c.escapeIdentifier(name)} WITH (FORCE)`));
}

/** An identical copy of `template` (file-level copy: fast for big bases). */
export async function cloneDatabase(server: string, template: string, name: string): Promise<void> {
  await dropDatabase(server, name);
  await admin(withDatabase(server, 'postgres'), (c) =>
    c.query(`CREATE DATABASE ${c.escapeIdentifier(name)} TEMPLATE ${c.escapeIdentifier(template)} STRATEGY file_copy`),
  );
}

/** The fields of a /proc/<pid>/stat line after "(comm)": state is [0], utime [11], stime [12], cutime [13], cstime [14]. */
export function statFields(stat: string): string[] {
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
}

/** CPU milliseconds (user + system) a process has used, from /proc (USER_HZ = 100); undefined when gone or without /proc. */
export function procCpuMs(pid: number): number | undefined {
  try {
    const f = statFields(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'));
    return (Number(f[11]) + Number(f[12])) * 10;
  } catch {
    return undefined;
  }
}
