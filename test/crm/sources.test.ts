/**
 * Sources: HTTP with ETag/Last-Modified (304s: not re-processed), servers without
 * validators (content hash), local paths (mtime+size), per-line rejects, whole-file
 * refusals (header), and mixed newlines.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { text } from 'node:stream/consumers';
import { after, before, test } from 'node:test';
import { newlinesToLf, refreshSource } from '../../src/pipelines/crm/sources.ts';
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

test('bad lines are rejects with line and reason; the good lines are staged', async () => {
  const dir = tmpDir();
  const file = path.join(dir, 'orders.csv');
  fs.writeFileSync(file, 'id,user_id,order_date,status\n1,1,2018-01-01,placed\nx,1,2018-01-02,placed\n2,y,2018-01-02,placed\n3,1,2018-02-30,placed\n4,2,,shipped\n1,3,2018-01-05,completed\n');
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
  const out = await text(Readable.from([Buffer.from('a,b\r'), Buffer.from('\n1,2\r\n3,4\r5,6\n')]).pipe(newlinesToLf()));
  assert.equal(out, 'a,b\n1,2\n3,4\n5,6\n');
});
