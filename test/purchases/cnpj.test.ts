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
