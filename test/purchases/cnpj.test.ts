import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isValidCnpj } from '../../src/validate/cnpj.ts';
import { cnpjWithCheckDigits, mutations, randomCnpj, rng } from './reference.ts';

test('known valid CNPJs', () => {
  for (const cnpj of ['11444777000161', '79379491000183', '79379491000850', '11222333000181']) {
    assert.equal(isValidCnpj(cnpj), true, cnpj);
  }
});

test('the reference generator agrees with the textbook example 11.444.777/0001-61', () => {
  assert.equal(cnpjWithCheckDigits([1, 1, 4, 4, 4, 7, 7, 7, 0, 0, 0, 1]), '11444777000161');
});

test('2,000 generated CNPJs are valid and any other check digit makes them invalid', () => {
  const next = rng(14);
  for (let k = 0; k < 2000; k++) {
    const cnpj = randomCnpj(next);
    assert.equal(isValidCnpj(cnpj), true, cnpj);
    for (const bad of [...mutations(cnpj, 12), ...mutations(cnpj, 13)]) assert.equal(isValidCnpj(bad), false, bad);
  }
});

test('a CNPJ of one repeated digit is invalid', () => {
  for (let d = 0; d <= 9; d++) assert.equal(isValidCnpj(String(d).repeat(14)), false, String(d));
});

test('wrong lengths and non-digits are invalid', () => {
  for (const s of ['', '1144477700016', '114447770001611', '11.444.777/0001-61', '1144477700016a', '11144477735']) {
    assert.equal(isValidCnpj(s), false, JSON.stringify(s));
  }
});

/** An independent check-digit computation for an alphanumeric CNPJ base (IN RFB 2.229/2024). */
function alphanumericCnpj(base: string): string {
  const values = [...base].map((c) => c.charCodeAt(0) - 48);
  const dv = (weights: number[], vs: number[]) => {
    const r = vs.reduce((sum, v, i) => sum + v * weights[i]!, 0) % 11;
    return r < 2 ? 0 : 11 - r;
  };
  const d1 = dv([5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2], values);
  const d2 = dv([6, 5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2], [...values, d1]);
  return `${base}${d1}${d2}`;
}

test('alphanumeric CNPJs (issued since July 2026): letters weigh their code minus 48; the check digits stay digits', () => {
  assert.equal(alphanumericCnpj('12ABC34501DE'), '12ABC34501DE35', "the Receita Federal's example 12.ABC.345/01DE-35");
  assert.equal(isValidCnpj('12ABC34501DE35'), true);
  const next = rng(26);
  const chars = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ';
  for (let k = 0; k < 2000; k++) {
    const cnpj = alphanumericCnpj(Array.from({ length: 12 }, () => chars[Math.floor(next() * chars.length)]!).join(''));
    assert.equal(isValidCnpj(cnpj), true, cnpj);
    for (const bad of [...mutations(cnpj, 12), ...mutations(cnpj, 13)]) assert.equal(isValidCnpj(bad), false, bad);
  }
  for (const s of ['12abc34501de35', '12ABC34501DE3A', '12ABC34501D-35', '12ÁBC34501DE35']) assert.equal(isValidCnpj(s), false, s);
});
