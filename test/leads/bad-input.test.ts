/**
 * Bad input (issue 2): each case gets a clear error or clear rejects, and a failed import
 * leaves nothing half-written.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { runImport, type ImportResult } from '../../src/engine/import-runner.ts';
import { leads } from '../../src/pipelines/leads.ts';
import { testDbAndDir, type TestDb } from '../helpers/db.ts';

let db: TestDb;
const dir = testDbAndDir('sluice-bad-', (d) => (db = d));

let n = 0;
function write(content: string | Buffer): string {
  const file = path.join(dir, `b${++n}.csv`);
  fs.writeFileSync(file, content);
  return file;
}

async function importFile(file: string): Promise<ImportResult> {
  return runImport({ pool: db.pool, pipeline: leads, file });
}

async function leadCount(): Promise<number> {
  return (await db.pool.query('SELECT count(*)::int AS n FROM leads')).rows[0].n;
}

async function stagingTables(): Promise<number> {
  return (await db.pool.query(`SELECT count(*)::int AS n FROM pg_tables WHERE tablename LIKE 'sluice_stage_%'`)).rows[0].n;
}

async function assertFails(content: string | Buffer, message: RegExp): Promise<ImportResult> {
  const before = await leadCount();
  const r = await importFile(write(content));
  assert.equal(r.status, 'failed');
  assert.match(r.error ?? '', message);
  assert.equal(await leadCount(), before, 'a failed import must not write leads');
  assert.equal(await stagingTables(), 0, 'staging is dropped');
  const row = (await db.pool.query('SELECT status, error FROM imports WHERE id = $1', [r.id])).rows[0];
  assert.deepEqual(row, { status: 'failed', error: r.error });
  return r;
}

test('an empty file fails clearly', async () => {
  await assertFails('', /the file is empty/);
});

test('a header without rows fails clearly', async () => {
  await assertFails('Email,Name\n', /no data rows after the header/);
});

test('binary garbage is refused', async () => {
  const garbage = Buffer.alloc(4096);
  for (let i = 0; i < garbage.length; i++) garbage[i] = (i * 7919) % 256;
  await assertFails(garbage, /binary content/);
});

test('an unbalanced quote fails with the line where the quote opened', async () => {
  await assertFails('Email,Name\nq1@example.com,"Ana\nq2@example.com,Bia\n', /unbalanced quote: the quoted field starting at line 2/);
});

test('a 50 MB line is rejected as one row, without holding it, and the rest imports', async () => {
  const file = path.join(dir, 'long.csv');
  const fd = fs.openSync(file, 'w');
  fs.writeSync(fd, 'Email,Name\nbefore@example.com,A\nlong@example.com,');
  const block = 'x'.repeat(1 << 20);
  for (let i = 0; i < 50; i++) fs.writeSync(fd, block);
  fs.writeSync(fd, '\nafter@example.com,B\n');
  fs.closeSync(fd);
  const r = await importFile(file);
  assert.equal(r.status, 'completed', r.error);
  assert.deepEqual(r.rows, { read: 3, inserted: 2, updated: 0, unchanged: 0, rejected: 1 });
  const rej = (await db.pool.query('SELECT line, reason, length(raw) AS len FROM import_rejects WHERE import_id = $1', [r.id])).rows;
  assert.equal(rej.length, 1);
  assert.equal(rej[0].line, 3);
  assert.match(rej[0].reason, /record longer than/);
  assert.ok(rej[0].len < 1000);
});

test('a quoted value over 1 MiB that closes is rejected as one row, with its line; the rest imports', async () => {
  const file = path.join(dir, 'long-quoted.csv');
  fs.writeFileSync(file, `Name,Email,Job Title,State\n"${'a\n'.repeat(550_000)}",l1@example.com,Dev,SP\nB,l2@example.com,CEO,XYZ\n`);
  const r = await importFile(file);
  assert.equal(r.status, 'completed', r.error);
  assert.deepEqual(r.rows, { read: 2, inserted: 1, updated: 0, unchanged: 0, rejected: 1 });
  const rej = (await db.pool.query('SELECT line, field, reason, length(raw) AS len FROM import_rejects WHERE import_id = $1 ORDER BY line', [r.id])).rows;
  // The line breaks inside the long value count: B's row (its state refused) is on line 550,003.
  assert.deepEqual(rej, [
    { line: 2, field: null, reason: `record longer than ${1 << 20} characters`, len: 201 },
    { line: 550_003, field: 'state', reason: 'state must be a 2-letter acronym: "XYZ"', len: 24 },
  ]);
  assert.equal((await db.pool.query(`SELECT job_title FROM leads WHERE email = 'l2@example.com'`)).rows[0].job_title, 'CEO');
});

test('a Windows-1252 file is detected and converted', async () => {
  const text = 'Email;Nome;City\nlatin@example.com;João Conceição;São Paulo\n';
  const r = await importFile(write(Buffer.from(text, 'latin1')));
  assert.equal(r.status, 'completed', r.error);
  assert.equal(r.meta?.encoding, 'windows-1252');
  const l = (await db.pool.query(`SELECT l.name, c.name AS city FROM leads l JOIN cities c ON c.id = l.city_id WHERE email = 'latin@example.com'`)).rows[0];
  assert.deepEqual(l, { name: 'João Conceição', city: 'São Paulo' });
});

test('a Windows-1252 file ending in an accented letter, with no line end, is detected (not a cut UTF-8 sequence)', async () => {
  const r = await importFile(write(Buffer.from('Email,Nome,City\nlat1@x.com,Ana,Bogotá', 'latin1')));
  assert.equal(r.status, 'completed', r.error);
  assert.equal(r.meta?.encoding, 'windows-1252');
  const l = (await db.pool.query(`SELECT c.name AS city FROM leads l JOIN cities c ON c.id = l.city_id WHERE email = 'lat1@x.com'`)).rows[0];
  assert.deepEqual(l, { city: 'Bogotá' });
});

test('invalid UTF-8 after a valid start fails with its byte offset', async () => {
  const head = Buffer.from(`Email,Name\n${'ok@example.com,Ana\n'.repeat(5000)}`);
  const bad = Buffer.concat([head, Buffer.from([0x62, 0x61, 0x64, 0x40, 0x78, 0x2e, 0x63, 0x6f, 0x6d, 0x2c, 0xc3, 0x28, 0x0a])]);
  await assertFails(bad, /invalid UTF-8 at byte offset \d+/);
});

test('a NUL character past the sniffed start rejects its row, with its line; the raw text is stored with ␀', async () => {
  // (A NUL within the first 64 KiB makes the file binary: refused whole, as above.)
  const rows = Array.from({ length: 4000 }, (_, i) => `nul${i}@example.com,Ana ${i}`);
  rows[3500] = 'nul3500@example.com,An\0a';
  rows[3600] = 'not-an-email\0,Bad';
  const r = await importFile(write(`Email,Name\n${rows.join('\n')}\n`));
  assert.equal(r.status, 'completed', r.error);
  assert.deepEqual(r.rows, { read: 4000, inserted: 3998, updated: 0, unchanged: 0, rejected: 2 });
  const rej = (await db.pool.query('SELECT line, reason, raw FROM import_rejects WHERE import_id = $1 ORDER BY line', [r.id])).rows;
  assert.equal(rej.length, 2);
  assert.deepEqual(rej[0], { line: 3502, reason: 'name: contains a NUL character (byte 0), which Postgres cannot store', raw: 'nul3500@example.com,An\u2400a' });
  assert.equal(rej[1].line, 3602);
  assert.match(rej[1].reason, /^email: /);
  assert.equal(rej[1].raw, 'not-an-email\u2400,Bad');
});

test('duplicate header names fail before anything is written, unless the pipeline ignores them', async () => {
  await assertFails('Email,Nome,nome\nd@example.com,A,B\n', /duplicate header name "nome" \(columns 2 and 3\)/);
  await assertFails('email,Nome,EMAIL\nd@example.com,A,e@example.com\n', /duplicate header name "EMAIL" \(columns 1 and 3\)/);
  const r = await importFile(write('Email,Obs,Nome,obs\ndup-ignored@example.com,x,Ana,y\n'));
  assert.equal(r.status, 'completed', r.error);
  assert.deepEqual(r.meta?.ignored_columns, ['Obs', 'obs']);
});

test('SQL text in header names is just an ignored column name', async () => {
  const r = await importFile(write('Email,"Name""; DROP TABLE leads; --",Robert\'); DROP TABLE leads;--\nsql@example.com,x,y\n'));
  assert.equal(r.status, 'completed', r.error);
  assert.deepEqual(r.meta?.ignored_columns, ['Name"; DROP TABLE leads; --', "Robert'); DROP TABLE leads;--"]);
  assert.ok((await leadCount()) >= 1);
});

test('ragged rows: short rows are padded, rows with extra values are rejected', async () => {
  const r = await importFile(write('Email,Name,Job Title\nshort@example.com\nextra@example.com,A,B,C\nempty-extra@example.com,A,B,,\n'));
  assert.deepEqual(r.rows, { read: 3, inserted: 2, updated: 0, unchanged: 0, rejected: 1 });
  const rej = (await db.pool.query('SELECT line, reason FROM import_rejects WHERE import_id = $1', [r.id])).rows;
  assert.deepEqual(rej, [{ line: 3, reason: 'row has 4 fields, the header has 3' }]);
});

test('CSV edge cases: BOM, CRLF, quoted delimiters and newlines, tab and pipe delimiters', async () => {
  const r1 = await importFile(write('\ufeffEmail,Name,Job Title\r\n"bom@example.com","Silva, Ana","Line1\r\nLine2"\r\n'));
  assert.equal(r1.status, 'completed', r1.error);
  const l = (await db.pool.query(`SELECT name, job_title FROM leads WHERE email = 'bom@example.com'`)).rows[0];
  assert.deepEqual(l, { name: 'Silva, Ana', job_title: 'Line1\r\nLine2' });
  const r2 = await importFile(write('Email\tName\ntab@example.com\tTab Name\n'));
  assert.equal(r2.meta?.delimiter, '\t');
  const r3 = await importFile(write('Email|Name\npipe@example.com|Pipe Name\n'));
  assert.equal(r3.meta?.delimiter, '|');
  assert.equal(r2.rows.inserted + r3.rows.inserted, 2);
});
