/**
 * The imports API end to end over real HTTP: a server on 127.0.0.1 with the job queue and
 * two workers, files sent as a browser would (multipart FormData), as a streamed raw body
 * (one with lone-CR line ends, two in Windows-1252, one of them sent again with
 * ?encoding=windows-1252, one `;`-delimited with ?delimiter=;), and by URL from a local
 * file server; each import is followed to `completed` through GET /imports/:id and its
 * rejects downloaded.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { buildServer } from '../../src/http/server.ts';
import type { ImportStatus } from '../../src/intake/index.ts';
import { testDb, type TestDb } from '../helpers/db.ts';
import { leadsCsv, leadsWithCity, startIntake, waitForImportEnd, waitForNoLeftovers, type Intake } from './http-helpers.ts';

let db: TestDb;
let intake: Intake;
let app: FastifyInstance;
let base: string;
let files: http.Server;
let filesBase: string;
const REMOTE_CSV = leadsCsv(700, 3, 'remote');

before(async () => {
  // Small parts, so even these small files are split and worked on in parallel.
  process.env.SLUICE_PART_ROWS = '500';
  // The file server below is on 127.0.0.1, which the server refuses to fetch from otherwise.
  process.env.SLUICE_FETCH_ALLOW_PRIVATE = '1';
  db = await testDb();
  intake = await startIntake(db, { workers: 2 });
  app = await buildServer(intake.ctx);
  base = await app.listen({ port: 0, host: '127.0.0.1' });
  files = http.createServer((req, res) => {
    if (req.url === '/exports/cut.csv') {
      // Headers and the first lines, then the connection is reset mid-file.
      res.writeHead(200, { 'content-type': 'text/csv', 'content-length': '1000000' });
      res.write(leadsCsv(50, 0, 'cut'), () => setImmediate(() => res.socket?.resetAndDestroy()));
    } else if (req.url === '/exports/remote-leads.csv?token=abc') {
      res.writeHead(200, { 'content-type': 'text/csv' });
      res.end(REMOTE_CSV);
    } else {
      res.writeHead(404).end('not here');
    }
  });
  await new Promise<void>((resolve) => files.listen(0, '127.0.0.1', resolve));
  filesBase = `http://127.0.0.1:${(files.address() as AddressInfo).port}`;
});
after(async () => {
  await app.close();
  await intake.stop();
  await new Promise((resolve) => files.close(resolve));
  await db.close();
});

/** GET /imports/<id>, answered 200 (what waitForImportEnd polls here). */
async function status(id: string): Promise<ImportStatus> {
  const res = await fetch(`${base}/imports/${id}`);
  assert.equal(res.status, 200);
  return (await res.json()) as ImportStatus;
}

test('a multipart upload (FormData, as the dashboard sends it) is imported part by part', async () => {
  const form = new FormData();
  form.append('pipeline', 'leads');
  form.append('file', new Blob([leadsCsv(2400, 7)], { type: 'text/csv' }), 'leads-2400.csv');
  const res = await fetch(`${base}/imports`, { method: 'POST', body: form });
  assert.equal(res.status, 202, await res.clone().text());
  const { id, status_url } = (await res.json()) as { id: string; status_url: string };
  assert.equal(status_url, `/imports/${id}`);

  const s = await waitForImportEnd(id, status);
  assert.equal(s.status, 'completed', s.error ?? '');
  assert.equal(s.file_name, 'leads-2400.csv');
  assert.deepEqual(s.parts, { total: 5, completed: 5, failed: 0, running: 0 });
  assert.deepEqual(s.rows, { read: 2407, inserted: 2400, updated: 0, unchanged: 0, rejected: 7 });
  assert.equal(s.part_list.length, 5);
  assert.ok(s.part_list.every((p) => p.status === 'completed'));
  assert.ok(s.finished_at && s.started_at);

  const csv = await fetch(`${base}/imports/${id}/rejects?format=csv`);
  assert.equal(csv.status, 200);
  assert.equal(csv.headers.get('content-disposition'), `attachment; filename="rejects-${id}.csv"`);
  const lines = (await csv.text()).trim().split('\r\n');
  assert.equal(lines.length, 1 + 7);
  assert.match(lines[1]!, /^2402,,"email: not an email: ""not-an-email-0""","not-an-email-0,""Bad, 0"",Recife,PE"$/);

  const nd = await fetch(`${base}/imports/${id}/rejects?format=ndjson&limit=3`);
  assert.equal(nd.headers.get('content-type'), 'application/x-ndjson; charset=utf-8');
  assert.deepEqual((await nd.text()).trim().split('\n').map((l) => JSON.parse(l).line), [2402, 2403, 2404]);

  const list = (await (await fetch(`${base}/imports?limit=1`)).json()) as { imports: ImportStatus[] };
  assert.equal(list.imports[0]!.id, id, 'newest first');
});

