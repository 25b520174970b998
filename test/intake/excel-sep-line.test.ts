/**
 * Excel's delimiter hint, a first line `sep=;`, honoured the same way by `sluice import` (a
 * subprocess) and by POST /imports (raw body, multipart, {"url"}; real workers, parts of 100
 * rows): the line is skipped (not a header, not a row, not a reject), its character is the
 * delimiter, and every line number (rejects, parts' first_line/last_line) is the file's
 * physical one: the header is line 2, the first row line 3. The same file gives the same
 * leads table, counts and rejects both ways. Also: `sep=,` after a UTF-8 BOM; a delimiter
 * given that contradicts the hint (refused, naming both); a first line that only starts
 * with "sep=" (a header); a hint with no header after it; a character Sluice does not read
 * as a delimiter; and a purchases (fixed-width) file, for which nothing changed.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { buildServer } from '../../src/http/server.ts';
import { RecordSplitter } from '../../src/intake/splitter.ts';
import { testDb, type TestDb } from '../helpers/db.ts';
import { importOutcome, killAll, startSluice } from '../helpers/processes.ts';
import { leadsSnapshot, multipart, startIntake, waitForImportEnd, type Intake } from './http-helpers.ts';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-sep-line-'));
/** Where POST /imports sends its files (db) and where `sluice import` does (ref). */
let db: TestDb;
let ref: TestDb;
let intake: Intake;
let app: FastifyInstance;
/** Serves the files of {"url"} imports: /<name> from `served`. */
let files: http.Server;
const served = new Map<string, Buffer>();

before(async () => {
  process.env.SLUICE_PART_ROWS = '100'; // the minimum: a 360-row file is 4 parts
  db = await testDb();
  ref = await testDb();
  intake = await startIntake(db, { workers: 2 });
  app = await buildServer(intake.ctx);
  files = http.createServer((req, res) => {
    const body = served.get((req.url ?? '').slice(1));
    if (body) res.writeHead(200, { 'content-type': 'text/csv' }).end(body);
    else res.writeHead(404).end();
  });
  await new Promise<void>((resolve) => files.listen(0, '127.0.0.1', resolve));
  process.env.SLUICE_FETCH_ALLOW_PRIVATE = '1'; // the file server is on 127.0.0.1
});
after(async () => {
  await killAll();
  await app?.close();
  await intake?.stop();
  await new Promise((resolve) => (files ? files.close(resolve) : resolve(undefined)));
  await db?.close();
  await ref?.close();
  delete process.env.SLUICE_PART_ROWS;
  delete process.env.SLUICE_FETCH_ALLOW_PRIVATE;
  fs.rmSync(dir, { recursive: true, force: true });
});

type Rows = { read: number; inserted: number; updated: number; unchanged: number; rejected: number };
type Reject = { line: number; field: string | null; reason: string; raw: string };
type Outcome = { status: string; error: string | null; rows: Rows; rejects: Reject[] };

let n = 0;
/** `sluice import <file> --pipeline <pipeline> --json` into ref: its outcome and rejects. */
async function cli(content: string | Buffer, pipeline = 'leads', extra: string[] = []): Promise<Outcome & { code: number | null }> {
  const file = path.join(dir, `f${++n}.csv`);
  fs.writeFileSync(file, content);
  const { code, out } = await importOutcome(startSluice(['import', file, '--pipeline', pipeline, '--json', '--no-progress', ...extra], { DATABASE_URL: ref.url }));
  return { code, status: out.status, error: out.error ?? null, rows: out.rows as Rows, rejects: await rejectsOf(ref, out.id as string) };
}

/** An accepted upload's id; anything else fails the test with the answer. */
function accepted(res: { statusCode: number; body: string; json(): unknown }): string {
  assert.equal(res.statusCode, 202, res.body);
  return (res.json() as { id: string }).id;
}

