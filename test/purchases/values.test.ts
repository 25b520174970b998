import assert from 'node:assert/strict';
import fs from 'node:fs';
import { test } from 'node:test';
import { splitFixedWidthRow } from '../../src/formats/fixed-width.ts';
import { isValueError, parseBit, parseDecimalComma, parseIsoDate, parseRatio } from '../../src/validate/values.ts';
import { FIXTURE } from './reference.ts';

test('parseDecimalComma: plain and grouped Brazilian decimals', () => {
  const cases: [string, string][] = [
    ['399,00', '399.00'],
    ['0,5', '0.5'],
    ['1969,91', '1969.91'],
    ['399', '399'],
    ['-12,30', '-12.30'],
    ['1.234,56', '1234.56'],
    ['12.345.678,90', '12345678.90'],
    ['-1.000,00', '-1000.00'],
  ];
  for (const [input, expected] of cases) assert.equal(parseDecimalComma(input), expected, input);
  assert.equal(parseDecimalComma('NULL'), null);
});

test('parseDecimalComma: malformed numbers are errors naming the value', () => {
  for (const s of ['', '-', ',50', '399,', '1.234', '1.234,5', '1.234,567', '12.34,56', '1234.567,89', '1,234.56',
    '399.00', '1..234,56', '.234,56', '1.234.,56', '3 99', '+5', 'NaN', 'null', '1,2,3', '1e3', '12,3a']) {
    assert.deepEqual(parseDecimalComma(s), { error: `malformed number: ${s}` }, JSON.stringify(s));
  }
  const long = '9'.repeat(50) + 'x';
  assert.deepEqual(parseDecimalComma(long), { error: `malformed number: ${'9'.repeat(40)}…` });
});

test('parseIsoDate: real dates, leap years, NULL', () => {
  for (const s of ['2010-01-13', '2020-02-29', '2000-02-29', '2021-12-31', '0001-01-01', '9999-12-31']) {
    assert.equal(parseIsoDate(s), s);
  }
  assert.equal(parseIsoDate('NULL'), null);
});

test('parseIsoDate: impossible and malformed dates', () => {
  for (const s of ['2021-02-30', '2021-02-29', '1900-02-29', '2021-04-31', '2021-13-01', '2021-00-10', '2021-01-00', '0000-01-01']) {
    assert.deepEqual(parseIsoDate(s), { error: `impossible date: ${s}` }, s);
  }
  for (const s of ['', '2021-1-01', '20210101', '2021/01/01', '2021-01-01T00:00', ' 2021-01-01', '2021-0a-01', '13/01/2010']) {
    assert.deepEqual(parseIsoDate(s), { error: `malformed date: ${s}` }, JSON.stringify(s));
  }
});

test('parseIsoDate agrees with the UTC calendar on every day-of-month of 1896-2104', () => {
  for (let y = 1896; y <= 2104; y++) {
    for (let m = 1; m <= 12; m++) {
      for (let d = 1; d <= 31; d++) {
        const s = `${y}-${String(m).padStart(2, '0')}-${String(d).padStart(2, '0')}`;
        const real = new Date(Date.UTC(y, m - 1, d)).getUTCDate() === d;
        assert.equal(parseIsoDate(s) === s, real, s);
      }
    }
  }
});

test('parseBit', () => {
  assert.equal(parseBit('0'), false);
  assert.equal(parseBit('1'), true);
  assert.equal(parseBit('NULL'), null);
  for (const s of ['', '2', '00', 'true', 'null', ' 1']) assert.deepEqual(parseBit(s), { error: `malformed bit: ${s}` });
});

test('isValueError narrows results', () => {
  assert.equal(isValueError(parseBit('x')), true);
  assert.equal(isValueError(parseBit('1')), false);
  assert.equal(isValueError(parseDecimalComma('NULL')), false);
  assert.equal(isValueError('1.00'), false);
});

test('every value in the 2,000-row fixture parses', () => {
  const rows = fs.readFileSync(FIXTURE, 'utf8').split('\n').slice(1).filter((l) => l !== '');
  for (const [i, row] of rows.entries()) {
    const f = splitFixedWidthRow(row, 8);
    assert.ok(Array.isArray(f));
    const parsed = [parseBit(f[1]!), parseBit(f[2]!), parseIsoDate(f[3]!), parseDecimalComma(f[4]!), parseDecimalComma(f[5]!)];
    for (const v of parsed) assert.equal(isValueError(v), false, `row ${i + 2}: ${JSON.stringify(v)}`);
    if (f[4] !== 'NULL') assert.equal(parseDecimalComma(f[4]!), f[4]!.replace(',', '.'));
  }
});

test('tickets (purchases): rounded half away from zero to cents; at most 12 digits before the comma', async () => {
  const { money } = await import('../../src/pipelines/purchases.ts');
  const cases: Array<[string, unknown]> = [
    ['399,00', '399.00'], ['1,999', '2.00'], ['1,994', '1.99'], ['0,005', '0.01'], ['-0,005', '-0.01'], ['-0,004', '0.00'],
    ['-5,00', '-5.00'], ['1.234,56', '1234.56'], ['12', '12'], ['NULL', null],
    ['999999999999,99', '999999999999.99'], ['999999999999,994', '999999999999.99'],
  ];
  for (const [input, want] of cases) assert.deepEqual(money(input), want, input);
  for (const input of ['999999999999,995', '1000000000000', '123456789012345,00']) {
    assert.deepEqual(money(input), { error: `out of range (at most 12 digits before the comma): ${JSON.stringify(input)}` }, input);
  }
  assert.match((money('1,2,3') as { error: string }).error, /^malformed number/);
});

test('parseRatio: a decimal from 0 to 1, the rule of --max-reject-ratio and max_reject_ratio=', () => {
  for (const [text, n] of [['0', 0], ['1', 1], ['.5', 0.5], ['0.05', 0.05], ['1.0', 1]] as const) assert.equal(parseRatio(text), n, text);
  // '' was 0 and 1e-1 was 0.1 on the command line (Number()), refused over HTTP.
  for (const bad of ['', ' ', '1e-1', '-0', '1.01', '2', 'abc', '0x1']) assert.equal(parseRatio(bad), undefined, JSON.stringify(bad));
});
