import assert from 'node:assert/strict';
import { test } from 'node:test';
import { digitsOnly, sanitizeText } from '../../src/validate/sanitize.ts';

test('upper case, accents removed, whitespace trimmed and collapsed', () => {
  const cases: [string, string][] = [
    ['São  Paulo ', 'SAO PAULO'],
    ['são paulo', 'SAO PAULO'],
    ['SAO PAULO', 'SAO PAULO'],
    ['açúcar', 'ACUCAR'],
    ['Ç ç', 'C C'],
    ['Ávila Ênio Ícaro Ômega Úrsula Ãna Õ À Ñ ü', 'AVILA ENIO ICARO OMEGA URSULA ANA O A N U'],
    ['LOJA MAIS FREQUÊNTE', 'LOJA MAIS FREQUENTE'],
    ['\t rua\n\n das\u00a0 flores \r\n', 'RUA DAS FLORES'],
    ['a\u2003b\u3000c', 'A B C'],
    ['', ''],
    ['   \t\n', ''],
    ['x', 'X'],
  ];
  for (const [input, expected] of cases) assert.equal(sanitizeText(input), expected, JSON.stringify(input));
});

test('already decomposed input (NFD) loses its marks too', () => {
  assert.equal(sanitizeText('Sa\u0303o Jose\u0301'), 'SAO JOSE');
});

test('upper-casing that produces a combining mark is still stripped', () => {
  // U+01F0 upper-cases to J + U+030C.
  assert.equal(sanitizeText('\u01f0'), 'J');
});

test('letters without a decomposition are kept; ß becomes SS by upper-casing', () => {
  assert.equal(sanitizeText('Øresund'), 'ØRESUND');
  assert.equal(sanitizeText('straße'), 'STRASSE');
});

test('only U+0300–U+036F is stripped: other scripts are recomposed, not damaged', () => {
  assert.equal(sanitizeText('한국'), '한국');
});

test('is idempotent', () => {
  for (const s of ['São  Paulo ', 'açúcar', '\u01f0x', ' a  b ']) assert.equal(sanitizeText(sanitizeText(s)), sanitizeText(s));
});

test('digitsOnly keeps ASCII digits only', () => {
  assert.equal(digitsOnly('123.456.789-09'), '12345678909');
  assert.equal(digitsOnly('12.345.678/0001-95'), '12345678000195');
  assert.equal(digitsOnly('12345678909'), '12345678909');
  assert.equal(digitsOnly('abc'), '');
  assert.equal(digitsOnly(''), '');
  assert.equal(digitsOnly('a1b2c3'), '123');
  assert.equal(digitsOnly('1 2 3 '), '123');
  assert.equal(digitsOnly('１２３'), ''); // full-width digits are not ASCII digits
});