/** The end of import `id` in db: status, error, counts and rejects. */
async function outcome(id: string): Promise<Outcome> {
  const s = await waitForImportEnd(id, db.pool);
  return { status: s.status, error: s.error ?? null, rows: s.rows as Rows, rejects: await rejectsOf(db, id) };
}

function raw(content: string | Buffer, query = '') {
  return app.inject({ method: 'POST', url: `/imports?pipeline=leads&file_name=sep.csv${query}`, headers: { 'content-type': 'text/csv' }, payload: content });
}

function form(content: string | Buffer, fields: Array<{ name: string; value: string }> = []) {
  const body = multipart([{ name: 'pipeline', value: 'leads' }, ...fields, { name: 'file', filename: 'sep.csv', content }]);
  return app.inject({ method: 'POST', url: '/imports', ...body });
}

function fromUrl(content: string | Buffer, extra: Record<string, string> = {}) {
  const name = `u${++n}.csv`;
  served.set(name, Buffer.from(content));
  const url = `http://127.0.0.1:${(files.address() as AddressInfo).port}/${name}`;
  return app.inject({ method: 'POST', url: '/imports', headers: { 'content-type': 'application/json' }, payload: { pipeline: 'leads', url, ...extra } });
}

async function rejectsOf(d: TestDb, id: string): Promise<Reject[]> {
  const { rows } = await d.pool.query<Reject>('SELECT line::int, field, reason, raw FROM import_rejects WHERE import_id = $1 ORDER BY line, field NULLS FIRST', [id]);
  return rows;
}

async function importCount(): Promise<number> {
  const { rows } = await db.pool.query<{ n: number }>('SELECT count(*)::int AS n FROM imports');
  return rows[0]!.n;
}

/** The refusal of an upload: 400 invalid_file with `message`, and no import left behind. */
async function assertRefused(res: { statusCode: number; body: string; json(): unknown }, message: string, importsBefore: number) {
  assert.equal(res.statusCode, 400, res.body);
  assert.deepEqual(res.json(), { error: { code: 'invalid_file', message } });
  assert.equal(await importCount(), importsBefore);
}

/**
 * Excel's semicolon CSV of 360 leads with CRLF line ends and `sep=;` first: names hold
 * commas (data, with ';' the delimiter), row 4's job title is quoted over two lines (every
 * line after it is one further down), 4 emails are bad (whole-row rejects) spread over the
 * parts, 2 opportunities are not yes/no (field rejects), row 51 repeats row 11's email (in
 * the same part: a key repeated across parts is counted differently on re-import, updated
 * over HTTP and unchanged by `sluice import`, with or without the hint). Over 64 KiB: the
 * upload detects the hint in a sample that is not the whole file. With the physical line of
 * every reject.
 */
/** An ignored column's value, that makes the file longer than the 64 KiB an upload samples. */
const NOTES = 'n'.repeat(180);

function excelFile(): { csv: string; rejectLines: Array<{ line: number; field: string | null }>; lastLine: number } {
  const lines = ['sep=;', 'Email;Name;Cargo;Cidade;UF;Oportunidade;Notas'];
  const rejectLines: Array<{ line: number; field: string | null }> = [];
  let line = 3; // the physical line of the next row
  for (let i = 0; i < 360; i++) {
    const email = i === 50 ? 'sep10@example.com' : [40, 140, 240, 355].includes(i) ? `not-an-email-${i}` : `sep${i}@example.com`;
    const title = i === 3 ? '"Head of\r\nSales"' : 'Analyst';
    const opportunity = i === 90 || i === 190 ? 'talvez' : i % 2 ? 'sim' : 'não';
    if (email.startsWith('not-')) rejectLines.push({ line, field: null });
    if (opportunity === 'talvez') rejectLines.push({ line, field: 'opportunity' });
    lines.push(`${email};Silva, Ana ${i};${title};Recife;PE;${opportunity};${NOTES}`);
    line += i === 3 ? 2 : 1;
  }
  return { csv: `${lines.join('\r\n')}\r\n`, rejectLines, lastLine: line - 1 };
}

