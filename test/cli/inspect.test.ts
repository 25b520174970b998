/**
 * `sluice inspect` as a subprocess: a path that is not a readable file is refused like
 * `sluice import` refuses it (exit 2, the same message), and the text output of a
 * fixed-width file says it has no delimiter.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { repoRoot } from '../../src/config.ts';
import { killAll, startSluice } from '../helpers/processes.ts';
import { NO_DATABASE, exitedWithin } from './exit.ts';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-inspect-'));
after(async () => {
  await killAll();
  fs.rmSync(dir, { recursive: true, force: true });
});

async function run(args: string[]): Promise<{ code: number | null; output: string }> {
  // inspect never needs the database: an unreachable one shows it is not opened.
  const p = startSluice(args, { DATABASE_URL: NO_DATABASE });
  const code = await exitedWithin(p, 30_000);
  return { code, output: p.output() };
}

test('inspect of a missing file or a directory: exit 2 with the message import gives', async () => {
  const missing = path.join(dir, 'nope.csv');
  const inspect = await run(['inspect', missing]);
  assert.equal(inspect.code, 2, inspect.output);
  assert.match(inspect.output, /cannot read ".*nope\.csv": no such file/);
  assert.doesNotMatch(inspect.output, /ENOENT/);
  const imp = await run(['import', missing, '--pipeline', 'leads']);
  assert.equal(imp.code, 2, imp.output);
  assert.equal(inspect.output, imp.output);

  const folder = await run(['inspect', dir]);
  assert.equal(folder.code, 2, folder.output);
  assert.match(folder.output, /is not a file \(a directory\)/);
});

test('inspect --format fixed-width says there is no delimiter (text) / null (JSON)', async () => {
  const file = path.join(repoRoot, 'test', 'fixtures', 'neoway', 'base_teste_2000.txt');
  const text = await run(['inspect', file, '--format', 'fixed-width', '--rows', '1']);
  assert.equal(text.code, 0, text.output);
  assert.match(text.output, /^delimiter: none \(fixed-width\)$/m);
  const json = await run(['inspect', file, '--format', 'fixed-width', '--rows', '1', '--json']);
  assert.equal(json.code, 0, json.output);
  assert.equal(JSON.parse(json.output).delimiter, null);

  const csv = path.join(dir, 'tabs.csv');
  fs.writeFileSync(csv, 'a\tb\n1\t2\n');
  const tab = await run(['inspect', csv]);
  assert.equal(tab.code, 0, tab.output);
  assert.match(tab.output, /^delimiter: tab$/m);
});
