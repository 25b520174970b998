/**
 * An import cancelled while its file is still arriving (POST /imports/<id>/cancel from the
 * dashboard, which lists it as soon as its first part is stored): the upload stops storing
 * parts and answers 409; the import stays, cancelled, with nothing staged and no bytes kept.
 * Before, the server went on storing every part of the file and answered 202.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { buildServer } from '../../src/http/server.ts';
import { testDb, type TestDb } from '../helpers/db.ts';
import { leadsCsv, leftovers, startIntake, waitFor, type Intake } from './http-helpers.ts';

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

test('cancelled mid-upload: no more parts are stored, the upload gets 409, the import stays cancelled with nothing left', async () => {
  const csv = leadsCsv(6000);
  const cut = csv.indexOf('\n', Math.floor(csv.length / 2)) + 1;
  // Chunked (no Content-Length): the file's end is unknown until it comes.
  const req = http.request(`${base}/imports?pipeline=leads`, { method: 'POST', headers: { 'content-type': 'text/csv' } });
  const answer = new Promise<{ status: number; body: string }>((resolve, reject) => {
    req.on('response', (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode!, body }));
    });
    req.on('error', reject);
  });
  req.write(csv.slice(0, cut));
  const id = await waitFor('the first parts stored', async () => {
    const { rows } = await db.pool.query<{ id: string }>(
      `SELECT i.id FROM imports i WHERE (SELECT count(*) FROM import_parts p WHERE p.import_id = i.id) >= 2`,
    );
    return rows[0]?.id;
  });
  const cancelled = await fetch(`${base}/imports/${id}/cancel`, { method: 'POST' });
  assert.equal(cancelled.status, 200);
  const stored = (await db.pool.query<{ n: number }>('SELECT count(*)::int AS n FROM import_parts WHERE import_id = $1', [id])).rows[0]!.n;
  req.end(csv.slice(cut));
  const res = await answer;
  assert.equal(res.status, 409, res.body);
  const body = JSON.parse(res.body) as { error: { code: string; message: string } };
  assert.equal(body.error.code, 'conflict');
  assert.match(body.error.message, /was cancelled while its file was being uploaded/);
  const after = await db.pool.query<{ status: string; parts: number }>(
    `SELECT status, (SELECT count(*)::int FROM import_parts WHERE import_id = $1) AS parts FROM imports WHERE id = $1`,
    [id],
  );
  assert.deepEqual(after.rows, [{ status: 'cancelled', parts: stored }], 'no part stored after the cancel (6 would be the whole file)');
  assert.ok(stored < 6, `${stored} parts`);
  assert.deepEqual(await leftovers(db, id), { tables: 0, bytes: 0 });
});
