/**
 * A stray quote over HTTP (a user's bug): a leads CSV with a `"` in the middle of an
 * unquoted field early on (`Monitor 27"`, literal for the CSV parser) and a quoted field
 * holding line ends later, streamed in small chunks to a real server with real workers and
 * small parts. The splitter must read quotes as the parser does: toggling on every `"`,
 * it took the rest of the file for one open quoted field (one part, or a cut inside the
 * multi-line field, or the upload refused for a record that never ends). The import must
 * complete in several parts and store what `sluice import` (runImport) of the file stores.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { runImport } from '../../src/engine/import-runner.ts';
import { buildServer } from '../../src/http/server.ts';
import { leads } from '../../src/pipelines/leads.ts';
import { testDb, type TestDb } from '../helpers/db.ts';
import { startIntake, statusOverHttp, waitForImportEnd, type Intake, leadsSnapshot } from './http-helpers.ts';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-stray-quote-'));
let db: TestDb;
let intake: Intake;
let app: FastifyInstance;
let base: string;

before(async () => {
  process.env.SLUICE_PART_ROWS = '500';
  db = await testDb();
  intake = await startIntake(db, { workers: 2 });
  app = await buildServer(intake.ctx);
  base = await app.listen({ port: 0, host: '127.0.0.1' });
});
after(async () => {
  await app?.close();
  await intake?.stop();
  await db?.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

/**
 * 3,000 leads; line 52 has a stray quote in an unquoted field; from the 1,501st lead on,
 * job titles are quoted and over two lines, one over three with `""` and a CRLF.
 */
function strayQuoteCsv(): string {
  const lines = ['Email,Name,Job Title,Cidade,UF'];
  for (let i = 0; i < 3000; i++) {
    if (i === 50) lines.push('big50@x.com,Monitor 27" Buyer,Buyer,Recife,PE');
    else if (i === 2099) lines.push('multi@x.com,"Silva, Ana","Head of ""Ops""\nand Sales\r\nNortheast",Recife,PE');
    else if (i >= 1500) lines.push(`sq${i}@example.com,Lead ${i},"Analyst\nteam ${i % 7}",Recife,PE`);
    else lines.push(`sq${i}@example.com,Lead ${i},Analyst,Recife,PE`);
  }
  return `${lines.join('\n')}\n`;
}

test('a stray quote in an unquoted field does not swallow the file: several parts, the rows `sluice import` stores', async () => {
  const csv = Buffer.from(strayQuoteCsv());

  // Streamed in 4 KiB chunks (chunked transfer encoding), so record ends and quotes fall
  // on every side of chunk boundaries.
  const body = new ReadableStream<Uint8Array>({
    start(controller) {
      for (let i = 0; i < csv.length; i += 4096) controller.enqueue(csv.subarray(i, i + 4096));
      controller.close();
    },
  });
  const res = await fetch(`${base}/imports?pipeline=leads&file_name=stray.csv`, {
    method: 'POST', body, headers: { 'content-type': 'text/csv' }, duplex: 'half',
  } as RequestInit);
  assert.equal(res.status, 202, await res.clone().text());
  const { id } = (await res.json()) as { id: string };
  const s = await waitForImportEnd(id, statusOverHttp(base));
  assert.equal(s.status, 'completed', s.error ?? '');
  assert.deepEqual(s.parts, { total: 6, completed: 6, failed: 0, running: 0 }, '3,000 rows in parts of 500, not one');
  assert.deepEqual(s.rows, { read: 3000, inserted: 3000, updated: 0, unchanged: 0, rejected: 0 });

  const { rows } = await db.pool.query<{ email: string; name: string; job_title: string }>(
    `SELECT email, name, job_title FROM leads WHERE email IN ('big50@x.com', 'multi@x.com', 'sq2999@example.com') ORDER BY email`,
  );
  assert.deepEqual(rows, [
    { email: 'big50@x.com', name: 'Monitor 27" Buyer', job_title: 'Buyer' },
    { email: 'multi@x.com', name: 'Silva, Ana', job_title: 'Head of "Ops"\nand Sales\r\nNortheast' },
    { email: 'sq2999@example.com', name: 'Lead 2999', job_title: 'Analyst\nteam 3' },
  ]);

  // The same file through `sluice import` (one parser over the whole file), in a fresh database.
  const ref = await testDb();
  try {
    const file = path.join(dir, 'stray.csv');
    fs.writeFileSync(file, csv);
    const r = await runImport({ pool: ref.pool, pipeline: leads, file });
    assert.equal(r.status, 'completed', r.error);
    assert.deepEqual(s.rows, r.rows);
    assert.deepEqual(await leadsSnapshot(db.pool), await leadsSnapshot(ref.pool));
  } finally {
    await ref.close();
  }
});