test('a raw body streamed with ?pipeline= (a re-import: every row unchanged)', async () => {
  const csv = Buffer.from(leadsCsv(2400, 7));
  // Sent in 16 KiB chunks as a stream (chunked transfer encoding), never as one buffer.
  const body = new ReadableStream<Uint8Array>({
    start(controller) {
      for (let i = 0; i < csv.length; i += 16 * 1024) controller.enqueue(csv.subarray(i, i + 16 * 1024));
      controller.close();
    },
  });
  const res = await fetch(`${base}/imports?pipeline=leads&file_name=again.csv`, {
    method: 'POST', body, headers: { 'content-type': 'text/csv' }, duplex: 'half',
  } as RequestInit);
  assert.equal(res.status, 202, await res.clone().text());
  const s = await waitForImportEnd(((await res.json()) as { id: string }).id, status);
  assert.equal(s.status, 'completed', s.error ?? '');
  assert.equal(s.file_name, 'again.csv');
  assert.deepEqual(s.rows, { read: 2407, inserted: 0, updated: 0, unchanged: 2400, rejected: 7 });
});

test('a CSV whose lines end with a lone CR (old Mac exports) is split into parts and imported', async () => {
  const csv = leadsCsv(1200, 2, 'mac').replace(/\n/g, '\r');
  const res = await fetch(`${base}/imports?pipeline=leads&file_name=mac.csv`, { method: 'POST', body: csv, headers: { 'content-type': 'text/csv' } });
  assert.equal(res.status, 202, await res.clone().text());
  const s = await waitForImportEnd(((await res.json()) as { id: string }).id, status);
  assert.equal(s.status, 'completed', s.error ?? '');
  assert.equal(s.parts.total, 3, 'parts of 500 records, cut at the CRs');
  assert.deepEqual(s.rows, { read: 1202, inserted: 1200, updated: 0, unchanged: 0, rejected: 2 });
  // Rejects point at the physical lines of the file (lines end at CR).
  const rejects = await (await fetch(`${base}/imports/${s.id}/rejects?format=ndjson`)).text();
  assert.deepEqual(rejects.trim().split('\n').map((l) => (JSON.parse(l) as { line: number }).line), [1202, 1203]);
  const { rows } = await db.pool.query<{ n: number }>(`SELECT count(*)::int AS n FROM leads WHERE email LIKE 'mac%@example.com'`);
  assert.equal(rows[0]!.n, 1200);
});

test('Windows-1252 uploads keep their accents; a file that turns out not to be UTF-8 after its first 64 KiB fails, saying where, and completes sent with ?encoding=windows-1252', async () => {
  const rows = (from: number, to: number, name: string) =>
    Array.from({ length: to - from }, (_, i) => `cp${from + i}@example.com,${name} ${from + i},Florianópolis,SC`);
  const upload = async (text: string, fileName: string, query = '') => {
    // Windows-1252 and Latin-1 agree on these accents: é, ç, ã, ó.
    const res = await fetch(`${base}/imports?pipeline=leads&file_name=${fileName}${query}`, {
      method: 'POST', body: Buffer.from(text, 'latin1'), headers: { 'content-type': 'text/csv' },
    });
    assert.equal(res.status, 202, await res.clone().text());
    return waitForImportEnd(((await res.json()) as { id: string }).id, status);
  };
  const cp = await upload(`Email,Name,Cidade,UF\n${rows(0, 1200, 'José Conceição').join('\n')}\n`, 'cp1252.csv');
  assert.equal(cp.status, 'completed', cp.error ?? '');
  assert.equal(cp.parts.total, 3);
  assert.deepEqual(await leadsWithCity(db, ['cp0@example.com', 'cp1199@example.com']), [
    { email: 'cp0@example.com', name: 'José Conceição 0', city: 'Florianópolis' },
    { email: 'cp1199@example.com', name: 'José Conceição 1199', city: 'Florianópolis' },
  ]);

  // ASCII for the first 2,000 rows (over 64 KiB: detected as UTF-8), then Latin-1 accents.
  const lateCsv = `Email,Name,Cidade,UF\n${rows(5000, 7000, 'Ana').join('\n').replace(/Florianópolis/g, 'Recife')}\n${rows(7000, 7010, 'João').join('\n')}\n`;
  const late = await upload(lateCsv, 'late.csv');
  assert.equal(late.status, 'failed');
  assert.equal(
    late.error,
    'part 4: invalid file: line 2002 is not valid utf-8 (byte 0xE3, the line\'s byte 22), the encoding detected from the start of the file (or given with the upload); save the file as UTF-8, or send it with encoding=windows-1252',
  );
  const { rows: none } = await db.pool.query<{ n: number }>(`SELECT count(*)::int AS n FROM leads WHERE email LIKE 'cp5___@example.com'`);
  assert.equal(none[0]!.n, 0, 'nothing of the failed import is kept');

  // The same bytes again, as the message says: every part is read as windows-1252.
  const again = await upload(lateCsv, 'late.csv', '&encoding=windows-1252');
  assert.equal(again.status, 'completed', again.error ?? '');
  assert.equal(again.parts.total, 5);
  assert.deepEqual(again.rows, { read: 2010, inserted: 2010, updated: 0, unchanged: 0, rejected: 0 });
  assert.deepEqual(await leadsWithCity(db, ['cp5000@example.com', 'cp7000@example.com', 'cp7009@example.com']), [
    { email: 'cp5000@example.com', name: 'Ana 5000', city: 'Recife' },
    { email: 'cp7000@example.com', name: 'João 7000', city: 'Florianópolis' },
    { email: 'cp7009@example.com', name: 'João 7009', city: 'Florianópolis' },
  ]);
});