test('a `sep=;` file: the same leads, counts and physical reject lines from `sluice import` and from every way of POST /imports, in 4 parts', async () => {
  const { csv, rejectLines, lastLine } = excelFile();
  assert.equal(lastLine, 363); // the hint, the header, 360 rows, one of them over two lines
  assert.ok(csv.length > 64 * 1024);

  // First import: everything inserted, both ways.
  const c1 = await cli(csv);
  assert.equal(c1.status, 'completed', c1.error ?? '');
  assert.deepEqual(c1.rows, { read: 360, inserted: 355, updated: 1, unchanged: 0, rejected: 4 }); // row 51 updates row 11's lead
  assert.deepEqual(c1.rejects.map((r) => ({ line: r.line, field: r.field })), rejectLines);
  assert.deepEqual(rejectLines.map((r) => r.line), [44, 94, 144, 194, 244, 359]);
  assert.deepEqual(c1.rejects[0], { line: 44, field: null, reason: 'email: not an email: "not-an-email-40"', raw: `not-an-email-40;Silva, Ana 40;Analyst;Recife;PE;não;${NOTES}` });

  const id = accepted(await raw(csv));
  const { code: _, ...cli1 } = c1;
  assert.deepEqual(await outcome(id), cli1, 'raw body');
  assert.deepEqual(await leadsSnapshot(db.pool), await leadsSnapshot(ref.pool));
  // The parts count the file's lines: the first starts on line 3 (the hint and the header
  // are lines 1 and 2), each starts where the one before ended, the last ends on the last.
  const { rows: parts } = await db.pool.query('SELECT n, first_line::int, last_line::int FROM import_parts WHERE import_id = $1 ORDER BY n', [id]);
  assert.deepEqual(parts, [
    { n: 0, first_line: 3, last_line: 103 },
    { n: 1, first_line: 104, last_line: 203 },
    { n: 2, first_line: 204, last_line: 303 },
    { n: 3, first_line: 304, last_line: 363 },
  ]);
  const { rows: format } = await db.pool.query('SELECT header, delimiter FROM imports WHERE id = $1', [id]);
  assert.deepEqual(format, [{ header: ['Email', 'Name', 'Cargo', 'Cidade', 'UF', 'Oportunidade', 'Notas'], delimiter: ';' }]);
  const { rows: multiLine } = await db.pool.query(`SELECT name, job_title FROM leads WHERE email = 'sep3@example.com'`);
  assert.deepEqual(multiLine, [{ name: 'Silva, Ana 3', job_title: 'Head of\r\nSales' }]);

  // Again as a multipart form and from a URL, and again with `sluice import`: the same
  // (unchanged) counts and rejects, the same table.
  for (const send of [form, fromUrl]) {
    const c = await cli(csv);
    const h = await outcome(accepted(await send(csv)));
    assert.equal(c.status, 'completed', c.error ?? '');
    assert.deepEqual(c.rows, { read: 360, inserted: 0, updated: 0, unchanged: 356, rejected: 4 });
    assert.deepEqual(h, { status: c.status, error: c.error, rows: c.rows, rejects: c.rejects }, send.name);
    assert.deepEqual(c.rejects, c1.rejects);
    assert.deepEqual(await leadsSnapshot(db.pool), await leadsSnapshot(ref.pool));
  }
});

