import assert from 'node:assert/strict';
import { test } from 'node:test';
import { isValidCpf } from '../../src/validate/cpf.ts';
import { cpfWithCheckDigits, mutations, randomCpf, rng } from './reference.ts';

test('known valid CPFs', () => {
  for (const cpf of ['11144477735', '04109164125', '86631560900', '52998224725', '00000000191']) {
    assert.equal(isValidCpf(cpf), true, cpf);
  }
});

test('the reference generator agrees with the textbook example 111.444.777-35', () => {
  assert.equal(cpfWithCheckDigits([1, 1, 1, 4, 4, 4, 7, 7, 7]), '11144477735');
});

test('2,000 generated CPFs are valid and any other check digit makes them invalid', () => {
  const next = rng(11);
  for (let k = 0; k < 2000; k++) {
    const cpf = randomCpf(next);
    assert.equal(isValidCpf(cpf), true, cpf);
    for (const bad of [...mutations(cpf, 9), ...mutations(cpf, 10)]) assert.equal(isValidCpf(bad), false, bad);
  }
});

test('a CPF of one repeated digit is invalid although its check digits compute', () => {
  for (let d = 0; d <= 9; d++) assert.equal(isValidCpf(String(d).repeat(11)), false, String(d));
});

test('wrong lengths and non-digits are invalid', () => {
  for (const s of ['', '1114447773', '111444777355', '111.444.777-35', '1114447773a', '11144477735 ', '１1144477735']) {
    assert.equal(isValidCpf(s), false, JSON.stringify(s));
  }
});
