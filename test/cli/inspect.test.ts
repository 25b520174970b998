/**
 * `sluice inspect` as a subprocess: a path that is not a readable file is refused like
 * `sluice import` refuses it (exit 2, the same message), the text output of a
 * fixed-width file says it has no delimiter, a whitespace-aligned export is detected as
 * fixed-width without --format, and --encoding reads a file not UTF-8 past its start.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { looksFixedWidth } from '../../src/cli/commands/inspect.ts';
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

test('inspect without --format detects a whitespace-aligned export (the purchases file) as fixed-width', async () => {
  const file = path.join(repoRoot, 'test', 'fixtures', 'neoway', 'base_teste_2000.txt');
  const json = await run(['inspect', file, '--rows', '1', '--json']);
  assert.equal(json.code, 0, json.output);
  assert.deepEqual(JSON.parse(json.output), {
    format: 'fixed-width',
    delimiter: null,
    encoding: 'utf-8',
    header: ['CPF', 'PRIVATE', 'INCOMPLETO', 'DATA DA ÚLTIMA COMPRA', 'TICKET MÉDIO', 'TICKET DA ÚLTIMA COMPRA', 'LOJA MAIS FREQUÊNTE', 'LOJA DA ÚLTIMA COMPRA'],
    rows: [['041.091.641-25', '0', '0', 'NULL', 'NULL', 'NULL', 'NULL', 'NULL']],
  });
  const text = await run(['inspect', file, '--rows', '0']);
  assert.equal(text.code, 0, text.output);
  assert.match(text.output, /^format: fixed-width \(detected: whitespace-aligned columns; --format csv reads it as CSV\)$/m);
  assert.match(text.output, /^header \(8\): CPF \| PRIVATE/m);
  // --format still decides.
  const csv = await run(['inspect', file, '--rows', '0', '--format', 'csv']);
  assert.match(csv.output, /^format: csv \(as given\)$/m);

  // CSVs stay CSVs, one column of names with spaces included.
  const names = path.join(dir, 'names.csv');
  fs.writeFileSync(names, 'Full Name\nAna Silva\nJoão Souza\nRui Costa\n');
  const one = await run(['inspect', names, '--json']);
  assert.equal(one.code, 0, one.output);
  assert.deepEqual(JSON.parse(one.output), { format: 'csv', delimiter: ',', encoding: 'utf-8', header: ['Full Name'], rows: [['Ana Silva'], ['João Souza'], ['Rui Costa']] });
  const plain = await run(['inspect', names]);
  assert.match(plain.output, /^format: csv \(detected; --format fixed-width reads whitespace-aligned exports\)$/m);
});

test('looksFixedWidth: aligned columns with no delimiter on every line, the header naming as many columns as the rows have', () => {
  const aligned = 'CPF             TICKET MÉDIO  LOJA\n041.091.641-25  335,38        NULL\n058.189.421-98  NULL          12\n';
  assert.equal(looksFixedWidth(aligned), true);
  assert.equal(looksFixedWidth(aligned.replace(/\n/g, '\r\n')), true);
  // One data row is not enough to tell; a row with a field less is not aligned.
  assert.equal(looksFixedWidth(aligned.split('\n').slice(0, 2).join('\n')), false);
  assert.equal(looksFixedWidth(`${aligned}999.999.999-99  12\n`), false);
  // CSVs: a delimiter on every line (spaces in the values or not), one column with spaces.
  assert.equal(looksFixedWidth('Email,Name\na@x.com,Ana Silva\nb@x.com,Rui Costa\n'), false);
  assert.equal(looksFixedWidth('a b;c d\n1 2;3 4\n5 6;7 8\n'), false);
  assert.equal(looksFixedWidth('Full Name\nAna Silva\nRui Costa\n'), false);
  // One column of names with spaces whose first words line up, and a ragged CSV (a review found both read as fixed-width).
  assert.equal(looksFixedWidth('Full Name\nJohn Smith\nMary Jones\nPaul Brown\nAnna Davis\n'), false);
  assert.equal(looksFixedWidth('Nome Completo\nJoao Silva\nRita Souza\nLuis Gomes\n'), false);
  assert.equal(looksFixedWidth('Full Name,Home City,State\nJohn Smith,Porto Alegre,RS\nMary Jones,Natal\nPaul Brown,Belo Horizonte,MG\n'), false);
  assert.equal(looksFixedWidth('Email\na@x.com\nb@x.com\n'), false);
  // Quoted commas in some rows only (no delimiter on every line), the header one word.
  assert.equal(looksFixedWidth('Email,Name\na@x.com,"Silva, Ana"\nb@x.com,"Costa, Rui"\n'), false);
});

test('inspect --encoding: a Latin-1 file whose first accent lies past 64 KiB, read as windows-1252', async () => {
  const rows = Array.from({ length: 2500 }, (_, i) => `enc${i}@example.com,Ana ${i}`);
  const file = path.join(dir, 'late-latin1.csv');
  fs.writeFileSync(file, Buffer.from(`Email,Name\n${rows.join('\n')}\nenc-joao@example.com,João\n`, 'latin1'));
  const detected = await run(['inspect', file, '--rows', '3000', '--json']);
  assert.equal(detected.code, 1, detected.output);
  assert.match(detected.output, /invalid UTF-8 at byte offset \d+/);
  const forced = await run(['inspect', file, '--rows', '3000', '--json', '--encoding', 'Latin1']);
  assert.equal(forced.code, 0, forced.output);
  const out = JSON.parse(forced.output);
  assert.equal(out.encoding, 'windows-1252');
  assert.deepEqual(out.rows.at(-1), ['enc-joao@example.com', 'João']);
  const text = await run(['inspect', file, '--rows', '0', '--encoding', 'cp1252']);
  assert.match(text.output, /^encoding: windows-1252 \(as given\)$/m);
  // The labels import takes, the same refusals.
  const bad = await run(['inspect', file, '--encoding', 'ebcdic']);
  assert.equal(bad.code, 2, bad.output);
  assert.match(bad.output, /--encoding must be utf-8 or windows-1252 \(or a label of either: latin1, iso-8859-1, cp1252\.\.\.\), got ebcdic/);
  const latin = path.join(dir, 'latin1.csv');
  fs.writeFileSync(latin, Buffer.from('Email,Name\njoao@example.com,João\n', 'latin1'));
  const contradicted = await run(['inspect', latin, '--encoding', 'utf-8']);
  assert.equal(contradicted.code, 1, contradicted.output);
  assert.match(contradicted.output, /invalid file: it was given --encoding utf-8, but its first bytes are not valid UTF-8; save the file as UTF-8, or run it with --encoding windows-1252/);
});