test('`sep=,` after a UTF-8 BOM: skipped with the BOM, "," is the delimiter, rows counted from line 3, both ways', async () => {
  // Semicolons in the names: with the hint, "," is the delimiter whatever the rows hold.
  const csv = '\ufeffsep=,\nEmail,Name,Cidade,UF\nbom1@example.com,Souza; Bia,Recife,PE\nnope,Bad; One,Recife,PE\nbom2@example.com,Lima; Caio,Olinda,PE\n';
  const c = await cli(csv);
  assert.equal(c.status, 'completed', c.error ?? '');
  assert.deepEqual(c.rows, { read: 3, inserted: 2, updated: 0, unchanged: 0, rejected: 1 });
  assert.deepEqual(c.rejects, [{ line: 4, field: null, reason: 'email: not an email: "nope"', raw: 'nope,Bad; One,Recife,PE' }]);
  const id = accepted(await raw(csv));
  const h = await outcome(id);
  assert.deepEqual(h, { status: 'completed', error: null, rows: c.rows, rejects: c.rejects });
  const { rows } = await db.pool.query('SELECT header, encoding, delimiter FROM imports WHERE id = $1', [id]);
  assert.deepEqual(rows, [{ header: ['Email', 'Name', 'Cidade', 'UF'], encoding: 'utf-8', delimiter: ',' }]);
  assert.deepEqual(await leadsSnapshot(db.pool), await leadsSnapshot(ref.pool));
  const { rows: names } = await db.pool.query(`SELECT name FROM leads WHERE email LIKE 'bom%' ORDER BY email`);
  assert.deepEqual(names, [{ name: 'Souza; Bia' }, { name: 'Lima; Caio' }]);
});

test('a delimiter given that contradicts the hint: the file is refused naming both, both ways; the same one given is fine', async () => {
  const csv = 'sep=;\r\nEmail;Name\r\nconflict1@example.com;One\r\n';
  const c = await cli(csv, 'leads', ['--delimiter', ',']);
  assert.equal(c.code, 1);
  assert.equal(c.status, 'failed');
  assert.equal(c.error, `invalid file: the first line "sep=;" is Excel's delimiter hint, for ";", but --delimiter "," was given: run it with --delimiter ";" or without --delimiter, or remove that line`);
  assert.equal(c.rows.read, 0);

  const sent = `invalid file: the first line "sep=;" is Excel's delimiter hint, for ";", but it was sent with delimiter ",": send it with delimiter ";" or without a delimiter, or remove that line`;
  const before = await importCount();
  await assertRefused(await raw(csv, '&delimiter=,'), sent, before);
  await assertRefused(await form(csv, [{ name: 'delimiter', value: ',' }]), sent, before);
  await assertRefused(await fromUrl(csv, { delimiter: ',' }), sent, before);
  // A tab is named as such.
  const tabbed = 'sep=\t\nEmail\tName\nconflict2@example.com\tTwo\n';
  const t = await cli(tabbed, 'leads', ['--delimiter', ';']);
  assert.equal(t.error, `invalid file: the first line "sep=\\t" is Excel's delimiter hint, for tab, but --delimiter ";" was given: run it with --delimiter tab or without --delimiter, or remove that line`);
  await assertRefused(
    await raw(tabbed, '&delimiter=%3B'),
    `invalid file: the first line "sep=\\t" is Excel's delimiter hint, for tab, but it was sent with delimiter ";": send it with delimiter tab or without a delimiter, or remove that line`,
    before,
  );

  // The hint's own delimiter given: imported.
  const same = await cli(csv, 'leads', ['--delimiter', ';']);
  assert.equal(same.status, 'completed', same.error ?? '');
  assert.deepEqual(same.rows, { read: 1, inserted: 1, updated: 0, unchanged: 0, rejected: 0 });
  assert.deepEqual(await outcome(accepted(await raw(csv, '&delimiter=%3B'))), { status: 'completed', error: null, rows: same.rows, rejects: [] });
  assert.deepEqual(await leadsSnapshot(db.pool), await leadsSnapshot(ref.pool));
});