test('a `;`-delimited file sent with ?delimiter=; is imported with that delimiter', async () => {
  // Names hold commas (unquoted): read with ',' they would be split.
  const lines = ['Email;Name;Cidade;UF', ...Array.from({ length: 600 }, (_, i) => `semi${i}@example.com;Silva, Ana ${i};Recife;PE`)];
  const res = await fetch(`${base}/imports?pipeline=leads&file_name=semi.csv&delimiter=;`, {
    method: 'POST', body: `${lines.join('\r\n')}\r\n`, headers: { 'content-type': 'text/csv' },
  });
  assert.equal(res.status, 202, await res.clone().text());
  const s = await waitForImportEnd(((await res.json()) as { id: string }).id, status);
  assert.equal(s.status, 'completed', s.error ?? '');
  assert.equal(s.parts.total, 2);
  assert.deepEqual(s.rows, { read: 600, inserted: 600, updated: 0, unchanged: 0, rejected: 0 });
  assert.deepEqual(await leadsWithCity(db, ['semi599@example.com']), [{ email: 'semi599@example.com', name: 'Silva, Ana 599', city: 'Recife' }]);
  const { rows: recorded } = await db.pool.query<{ delimiter: string }>('SELECT delimiter FROM imports WHERE id = $1', [s.id]);
  assert.equal(recorded[0]!.delimiter, ';');
});

test('a quote never closed in a later part fails the import naming the line in the file; its staging tables and stored bytes go', async () => {
  const lines = leadsCsv(1200, 0, 'uq').split('\n');
  lines[1099] = `"unclosed${lines[1099]}`; // line 1100 of the file, in its third part
  const res = await fetch(`${base}/imports?pipeline=leads&file_name=uq.csv`, { method: 'POST', body: lines.join('\n'), headers: { 'content-type': 'text/csv' } });
  assert.equal(res.status, 202, await res.clone().text());
  const { id } = (await res.json()) as { id: string };
  const s = await waitForImportEnd(id, status);
  assert.equal(s.status, 'failed');
  assert.equal(s.error, 'part 2: unbalanced quote: the quoted field starting at line 1100 is never closed');
  await waitForNoLeftovers('the failed import\'s staging tables and part bytes to go', db, id);
});

test('a URL is fetched by the server and imported; the name recorded is the path\'s last segment', async () => {
  const res = await fetch(`${base}/imports`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ pipeline: 'leads', url: `${filesBase}/exports/remote-leads.csv?token=abc` }),
  });
  assert.equal(res.status, 202, await res.clone().text());
  const s = await waitForImportEnd(((await res.json()) as { id: string }).id, status);
  assert.equal(s.status, 'completed', s.error ?? '');
  assert.equal(s.file_name, 'remote-leads.csv', 'never the query string (it may hold credentials)');
  assert.equal(s.parts.total, 2);
  assert.deepEqual(s.rows, { read: 703, inserted: 700, updated: 0, unchanged: 0, rejected: 3 });

  const missing = await fetch(`${base}/imports`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ pipeline: 'leads', url: `${filesBase}/nothing.csv` }),
  });
  assert.equal(missing.status, 400);
  assert.equal(((await missing.json()) as { error: { code: string } }).error.code, 'invalid_input');

  // A remote server that hangs up mid-file: said so (400), not taken for the database (503).
  const before = await db.pool.query<{ n: number }>('SELECT count(*)::int AS n FROM imports');
  const cut = await fetch(`${base}/imports`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ pipeline: 'leads', url: `${filesBase}/exports/cut.csv` }),
  });
  const body = (await cut.json()) as { error: { code: string; message: string } };
  assert.equal(cut.status, 400, JSON.stringify(body));
  assert.equal(body.error.code, 'invalid_input');
  assert.match(body.error.message, /^the file stopped arriving before its end: /);
  const after = await db.pool.query<{ n: number }>('SELECT count(*)::int AS n FROM imports');
  assert.equal(after.rows[0]!.n, before.rows[0]!.n, 'nothing of it is kept');
});
