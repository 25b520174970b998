/**
 * Runs every test file (test/**\/*.test.ts) with Node's test runner against real Postgres:
 * DATABASE_URL when set, else an embedded server under .sluice-test that this script
 * starts first and stops at the end.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { env, repoRoot } from '../src/config.ts';
import { embeddedRunning, ensureEmbedded, stopEmbedded } from '../src/db/embedded.ts';

const home = path.join(repoRoot, '.sluice-test');
process.env.SLUICE_HOME ??= home;
// Stop the server at the end only if this run started it (another run may be using it).
const embedded = !env('DATABASE_URL') && !embeddedRunning(process.env.SLUICE_HOME);
if (!env('DATABASE_URL')) await ensureEmbedded(process.env.SLUICE_HOME);

const files = fs
  .globSync('test/**/*.test.ts', { cwd: repoRoot })
  .filter((f) => !process.argv[2] || f.includes(process.argv[2]))
  .sort();
const r = spawnSync(
  process.execPath,
  ['--test', `--test-concurrency=${env('SLUICE_TEST_CONCURRENCY') ?? '3'}`, '--test-timeout=300000', ...files],
  { cwd: repoRoot, stdio: 'inherit', env: process.env },
);
if (embedded && !env('SLUICE_KEEP_TEST_DB')) stopEmbedded(process.env.SLUICE_HOME);
process.exit(r.status ?? 1);