test('a first line that only starts with "sep=" (`sep=;Email`) is the header, both ways', async () => {
  // The header's columns are "sep=" (unknown: ignored) and "Email"; the rows start on line 2.
  const csv = 'sep=;Email\r\nx;header1@example.com\r\ny;bad-email\r\nz;header2@example.com\r\n';
  const c = await cli(csv);
  assert.equal(c.status, 'completed', c.error ?? '');
  assert.deepEqual(c.rows, { read: 3, inserted: 2, updated: 0, unchanged: 0, rejected: 1 });
  assert.deepEqual(c.rejects, [{ line: 3, field: null, reason: 'email: not an email: "bad-email"', raw: 'y;bad-email' }]);
  const id = accepted(await raw(csv));
  assert.deepEqual(await outcome(id), { status: 'completed', error: null, rows: c.rows, rejects: c.rejects });
  const { rows } = await db.pool.query('SELECT header, delimiter FROM imports WHERE id = $1', [id]);
  assert.deepEqual(rows, [{ header: ['sep=', 'Email'], delimiter: ';' }]);
  const { rows: parts } = await db.pool.query('SELECT first_line::int, last_line::int FROM import_parts WHERE import_id = $1', [id]);
  assert.deepEqual(parts, [{ first_line: 2, last_line: 4 }]);
  assert.deepEqual(await leadsSnapshot(db.pool), await leadsSnapshot(ref.pool));
});

test('a hint and nothing after it, a hint and a header only, a hint for a character Sluice does not read: the same refusal both ways', async () => {
  const before = await importCount();
  const cases: Array<[string, string]> = [
    ['sep=;', 'invalid file: no header row'],
    ['sep=;\r\n', 'invalid file: no header row'],
    ['sep=;\r\nEmail;Name\r\n', 'invalid file: no data rows after the header'],
    ['sep=:\nEmail:Name\nc@example.com:C\n', `invalid file: the first line "sep=:" is Excel's delimiter hint, for ":", which is not a delimiter Sluice reads (, ; tab |): save the file with one of those`],
  ];
  for (const [csv, message] of cases) {
    const c = await cli(csv);
    assert.deepEqual([c.code, c.status, c.error], [1, 'failed', message], JSON.stringify(csv));
    await assertRefused(await raw(csv), message, before);
  }
});

test('a purchases (fixed-width) file starting with `sep=;` is read as before: that line is its header, which has no document column', async () => {
  const fixture = fs.readFileSync(path.join(import.meta.dirname, '../fixtures/neoway/base_teste_2000.txt'), 'utf8').split('\n').slice(0, 21).join('\n');
  const file = `sep=;\n${fixture}\n`;
  const message = 'invalid file: document (CPF/CNPJ) column missing';
  const c = await cli(file, 'purchases');
  assert.deepEqual([c.code, c.status, c.error], [1, 'failed', message]);
  const before = await importCount();
  const res = await app.inject({ method: 'POST', url: '/imports?pipeline=purchases', headers: { 'content-type': 'text/plain' }, payload: file });
  await assertRefused(res, message, before);
});

test('the splitter from line 2 (what follows a skipped `sep=` line): the header, then parts numbered in the file\'s lines', () => {
  const splitter = new RecordSplitter({ partRecords: 2, quoted: true, delimiter: 0x3b, firstLine: 2 });
  const parts = [...splitter.push(Buffer.from('Email;Name\na@x.com;"A\nB"\nb@x.com;B\nc@x.com;C\n')), splitter.end()].filter((p) => p !== undefined);
  assert.equal(splitter.header?.toString(), 'Email;Name\n');
  assert.deepEqual(parts.map((p) => [p.firstLine, p.lastLine, p.records]), [[3, 5, 2], [6, 6, 1]]);
  // Set after construction, before the first bytes (as the upload does once it has its sample).
  const later = new RecordSplitter({ partRecords: 10, quoted: true });
  later.firstLine = 2;
  assert.deepEqual(later.push(Buffer.from('Email\nx@y.com\n')), []);
  const last = later.end();
  assert.deepEqual(last && [last.firstLine, last.lastLine, last.records, last.data.toString()], [3, 3, 1, 'x@y.com\n']);
});
