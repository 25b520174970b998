/**
 * Configuration from the environment, read in one place. Secrets (DATABASE_URL's password,
 * SLUICE_API_TOKEN, PIPEDRIVE_API_TOKEN) are read here and never logged.
 */
import path from 'node:path';
import { fileURLToPath } from 'node:url';

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

export function intEnv(name: string, fallback: number): number {
  const v = env(name);
  if (v === undefined) return fallback;
  const n = Number(v);
  if (!Number.isFinite(n)) throw new Error(`${name} must be a number, got ${JSON.stringify(v)}`);
  return n;
}

/** Replaces the password of a connection URL, for messages and logs. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return '<unparseable url>';
  }
}
