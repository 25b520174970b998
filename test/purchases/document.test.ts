import assert from 'node:assert/strict';
import fs from 'node:fs';
import { test } from 'node:test';
import { splitFixedWidthRow } from '../../src/formats/fixed-width.ts';
import { parseDocument } from '../../src/validate/document.ts';
import { FIXTURE, randomCnpj, randomCpf, rng } from './reference.ts';

test('formatted and unformatted CPFs', () => {
  const expected = { digits: '11144477735', type: 'cpf', valid: true };
  assert.deepEqual(parseDocument('111.444.777-35'), expected);
  assert.deepEqual(parseDocument('11144477735'), expected);
  assert.deepEqual(parseDocument(' 111 444 777 35\t'), expected);
  assert.deepEqual(parseDocument('111.444.777-36'), { digits: '11144477736', type: 'cpf', valid: false });
  assert.deepEqual(parseDocument('000.000.000-00'), { digits: '00000000000', type: 'cpf', valid: false });
});

test('formatted and unformatted CNPJs', () => {
  const expected = { digits: '11444777000161', type: 'cnpj', valid: true };
  assert.deepEqual(parseDocument('11.444.777/0001-61'), expected);
  assert.deepEqual(parseDocument('11444777000161'), expected);
  assert.deepEqual(parseDocument('11.444.777/0001-62'), { digits: '11444777000162', type: 'cnpj', valid: false });
  assert.deepEqual(parseDocument('12.345.678/0001-95'), { digits: '12345678000195', type: 'cnpj', valid: true });
  assert.deepEqual(parseDocument('11.111.111/1111-11'), { digits: '11111111111111', type: 'cnpj', valid: false });
});

test('alphanumeric CNPJs keep their letters (upper-cased): two of them never become one document', () => {
  const expected = { digits: '12ABC34501DE35', type: 'cnpj', valid: true };
  assert.deepEqual(parseDocument('12.ABC.345/01DE-35'), expected);
  assert.deepEqual(parseDocument('12ABC34501DE35'), expected);
  assert.deepEqual(parseDocument(' 12.abc.345/01de-35 '), expected);
  assert.deepEqual(parseDocument('12.XYZ.345/01DE-35'), { digits: '12XYZ34501DE35', type: 'cnpj', valid: false });
  // Not CNPJ-shaped with its letters (check digits must be digits; 14 characters): digits only, as before.
  assert.deepEqual(parseDocument('CPF:111.444.777-35'), { digits: '11144477735', type: 'cpf', valid: true });
  assert.deepEqual(parseDocument('12.ABC.345/01DE-3X'), { digits: '12345013', type: null, valid: false });
});

test('other digit counts have no type and are invalid', () => {
  for (const raw of ['', 'NULL', '-', '1234567890', '111.444.777-355', '1144477700016', '114447770001611']) {
    const r = parseDocument(raw);
    assert.equal(r.type, null, raw);
    assert.equal(r.valid, false, raw);
    assert.equal(r.digits, raw.replace(/\D/g, ''), raw);
  }
});

test('generated documents round-trip through their formatted forms', () => {
  const next = rng(3);
  for (let k = 0; k < 500; k++) {
    const cpf = randomCpf(next);
    const f = `${cpf.slice(0, 3)}.${cpf.slice(3, 6)}.${cpf.slice(6, 9)}-${cpf.slice(9)}`;
    assert.deepEqual(parseDocument(f), { digits: cpf, type: 'cpf', valid: true });
    const cnpj = randomCnpj(next);
    const g = `${cnpj.slice(0, 2)}.${cnpj.slice(2, 5)}.${cnpj.slice(5, 8)}/${cnpj.slice(8, 12)}-${cnpj.slice(12)}`;
    assert.deepEqual(parseDocument(g), { digits: cnpj, type: 'cnpj', valid: true });
  }
});

test('every document in the 2,000-row fixture parses: CPFs valid, stores NULL or valid CNPJs', () => {
  const rows = fs.readFileSync(FIXTURE, 'utf8').split('\n').slice(1).filter((l) => l !== '');
  assert.equal(rows.length, 2000);
  for (const [i, row] of rows.entries()) {
    const f = splitFixedWidthRow(row, 8);
    assert.ok(Array.isArray(f), `row ${i + 2}`);
    assert.deepEqual(parseDocument(f[0]!), { digits: f[0]!.replace(/\D/g, ''), type: 'cpf', valid: true }, `row ${i + 2}`);
    for (const store of [f[6]!, f[7]!]) {
      if (store === 'NULL') continue;
      assert.deepEqual(parseDocument(store), { digits: store.replace(/\D/g, ''), type: 'cnpj', valid: true }, `row ${i + 2}`);
    }
  }
});
