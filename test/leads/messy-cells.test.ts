/**
 * Messy cells and Excel's exports in the lead import: an over-long city (a field reject,
 * not a failed import), values in decomposed Unicode (NFD, as macOS tools export) and
 * doubled spaces, the `sep=` first line (honoured) and UTF-16 "Unicode Text". The cell parsers on
 * their own, then real imports on real Postgres.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { runImport, type ImportResult } from '../../src/engine/import-runner.ts';
import { leads } from '../../src/pipelines/leads.ts';
import { parseYesNo } from '../../src/validate/boolean.ts';
import { cityName, MAX_CITY_CHARS } from '../../src/validate/city.ts';
import { testDbAndDir, type TestDb } from '../helpers/db.ts';

const NFD_SAO = 'Sa\u0303o Paulo';
const NFC_SAO = 'S\u00e3o Paulo';

// ---- The cell parsers ---------------------------------------------------------------------

test('cityName: inner whitespace runs collapsed, case kept (its input is NFC: the row mapper composes every cell)', () => {
  assert.equal(cityName(NFC_SAO), NFC_SAO);
  assert.equal(cityName('São  Paulo'), NFC_SAO);
  assert.equal(cityName('São\t\u00a0 Paulo'), NFC_SAO);
  assert.equal(cityName('São \n Paulo'), NFC_SAO);
  assert.equal(cityName('SÃO PAULO'), 'SÃO PAULO');
  const plain = 'Recife';
  assert.equal(cityName(plain), plain);
});

test(`cityName: at most ${MAX_CITY_CHARS} characters, counted after the clean-up`, () => {
  assert.equal(cityName('x'.repeat(MAX_CITY_CHARS)), 'x'.repeat(MAX_CITY_CHARS));
  assert.equal(cityName(`${'x'.repeat(100)}   ${'y'.repeat(99)}`), `${'x'.repeat(100)} ${'y'.repeat(99)}`);
  assert.deepEqual(cityName('x'.repeat(MAX_CITY_CHARS + 1)), {
    error: `city longer than ${MAX_CITY_CHARS} characters: ${JSON.stringify(`${'x'.repeat(40)}…`)}`,
  });
});

test('parseYesNo: any case; true/false and a Portuguese Excel\'s VERDADEIRO/FALSO', () => {
  for (const v of ['não', 'NÃO', 'nao', ' Não ']) assert.equal(parseYesNo(v), false, JSON.stringify(v));
  for (const v of ['sim', 'SIM', 'y', '1']) assert.equal(parseYesNo(v), true, v);
  // A Portuguese Excel's TRUE/FALSE, and the English ones.
  for (const v of ['VERDADEIRO', 'Verdadeiro', 'TRUE']) assert.equal(parseYesNo(v), true, v);
  for (const v of ['FALSO', 'falso', 'FALSE']) assert.equal(parseYesNo(v), false, v);
  assert.deepEqual(parseYesNo('talvez'), { error: 'not a yes/no value: "talvez"' });
  // A combining mark on its own does not make a yes/no value.
  assert.deepEqual(parseYesNo('n\u0303'), { error: `not a yes/no value: ${JSON.stringify('n\u0303')}` });
});

// ---- Real imports ------------------------------------------------------------------------

let db: TestDb;
const dir = testDbAndDir('sluice-messy-', (d) => (db = d));

let n = 0;
async function importFile(content: string | Buffer): Promise<ImportResult> {
  const file = path.join(dir, `m${++n}.csv`);
  fs.writeFileSync(file, content);
  return runImport({ pool: db.pool, pipeline: leads, file });
}

async function lead(email: string) {
  const { rows } = await db.pool.query(
    `SELECT l.city_id, c.name AS city, s.acronym AS state, l.opportunity, l.available_for_mailing
       FROM leads l LEFT JOIN cities c ON c.id = l.city_id LEFT JOIN states s ON s.id = l.state_id
      WHERE l.email = $1`,
    [email],
  );
  return rows[0];
}

async function rejects(id: string) {
  const { rows } = await db.pool.query('SELECT line, field, reason, length(raw) AS raw_length FROM import_rejects WHERE import_id = $1 ORDER BY line, id', [id]);
  return rows as Array<{ line: number; field: string | null; reason: string; raw_length: number }>;
}

async function leadCount(): Promise<number> {
  return (await db.pool.query('SELECT count(*)::int AS n FROM leads')).rows[0].n;
}

test('a 6,000-character city is a field reject with its line; the row and the others import', async () => {
  const long = 'ab'.repeat(3000);
  const r = await importFile(`Name,Email,City,State\nA,c1@x.com,${long},SP\nB,c2@x.com,Recife,PE\n`);
  assert.equal(r.status, 'completed', r.error);
  assert.deepEqual(r.rows, { read: 2, inserted: 2, updated: 0, unchanged: 0, rejected: 0 });
  assert.deepEqual(await rejects(r.id), [
    { line: 2, field: 'city', reason: `city longer than 200 characters: "${'ab'.repeat(20)}…"`, raw_length: 'A,c1@x.com,,SP'.length + long.length },
  ]);
  // The rejected field is left out (a state without a city, as when the cell is blank).
  assert.deepEqual(await lead('c1@x.com'), { city_id: null, city: null, state: 'SP', opportunity: null, available_for_mailing: null });
  assert.equal((await lead('c2@x.com')).city, 'Recife');
  // 200 characters is a city; 200 written decomposed (400 code units) too, once composed.
  const r2 = await importFile(`Email,City,State\nc3@x.com,${'é'.repeat(200)},SP\nc4@x.com,${'a\u0303'.repeat(200)},SP\n`);
  assert.deepEqual([r2.status, await rejects(r2.id)], ['completed', []]);
  assert.equal((await lead('c3@x.com')).city, 'é'.repeat(200));
  assert.equal((await lead('c4@x.com')).city, '\u00e3'.repeat(200));
});

test('São Paulo in NFD, in NFC and with two spaces is one city; não in NFD is false', async () => {
  const r = await importFile(
    [
      'Email,City,State,Opportunity,Available for mailing',
      `nfd@x.com,${NFD_SAO},SP,na\u0303o,sim`,
      `nfc@x.com,${NFC_SAO},SP,não,NA\u0303O`,
      `spaces@x.com,"São  Paulo",SP,sim,n`,
      `tab@x.com,"  Sa\u0303o\tPaulo ",SP,,`,
    ].join('\n') + '\n',
  );
  assert.equal(r.status, 'completed', r.error);
  assert.deepEqual(r.rows, { read: 4, inserted: 4, updated: 0, unchanged: 0, rejected: 0 });
  assert.deepEqual(await rejects(r.id), []);
  const { rows } = await db.pool.query(`SELECT name FROM cities WHERE state_id = (SELECT id FROM states WHERE acronym = 'SP') AND name LIKE 'S%'`);
  assert.deepEqual(rows, [{ name: NFC_SAO }]);
  const ids = new Set<string>();
  for (const email of ['nfd@x.com', 'nfc@x.com', 'spaces@x.com', 'tab@x.com']) {
    const l = await lead(email);
    assert.equal(l.city, NFC_SAO, email);
    ids.add(l.city_id);
  }
  assert.equal(ids.size, 1);
  const nfd = await lead('nfd@x.com');
  assert.deepEqual([nfd.opportunity, nfd.available_for_mailing], [false, true]);
  const nfc = await lead('nfc@x.com');
  assert.deepEqual([nfc.opportunity, nfc.available_for_mailing], [false, false]);
  // Case is kept: SÃO PAULO is a city of its own (a product decision).
  await importFile(`Email,City,State\nupper@x.com,SA\u0303O PAULO,SP\n`);
  assert.equal((await lead('upper@x.com')).city, 'SÃO PAULO');
  assert.notEqual((await lead('upper@x.com')).city_id, [...ids][0]);
});

test('every cell is composed (NFC): a tag, a name and a key in NFD are the NFC ones; re-imports are unchanged', async () => {
  const nfc = 'Email,Name,Job Title,Tags\nnfd-tag@x.com,José,Gerente de Operações,"São Paulo,vip"\n';
  const nfd = 'Email,Name,Job Title,Tags\nnfd-tag@x.com,Jose\u0301,Gerente de Operac\u0327o\u0303es,"Sa\u0303o Paulo,vip"\n';
  assert.notEqual(nfc, nfd);
  const first = await importFile(nfc);
  assert.deepEqual(first.rows, { read: 1, inserted: 1, updated: 0, unchanged: 0, rejected: 0 });
  // The same lead written decomposed (a macOS export), then composed again: nothing changes.
  for (const content of [nfd, nfc, nfd]) {
    const r = await importFile(content);
    assert.equal(r.status, 'completed', r.error);
    assert.deepEqual(r.rows, { read: 1, inserted: 0, updated: 0, unchanged: 1, rejected: 0 });
  }
  const { rows } = await db.pool.query(
    `SELECT name, job_title, tags FROM leads WHERE email = 'nfd-tag@x.com'`,
  );
  assert.deepEqual(rows, [{ name: 'Jos\u00e9', job_title: 'Gerente de Opera\u00e7\u00f5es', tags: ['S\u00e3o Paulo', 'vip'] }]);
  // Both forms in one file: one lead, one tag (its second row counts as updated, as every
  // later row of a key in one file does).
  const both = await importFile('Email,Tags\nnfd-both@x.com,Sa\u0303o Paulo\nnfd-both@x.com,S\u00e3o Paulo\n');
  assert.deepEqual(both.rows, { read: 2, inserted: 1, updated: 1, unchanged: 0, rejected: 0 });
  const tags = await db.pool.query(`SELECT tags FROM leads WHERE email = 'nfd-both@x.com'`);
  assert.deepEqual(tags.rows, [{ tags: ['S\u00e3o Paulo'] }]);
});

test("Excel's `sep=;` first line is honoured: skipped, its ';' the delimiter, lines counted from it", async () => {
  const before = await leadCount();
  const r = await importFile('sep=;\r\nName;Email\r\nA;sep1@x.com\r\nB;not-an-email\r\n');
  assert.equal(r.status, 'completed', r.error);
  assert.equal(r.meta?.delimiter, ';');
  assert.deepEqual(r.rows, { read: 2, inserted: 1, updated: 0, unchanged: 0, rejected: 1 });
  assert.equal(await leadCount(), before + 1);
  // The header is line 2, the rows lines 3 and 4: the file's own lines.
  assert.deepEqual(await rejects(r.id), [{ line: 4, field: null, reason: 'email: not an email: "not-an-email"', raw_length: 'B;not-an-email'.length }]);
  // Without it, the file imports with ';' detected.
  const ok = await importFile('Name;Email\r\nA;a1@x.com\r\n');
  assert.equal(ok.status, 'completed', ok.error);
  assert.equal(ok.meta?.delimiter, ';');
  assert.equal(ok.rows.inserted, 1);
});

test('UTF-16 text (Excel\'s "Unicode Text") fails the import, naming it and what to do', async () => {
  const before = await leadCount();
  for (const bytes of [Buffer.from('\ufeffName\tEmail\r\nA\ta2@x.com\r\n', 'utf16le'), Buffer.from('\ufeffName\tEmail\r\nA\ta2@x.com\r\n', 'utf16le').swap16()]) {
    const r = await importFile(bytes);
    assert.equal(r.status, 'failed');
    assert.equal(r.error, `invalid file: UTF-16 text (Excel's "Unicode Text"), which Sluice does not read: save it as "CSV UTF-8" instead`);
  }
  assert.equal(await leadCount(), before);
});
