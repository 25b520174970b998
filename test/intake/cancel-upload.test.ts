/**
 * An import that ends while its file is still arriving: cancelled (POST /imports/<id>/cancel
 * from the dashboard, which lists it as soon as its first part is stored), the upload stops
 * storing parts and answers 409, the import stays cancelled with nothing staged and no bytes
 * kept (before, the server went on storing every part and answered 202); cancelled while its
 * last part is stored, the same; failed by a worker on an earlier part, the upload stops and
 * answers 202 as before, the import keeps its own error (not a "cancelled" 409).
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { buildServer } from '../../src/http/server.ts';
import { testDb, type TestDb } from '../helpers/db.ts';
import { startWorkers, type RunningWorkers } from '../../src/intake/worker.ts';
import { leadsCsv, leftovers, startIntake, waitFor, waitForNoLeftovers, waitForStoredParts, type Intake } from './http-helpers.ts';

let db: TestDb;
let intake: Intake;
let app: FastifyInstance;
let base: string;
const savedPartRows = process.env.SLUICE_PART_ROWS;
before(async () => {
  process.env.SLUICE_PART_ROWS = '1000';
  db = await testDb();
  intake = await startIntake(db); // no workers: the parts stay as stored
  app = await buildServer(intake.ctx);
  await app.listen({ port: 0, host: '127.0.0.1' });
  base = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
});
after(async () => {
  if (savedPartRows === undefined) delete process.env.SLUICE_PART_ROWS;
  else process.env.SLUICE_PART_ROWS = savedPartRows;
  await app?.close();
  await intake?.stop();
  await db?.close();
});

/** A chunked upload: the first bytes now, the rest when `end` is called; `answer` is the response. */
function chunkedUpload(first: string | Buffer) {
  const req = http.request(`${base}/imports?pipeline=leads`, { method: 'POST', headers: { 'content-type': 'text/csv' } });
  const answer = new Promise<{ status: number; body: string }>((resolve, reject) => {
    req.on('response', (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode!, body }));
    });
    req.on('error', reject);
  });
  req.write(first);
  return { answer, end: (rest: string | Buffer) => req.end(rest) };
}

const partsOf = async (id: string) => (await db.pool.query<{ n: number }>('SELECT count(*)::int AS n FROM import_parts WHERE import_id = $1', [id])).rows[0]!.n;

test('cancelled while its last part is stored: 409 all the same, and no part keeps its bytes', async () => {
  const csv = leadsCsv(2500, 0, 'last');
  const cut = csv.indexOf('last2300@');
  const up = chunkedUpload(csv.slice(0, cut));
  const id = await waitForStoredParts('two parts stored', db.pool, { fileName: null, status: 'queued', atLeast: 2 });
  // The cancel's update open while the last part arrives and is stored (it saw the import
  // still queued), committed after: the end of the upload must see it.
  const cancel = await db.pool.connect();
  try {
    await cancel.query('BEGIN');
    await cancel.query(`UPDATE imports SET status = 'cancelled', finished_at = now(), updated_at = now() WHERE id = $1`, [id]);
    up.end(csv.slice(cut));
    await waitForStoredParts('the last part stored', db.pool, { id, atLeast: 3 });
    await cancel.query('COMMIT');
  } finally {
    cancel.release();
  }
  const res = await up.answer;
  assert.equal(res.status, 409, res.body);
  assert.equal((JSON.parse(res.body) as { error: { code: string } }).error.code, 'conflict');
  assert.equal((await db.pool.query('SELECT status FROM imports WHERE id = $1', [id])).rows[0].status, 'cancelled');
  assert.deepEqual(await leftovers(db, id), { tables: 0, bytes: 0 });
});

test('failed by a worker while its file arrives: the upload stops and answers 202; the import keeps its own error', async () => {
  const workers: RunningWorkers = await startWorkers(intake.ctx, { concurrency: 2 });
  const csv = Buffer.from(leadsCsv(6000, 0, 'fail'));
  // A Latin-1 byte on line 2,500 (part 2), past the first 64 KiB: detected as UTF-8.
  csv[csv.indexOf('fail2498@') + 2] = 0xe9;
  const cut = csv.indexOf(0x0a, Math.floor(csv.length * 0.6)) + 1;
  const up = chunkedUpload(csv.subarray(0, cut));
  let ended = false;
  const end = () => {
    if (!ended) up.end(csv.subarray(cut));
    ended = true;
  };
  try {
    const failed = await waitFor('the import failed on its part 2', async () => {
      const { rows } = await db.pool.query<{ id: string; error: string }>(`SELECT id, error FROM imports WHERE status = 'failed'`);
      return rows[0];
    });
    const stored = await partsOf(failed.id);
    end();
    const res = await up.answer;
    assert.equal(res.status, 202, res.body);
    assert.equal((JSON.parse(res.body) as { id: string }).id, failed.id);
    assert.match(failed.error, /^part 2: invalid file: line 2500 is not valid utf-8/);
    const after = (await db.pool.query('SELECT status, error FROM imports WHERE id = $1', [failed.id])).rows[0];
    assert.deepEqual(after, { status: 'failed', error: failed.error });
    assert.equal(await partsOf(failed.id), stored, 'no part stored after the failure');
    // The failing part drops what it can; a merge still holding a table drops the rest when it rolls back.
    await waitForNoLeftovers('the failed import\'s staging dropped', db, failed.id);
  } finally {
    end(); // the import's merge waits for the end of the file
    await workers.stop();
  }
});

test('cancelled mid-upload: no more parts are stored, the upload gets 409, the import stays cancelled with nothing left', async () => {
  const csv = leadsCsv(6000);
  const cut = csv.indexOf('\n', Math.floor(csv.length / 2)) + 1;
  // Chunked (no Content-Length): the file's end is unknown until it comes.
  const up = chunkedUpload(csv.slice(0, cut));
  const id = await waitForStoredParts('the first parts stored', db.pool, { status: 'queued', atLeast: 2 });
  const cancelled = await fetch(`${base}/imports/${id}/cancel`, { method: 'POST' });
  assert.equal(cancelled.status, 200);
  const stored = await partsOf(id);
  up.end(csv.slice(cut));
  const res = await up.answer;
  assert.equal(res.status, 409, res.body);
  const body = JSON.parse(res.body) as { error: { code: string; message: string } };
  assert.equal(body.error.code, 'conflict');
  assert.match(body.error.message, /was cancelled while its file was being uploaded/);
  const after = await db.pool.query<{ status: string; parts: number }>(
    `SELECT status, (SELECT count(*)::int FROM import_parts WHERE import_id = $1) AS parts FROM imports WHERE id = $1`,
    [id],
  );
  assert.deepEqual(after.rows, [{ status: 'cancelled', parts: stored }], 'no part stored after the cancel (6 would be the whole file)');
  assert.ok(stored < 6, `a precondition: the cancel came before the whole file was stored (${stored} parts)`);
  assert.deepEqual(await leftovers(db, id), { tables: 0, bytes: 0 });
});
