/**
 * A part's stored bytes come back exactly as stored (db/sql/intake.ts partData: a binary
 * COPY, not a query's hex text): every byte value, a Windows-1252 accent included, and
 * nothing once they are gone. The binary COPY reader (load/copy-binary.ts) refuses what is
 * not one.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { firstBinaryField, BinaryCopyWriter } from '../../src/load/copy-binary.ts';
import { dropPartData, insertPart, partData } from '../../src/db/sql/intake.ts';
import { testDb, type TestDb } from '../helpers/db.ts';

let db: TestDb;
let importId: string;

before(async () => {
  db = await testDb();
  importId = (await db.pool.query(`INSERT INTO imports (pipeline, source, status) VALUES ('purchases', 'test', 'running') RETURNING id`)).rows[0].id;
});
after(async () => db?.close());

test('partData: every byte value back as stored; null once the bytes are dropped or for no such part', async () => {
  const all = Buffer.from(Array.from({ length: 256 * 4 }, (_, i) => i % 256));
  const latin = Buffer.from('Jo\xe3o;S\xe3o Paulo\n', 'latin1'); // Windows-1252 bytes, not UTF-8
  const big = Buffer.alloc(3 * 1024 * 1024 + 7, 'x'); // arrives in many COPY chunks
  await insertPart(db.pool, importId, { n: 0, firstLine: 2, lastLine: 5, data: all });
  await insertPart(db.pool, importId, { n: 1, firstLine: 6, lastLine: 6, data: latin });
  await insertPart(db.pool, importId, { n: 2, firstLine: 7, lastLine: 9, data: big });
  await insertPart(db.pool, importId, { n: 3, firstLine: 10, lastLine: 10, data: Buffer.alloc(0) });
  const client = await db.pool.connect();
  try {
    assert.deepEqual(await partData(client, importId, 0), all);
    assert.deepEqual(await partData(client, importId, 1), latin);
    assert.ok((await partData(client, importId, 2))!.equals(big));
    assert.deepEqual(await partData(client, importId, 3), Buffer.alloc(0));
    assert.equal(await partData(client, importId, 4), null);
    await dropPartData(client, importId);
    assert.equal(await partData(client, importId, 0), null);
    // Only a UUID and a whole number reach the COPY's text.
    await assert.rejects(partData(client, `${importId}' OR true --`, 0), /invalid part/);
    await assert.rejects(partData(client, importId, 1.5), /invalid part/);
    await assert.rejects(partData(client, importId, -1), /invalid part/);
  } finally {
    client.release();
  }
});

test('firstBinaryField: reads past a header extension; NULL and no row are null; anything else is refused', () => {
  const w = new BinaryCopyWriter();
  w.row(1);
  w.text('abc');
  const plain = w.finish();
  assert.equal(firstBinaryField(plain)!.toString(), 'abc');
  // The same stream with a 3-byte header extension area.
  const ext = Buffer.concat([plain.subarray(0, 15), Buffer.from([0, 0, 0, 3, 1, 2, 3]), plain.subarray(19)]);
  assert.equal(firstBinaryField(ext)!.toString(), 'abc');
  const nul = Buffer.concat([plain.subarray(0, 19), Buffer.from([0, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])]);
  assert.equal(firstBinaryField(nul), null);
  assert.equal(firstBinaryField(Buffer.concat([plain.subarray(0, 19), Buffer.from([0xff, 0xff])])), null);
  assert.throws(() => firstBinaryField(Buffer.from('abc\tdef\n')), /bad signature/);
  assert.throws(() => firstBinaryField(plain.subarray(0, plain.length - 4)), /ends inside a field/);
});
