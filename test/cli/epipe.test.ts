/**
 * The CLI whose output has no reader any more (`sluice inspect f | head -1`): it exits
 * quietly with its own exit code, not with an unhandled EPIPE stack trace.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { test } from 'node:test';
import { repoRoot } from '../../src/config.ts';
import { NO_DATABASE } from './exit.ts';

const FIXED = path.join(repoRoot, 'test', 'fixtures', 'neoway', 'base_teste_2000.txt');

/**
 * Runs bin/sluice; `close` says when the test closes its end of the child's stdout or
 * stderr: 'start' (before the child writes), 'first-line' (after reading one line, as
 * `head -1`). Resolves with the exit code and what arrived on the other stream.
 */
function run(args: string[], closed: 'stdout' | 'stderr', when: 'start' | 'first-line'): Promise<{ code: number | null; signal: string | null; other: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(path.join(repoRoot, 'bin', 'sluice'), args, { env: { ...process.env, DATABASE_URL: NO_DATABASE }, stdio: ['ignore', 'pipe', 'pipe'] });
    const gone = closed === 'stdout' ? child.stdout : child.stderr;
    const kept = closed === 'stdout' ? child.stderr : child.stdout;
    let other = '';
    kept.on('data', (d: Buffer) => (other += d.toString()));
    if (when === 'start') gone.destroy();
    else {
      let seen = '';
      gone.on('data', (d: Buffer) => {
        seen += d.toString();
        if (seen.includes('\n')) gone.destroy();
      });
    }
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`still running after 30 s: ${other}`));
    }, 30_000);
    child.on('error', reject);
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, other });
    });
  });
}

test('inspect | head -1: exit 0, nothing on stderr', async () => {
  const args = ['inspect', FIXED, '--format', 'fixed-width', '--rows', '2000'];
  for (const when of ['start', 'first-line'] as const) {
    const r = await run(args, 'stdout', when);
    assert.deepEqual(r, { code: 0, signal: null, other: '' }, when);
  }
  // Any command: the help.
  const help = await run(['--help'], 'stdout', 'start');
  assert.deepEqual(help, { code: 0, signal: null, other: '' });
});

test('stderr closed: the command keeps its exit code (2 for bad usage), and its stdout', async () => {
  const bad = await run(['inspect', path.join(repoRoot, 'no-such-file.csv')], 'stderr', 'start');
  assert.deepEqual(bad, { code: 2, signal: null, other: '' });
  const ok = await run(['inspect', FIXED, '--format', 'fixed-width', '--rows', '1', '--json'], 'stderr', 'start');
  assert.equal(ok.code, 0);
  assert.equal(JSON.parse(ok.other).rows.length, 1);
});
