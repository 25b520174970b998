/**
 * Sources: HTTP with ETag/Last-Modified (304s: not re-processed), servers without
 * validators (content hash), a stored row without the identity hash (one unconditional
 * fetch), local paths (mtime+size), per-line rejects, whole-file
 * refusals (header), mixed newlines, a byte order mark and empty lines.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { text } from 'node:stream/consumers';
import { after, before, test } from 'node:test';
import { CsvForCopy } from '../../src/pipelines/crm/csv-for-copy.ts';
import { refreshSource } from '../../src/pipelines/crm/sources.ts';
import { testDb, type TestDb } from '../helpers/db.ts';
import { FileServer, JAFFLE, tmpDir } from './helpers.ts';

let db: TestDb;
let files: FileServer;

before(async () => {
  db = await testDb();
  files = new FileServer();
  await files.start();
});
after(async () => {
  await files.close();
  await db.close();
});

test('HTTP: ETag remembered, an unchanged source answers 304 and is not re-processed unless forced', async () => {
  const url = `${files.url}/raw_orders.csv`;
  const first = await refreshSource(db.pool, 'http', 'orders', url, false);
  assert.equal(first.reason, 'new');
  assert.equal(first.rows, 99);
  const second = await refreshSource(db.pool, 'http', 'orders', url, false);
  assert.equal(second.reason, 'not_modified');
  assert.equal(second.changed, false);
  assert.equal(files.hits.notModified, 1);
  // Forced, the source is fetched again; the same bytes keep the rows already staged.
  const forced = await refreshSource(db.pool, 'http', 'orders', url, true);
  assert.equal(forced.reason, 'same_content');
  assert.equal(forced.changed, false);
  assert.equal(files.hits.notModified, 1, 'forced: not a conditional request');
  files.set('raw_orders.csv', files.text('raw_orders.csv').replace('1,1,2018-01-01,returned', '1,1,2018-01-01,completed'));
  const forcedChanged = await refreshSource(db.pool, 'http', 'orders', url, true);
  assert.equal(forcedChanged.reason, 'forced');
  assert.equal(forcedChanged.changed, true);
  files.set('raw_orders.csv', `${files.text('raw_orders.csv')}100,1,2018-04-10,placed\r\n`);
  const changed = await refreshSource(db.pool, 'http', 'orders', url, false);
  assert.equal(changed.reason, 'changed');
  assert.equal(changed.rows, 100);
  const { rows } = await db.pool.query(`SELECT count(*)::int AS n FROM crm_orders WHERE pipeline = 'http'`);
  assert.equal(rows[0].n, 100);
});

test('a row stored before the identity hash (migration 0047): one unconditional fetch, then conditional again', async () => {
  const url = `${files.url}/raw_payments.csv`;
  assert.equal((await refreshSource(db.pool, 'legacy', 'payments', url, false)).reason, 'new');
  await db.pool.query(`UPDATE crm_sources SET location_sha256 = NULL WHERE pipeline = 'legacy'`);
  const hits = { ...files.hits };
  // Which resource the stored validators belong to is unknown: none is sent.
  const unknown = await refreshSource(db.pool, 'legacy', 'payments', url, false);
  assert.equal(unknown.reason, 'changed');
  assert.deepEqual(files.hits, { ok: hits.ok + 1, notModified: hits.notModified });
  const { rows } = await db.pool.query(`SELECT location, location_sha256 FROM crm_sources WHERE pipeline = 'legacy'`);
  assert.equal(rows[0].location, url);
  assert.match(rows[0].location_sha256, /^[0-9a-f]{64}$/);
  assert.equal((await refreshSource(db.pool, 'legacy', 'payments', url, false)).reason, 'not_modified');
  assert.equal(files.hits.notModified, hits.notModified + 1);
});

test('HTTP without validators: the same bytes are recognised by their hash', async () => {
  files.validators = false;
  try {
    const url = `${files.url}/raw_customers.csv`;
    assert.equal((await refreshSource(db.pool, 'noval', 'customers', url, false)).reason, 'new');
    const again = await refreshSource(db.pool, 'noval', 'customers', url, false);
    assert.equal(again.reason, 'same_content');
    assert.equal(again.rows, 100);
  } finally {
    files.validators = true;
  }
});

test('local paths: mtime and size as validator, then the content hash', async () => {
  const dir = tmpDir();
  const file = path.join(dir, 'payments.csv');
  fs.copyFileSync(path.join(JAFFLE, 'raw_payments.csv'), file);
  assert.equal((await refreshSource(db.pool, 'local', 'payments', file, false)).rows, 113);
  assert.equal((await refreshSource(db.pool, 'local', 'payments', file, false)).reason, 'not_modified');
  const later = new Date(Date.now() + 5000);
  fs.utimesSync(file, later, later);
  assert.equal((await refreshSource(db.pool, 'local', 'payments', file, false)).reason, 'same_content');
  fs.appendFileSync(file, '114,1,coupon,100\n');
  const changed = await refreshSource(db.pool, 'local', 'payments', file, false);
  assert.equal(changed.reason, 'changed');
  assert.equal(changed.rows, 114);
  await assert.rejects(refreshSource(db.pool, 'local', 'payments', path.join(dir, 'none.csv'), false), /source payments: cannot read .*ENOENT/);
});

/** A scratch file holding `content`. */
function scratch(name: string, content: string): string {
  const file = path.join(tmpDir(), name);
  fs.writeFileSync(file, content);
  return file;
}

