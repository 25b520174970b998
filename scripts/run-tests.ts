/**
 * Runs every test file (test/**\/*.test.ts), or those whose path contains the argument, with
 * Node's test runner against real Postgres: SLUICE_TEST_DATABASE_URL when set, else an
 * embedded server under SLUICE_TEST_HOME (default .sluice-test) that this script starts
 * first and stops at the end.
 *
 * The shell's DATABASE_URL and SLUICE_HOME are NOT used: tests create and drop databases
 * (sluice_tmpl_*, sluice_test_*, kept when a file fails), which must not land on a server or
 * in a cluster someone exported for real work. Running them there takes asking by name.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { env, repoRoot } from '../src/config.ts';
import { embeddedRunning, ensureEmbedded, stopEmbedded } from '../src/db/embedded.ts';

for (const [name, instead] of [['DATABASE_URL', 'SLUICE_TEST_DATABASE_URL'], ['SLUICE_HOME', 'SLUICE_TEST_HOME']] as const) {
  if (env(name) && env(name) !== env(instead)) process.stderr.write(`run-tests: ${name} is ignored (tests create and drop databases); ${instead} names the tests' own\n`);
  delete process.env[name];
}
const url = env('SLUICE_TEST_DATABASE_URL');
if (url) process.env.DATABASE_URL = url;
process.env.SLUICE_HOME = env('SLUICE_TEST_HOME') ?? path.join(repoRoot, '.sluice-test');

const files = fs
  .globSync('test/**/*.test.ts', { cwd: repoRoot })
  .filter((f) => !process.argv[2] || f.includes(process.argv[2]))
  .sort();
if (files.length === 0) {
  process.stderr.write(`run-tests: no test file's path contains ${JSON.stringify(process.argv[2])}\n`);
  process.exit(2);
}
// Stop the server at the end only if this run started it (another run may be using it).
const embedded = !url && !embeddedRunning(process.env.SLUICE_HOME);
if (!url) await ensureEmbedded(process.env.SLUICE_HOME);

const r = spawnSync(
  process.execPath,
  ['--test', `--test-concurrency=${env('SLUICE_TEST_CONCURRENCY') ?? '3'}`, '--test-timeout=300000', ...files],
  { cwd: repoRoot, stdio: 'inherit', env: process.env },
);
if (embedded && !env('SLUICE_KEEP_TEST_DB')) stopEmbedded(process.env.SLUICE_HOME);
process.exit(r.status ?? 1);
