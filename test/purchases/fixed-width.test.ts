import assert from 'node:assert/strict';
import fs from 'node:fs';
import { test } from 'node:test';
import { InvalidFileError } from '../../src/core/errors.ts';
import { parseFixedWidthHeader, splitFixedWidthRow } from '../../src/formats/fixed-width.ts';
import { FIXTURE, rng } from './reference.ts';

const lines = fs.readFileSync(FIXTURE, 'utf8').split('\n');
const HEADER = lines[0]!;
const ROWS = lines.slice(1).filter((l) => l !== '');

const PURCHASE_COLUMNS = [
  'CPF',
  'PRIVATE',
  'INCOMPLETO',
  'DATA DA ÚLTIMA COMPRA',
  'TICKET MÉDIO',
  'TICKET DA ÚLTIMA COMPRA',
  'LOJA MAIS FREQUÊNTE',
  'LOJA DA ÚLTIMA COMPRA',
];

test('the real header needs a sample row: some names are separated by a single space', () => {
  const alone = parseFixedWidthHeader(HEADER);
  assert.deepEqual(alone.names, [
    'CPF',
    'PRIVATE',
    'INCOMPLETO',
    'DATA DA ÚLTIMA COMPRA TICKET MÉDIO',
    'TICKET DA ÚLTIMA COMPRA LOJA MAIS FREQUÊNTE LOJA DA ÚLTIMA COMPRA',
  ]);
  assert.deepEqual(alone.starts, [0, 19, 31, 43, 87]);
  const withRow = parseFixedWidthHeader(HEADER, ROWS[0]);
  assert.deepEqual(withRow.names, PURCHASE_COLUMNS);
  assert.deepEqual(withRow.starts, [0, 19, 31, 43, 65, 87, 111, 131]);
});

test('the columns follow the majority of the sample rows: one malformed row among them does not move them', () => {
  // The first row lacks its date: its later fields start 22 columns early.
  const bad = ROWS[0]!.replace(/^(.{43})\S+\s+/, '$1');
  assert.notDeepEqual(parseFixedWidthHeader(HEADER, bad).names, PURCHASE_COLUMNS, 'alone, it would shape the header');
  assert.deepEqual(parseFixedWidthHeader(HEADER, [bad, ...ROWS.slice(1, 20)]).names, PURCHASE_COLUMNS);
  assert.deepEqual(parseFixedWidthHeader(HEADER, [bad, ROWS[1]!, ROWS[2]!]).names, PURCHASE_COLUMNS);
  assert.deepEqual(parseFixedWidthHeader(HEADER, []).names, parseFixedWidthHeader(HEADER).names, 'no samples: gaps only');
});

test('any fixture row serves as the sample and gives the same columns', () => {
  for (const row of [ROWS[1]!, ROWS[500]!, ROWS[1999]!]) {
    assert.deepEqual(parseFixedWidthHeader(HEADER, row).names, PURCHASE_COLUMNS);
  }
});

test('header columns separated by 2+ spaces, tabs, a BOM and trailing blanks', () => {
  assert.deepEqual(parseFixedWidthHeader('NAME ONE    B  C D   '), { names: ['NAME ONE', 'B', 'C D'], starts: [0, 12, 15] });
  assert.deepEqual(parseFixedWidthHeader('  A  B'), { names: ['A', 'B'], starts: [2, 5] });
  assert.deepEqual(parseFixedWidthHeader('A\tB C\r'), { names: ['A', 'B C'], starts: [0, 2] });
  assert.deepEqual(parseFixedWidthHeader('\ufeffX  Y'), { names: ['X', 'Y'], starts: [0, 3] });
  // The sample row only adds boundaries where a header word starts.
  assert.deepEqual(parseFixedWidthHeader('AB CD EF', 'x  y  z'), { names: ['AB', 'CD', 'EF'], starts: [0, 3, 6] });
  assert.deepEqual(parseFixedWidthHeader('AB CD EF', 'x   y   '), { names: ['AB CD EF'], starts: [0] });
});

test('a header without names is an invalid file', () => {
  for (const h of ['', '   ', '\ufeff']) assert.throws(() => parseFixedWidthHeader(h), InvalidFileError);
});

test('rows split on whitespace runs; wrong field counts are errors', () => {
  assert.deepEqual(splitFixedWidthRow('  a  b\tc \r', 3), ['a', 'b', 'c']);
  assert.deepEqual(splitFixedWidthRow('a b', 3), { error: 'expected 3 fields, found 2' });
  assert.deepEqual(splitFixedWidthRow('a b c d', 3), { error: 'expected 3 fields, found 4' });
  assert.deepEqual(splitFixedWidthRow('', 8), { error: 'expected 8 fields, found 0' });
  assert.deepEqual(splitFixedWidthRow('   ', 8), { error: 'expected 8 fields, found 0' });
});

test('splitting agrees with trim().split(/\\s+/) on random lines with every kind of whitespace', () => {
  const next = rng(7);
  const alphabet = ['a', 'Z', '9', ',', '.', '-', 'É', 'ç', '🙂', ' ', ' ', '\t', '\r', '\n', '\v', '\f',
    '\u00a0', '\u1680', '\u2000', '\u200a', '\u200b', '\u2028', '\u2029', '\u202f', '\u205f', '\u3000', '\ufeff', '\u0085'];
  for (let k = 0; k < 5000; k++) {
    const len = Math.floor(next() * 30);
    let s = '';
    for (let i = 0; i < len; i++) s += alphabet[Math.floor(next() * alphabet.length)];
    const t = s.trim();
    const expected = t === '' ? [] : t.split(/\s+/);
    assert.deepEqual(splitFixedWidthRow(s, expected.length), expected, JSON.stringify(s));
  }
});

test('every row of the 2,000-row fixture splits into 8 fields that start at the header offsets', () => {
  assert.equal(ROWS.length, 2000);
  const { starts } = parseFixedWidthHeader(HEADER, ROWS[0]);
  for (const [i, row] of ROWS.entries()) {
    const f = splitFixedWidthRow(row, 8);
    assert.ok(Array.isArray(f), `row ${i + 2}: ${JSON.stringify(f)}`);
    const byOffset = starts.map((s, k) => row.slice(s, starts[k + 1]).trim());
    assert.deepEqual(f, byOffset, `row ${i + 2}`);
  }
});