test('bad lines are rejects with line and reason; the good lines are staged', async () => {
  const file = scratch('orders.csv', 'id,user_id,order_date,status\n1,1,2018-01-01,placed\nx,1,2018-01-02,placed\n2,y,2018-01-02,placed\n3,1,2018-02-30,placed\n4,2,,shipped\n1,3,2018-01-05,completed\n');
  const r = await refreshSource(db.pool, 'rejects', 'orders', file, false);
  assert.equal(r.rows, 2);
  assert.equal(r.rejected, 4);
  assert.deepEqual(r.samples, [
    { line: 2, reason: 'duplicate id (a later line wins)' },
    { line: 3, reason: 'id is not an integer' },
    { line: 4, reason: 'user_id is not an integer' },
    { line: 5, reason: 'order_date is not a date' },
  ]);
  const { rows } = await db.pool.query(`SELECT id, user_id FROM crm_orders WHERE pipeline = 'rejects' ORDER BY id`);
  assert.deepEqual(rows, [{ id: 1, user_id: 3 }, { id: 4, user_id: 2 }]);
});

test('a file whose header is not the expected one is refused whole, and the old rows stay', async () => {
  const dir = tmpDir();
  const file = path.join(dir, 'customers.csv');
  fs.writeFileSync(file, 'id,first_name,last_name\n1,A,B\n');
  await refreshSource(db.pool, 'header', 'customers', file, false);
  fs.writeFileSync(file, 'id,given_name,last_name\n1,A,C\n');
  await assert.rejects(refreshSource(db.pool, 'header', 'customers', file, false), (err: Error & { code?: string }) => {
    assert.equal(err.code, 'invalid_file');
    assert.match(err.message, /source customers .*column name mismatch in header line field 2: got "given_name", expected "first_name"/);
    return true;
  });
  const { rows } = await db.pool.query(`SELECT last_name FROM crm_customers WHERE pipeline = 'header'`);
  assert.deepEqual(rows, [{ last_name: 'B' }]);
  await assert.rejects(refreshSource(db.pool, 'header', 'customers', `${files.url}/missing.csv`, false), /source customers: HTTP 404/);
});

test('CRLF, LF and lone CR become LF, also when a CRLF is split across chunks', async () => {
  const out = await text(Readable.from([Buffer.from('a,b\r'), Buffer.from('\n1,2\r\n3,4\r5,6\n')]).pipe(new CsvForCopy()));
  assert.equal(out, 'a,b\n1,2\n3,4\n5,6\n');
});

test('a BOM (also split across chunks) and empty lines are dropped; line breaks inside quotes are kept', async () => {
  const chunks = ['\xEF', '\xBB\xBFa,b\r\n\r', '\n1,"x\r\n\r\ny"\r\n', '\n\n2,""""\n\r\n'].map((c) => Buffer.from(c, 'latin1'));
  const csv = new CsvForCopy();
  assert.equal(await text(Readable.from(chunks).pipe(csv)), 'a,b\n1,"x\n\ny"\n2,""""\n');
  assert.equal(csv.emptyLines, 4);
  // COPY's lines 1-3 (header, record "1", record "2") are the file's 1, 3, 6 (counted as COPY
  // does: record "1", whose quoted field spans three lines, is one).
  assert.deepEqual([1, 2, 3].map((n) => csv.fileLine(n)), [1, 3, 6]);
  // A file shorter than a BOM that only begins like one is passed on whole.
  const short = await text(Readable.from([Buffer.from([0xef, 0xbb])]).pipe(new CsvForCopy()));
  assert.equal(short, Buffer.from([0xef, 0xbb]).toString());
});

test("a BOM, CRLF and empty lines (also at the end) are no refusal: bad lines are rejects with the file's line numbers", async () => {
  // Line 4 is empty, line 5 a reject, lines 6-7 one record (a quoted name over two lines), then two empty lines.
  const file = scratch('customers.csv', '\uFEFFid,first_name,last_name\r\n1,Ann,A\r\n2,Bob,B\r\n\r\nx,Bad,Id\r\n3,"Cy\r\nJr",C\r\n\r\n\r\n');
  const r = await refreshSource(db.pool, 'bom', 'customers', file, false);
  assert.equal(r.rows, 3);
  assert.equal(r.rejected, 1);
  assert.equal(r.empty_lines, 3);
  assert.deepEqual(r.samples, [{ line: 5, reason: 'id is not an integer' }]);
  const { rows } = await db.pool.query(`SELECT id, first_name FROM crm_customers WHERE pipeline = 'bom' ORDER BY id`);
  assert.deepEqual(rows, [{ id: 1, first_name: 'Ann' }, { id: 2, first_name: 'Bob' }, { id: 3, first_name: 'Cy\nJr' }]);
  // A line COPY cannot read still refuses the file, naming the file's line (6, not COPY's 4).
  fs.writeFileSync(file, 'id,first_name,last_name\n1,Ann,A\n\n\n2,Bob,B\n3,Cy\n');
  await assert.rejects(refreshSource(db.pool, 'bom', 'customers', file, false), /missing data for column "last_name" \(line 6: "3,Cy"\)/);
});
