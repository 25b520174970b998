/**
 * POST /imports in-process (app.inject) with two workers: a file detected as UTF-8 whose
 * first accent is past the sniffed 64 KiB fails naming the line of that byte (not the whole
 * part's range of lines); `max_reject_ratio` given in the query string, a form field or the
 * JSON of a `{"url"}` import fails an import with too many rejects, nothing imported, and
 * bad values are a 400 with no import created.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { buildServer } from '../../src/http/server.ts';
import type { ImportStatus } from '../../src/intake/index.ts';
import { decodePart } from '../../src/intake/part-job.ts';
import { testDb, type TestDb } from '../helpers/db.ts';
import { leadsCsv, multipart, startIntake, waitForImportEnd, waitForNoLeftovers, type Intake } from './http-helpers.ts';

let db: TestDb;
let intake: Intake;
let app: FastifyInstance;
let files: http.Server;
let filesBase: string;
const REMOTE = leadsCsv(200, 3, 'ratio-url');

before(async () => {
  process.env.SLUICE_PART_ROWS = '1000';
  process.env.SLUICE_FETCH_ALLOW_PRIVATE = '1';
  db = await testDb();
  intake = await startIntake(db, { workers: 2 });
  app = await buildServer(intake.ctx);
  files = http.createServer((req, res) => {
    if (req.url === '/ratio.csv') res.writeHead(200, { 'content-type': 'text/csv' }).end(REMOTE);
    else res.writeHead(404).end();
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

/** GET /imports/<id>, in-process (what waitForImportEnd polls here). */
async function status(id: string): Promise<ImportStatus> {
  return (await app.inject({ method: 'GET', url: `/imports/${id}` })).json() as ImportStatus;
}

async function accepted(res: { statusCode: number; body: string; json(): unknown }): Promise<ImportStatus> {
  assert.equal(res.statusCode, 202, res.body);
  return waitForImportEnd((res.json() as { id: string }).id, status);
}

async function importCount(): Promise<number> {
  const { rows } = await db.pool.query<{ n: number }>('SELECT count(*)::int AS n FROM imports');
  return rows[0]!.n;
}

async function leadCount(prefix: string): Promise<number> {
  const { rows } = await db.pool.query<{ n: number }>(`SELECT count(*)::int AS n FROM leads WHERE email LIKE $1`, [`${prefix}%`]);
  return rows[0]!.n;
}

test('a Windows-1252 accent past the first 64 KiB of a file read as UTF-8 fails naming its line, not its part', async () => {
  // 3,000 rows in parts of 1,000 (lines 2-1001, 1002-2001, 2002-3001); ASCII except one name
  // on line 2502, in the third part, written in Latin-1 (ã is the byte 0xE3).
  const lines = ['Email,Name,Cidade,UF'];
  for (let i = 0; i < 3000; i++) lines.push(`late${i}@example.com,${i === 2500 ? 'João' : 'Ana'} ${i},Recife,PE`);
  const body = Buffer.from(`${lines.join('\n')}\n`, 'latin1');
  assert.ok(body.indexOf(0xe3) > 64 * 1024);
  const s = await accepted(await app.inject({ method: 'POST', url: '/imports?pipeline=leads&file_name=late.csv', headers: { 'content-type': 'text/csv' }, payload: body }));
  assert.equal(s.status, 'failed');
  assert.equal(s.parts.total, 3);
  assert.equal(
    s.error,
    "part 2: invalid file: line 2502 is not valid utf-8 (byte 0xE3, the line's byte 24), the encoding detected from the start of the file (or given with the upload); save the file as UTF-8, or send it with encoding=windows-1252",
  );
  assert.equal(await leadCount('late'), 0);
  // Its staging and part bytes go (dropped just after the import is failed).
  await waitForNoLeftovers('the failed import to be cleaned up', db, s.id, 30_000);
});

test('decodePart: the line and byte of the first invalid byte, whatever the line ends', () => {
  const fail = (first_line: number, text: Buffer) => {
    try {
      decodePart({ encoding: 'utf-8', first_line }, text);
    } catch (err) {
      return (err as Error).message.replace(/, the encoding detected.*$/, '');
    }
    assert.fail('decoded');
  };
  const latin = (s: string) => Buffer.from(s, 'latin1');
  // Valid multi-byte characters before it count as their bytes.
  assert.equal(fail(40, Buffer.concat([Buffer.from('é,1\nç,2\n'), latin('ab,é\n')])), "invalid file: line 42 is not valid utf-8 (byte 0xE9, the line's byte 4)");
  assert.equal(fail(7, latin('a\r\nb\r\nc\r\nJosé\r\n')), "invalid file: line 10 is not valid utf-8 (byte 0xE9, the line's byte 4)");
  // Lone CR line ends (a file without LF): counted at its CRs, as the splitter does.
  assert.equal(fail(2, latin('a\rb\rJosé\r')), "invalid file: line 4 is not valid utf-8 (byte 0xE9, the line's byte 4)");
  // The first invalid byte on its line, the first line of the part; a character cut by the part's end.
  assert.equal(fail(5, latin('\xff\n')), "invalid file: line 5 is not valid utf-8 (byte 0xFF, the line's byte 1)");
  assert.equal(fail(5, Buffer.from([0x61, 0x0a, 0x62, 0xc3])), "invalid file: line 6 is not valid utf-8 (byte 0xC3, the line's byte 2)");
  assert.equal(decodePart({ encoding: 'windows-1252', first_line: 1 }, latin('José\n')), 'José\n');
});

test('max_reject_ratio=0 in the query string, a form field or the JSON fails an upload with rejected rows, nothing imported', async () => {
  // 3 rows of 203 are rejected (bad emails): over 0, under 0.5.
  const raw = await accepted(await app.inject({
    method: 'POST', url: '/imports?pipeline=leads&file_name=q.csv&max_reject_ratio=0', headers: { 'content-type': 'text/csv' }, payload: leadsCsv(200, 3, 'ratio-q'),
  }));
  const form = await accepted(await app.inject({
    method: 'POST', url: '/imports?max_reject_ratio=1',
    ...multipart([{ name: 'pipeline', value: 'leads' }, { name: 'max_reject_ratio', value: '0' }, { name: 'file', filename: 'f.csv', content: leadsCsv(200, 3, 'ratio-f') }]),
  }));
  const url = await accepted(await app.inject({
    method: 'POST', url: '/imports', payload: { pipeline: 'leads', url: `${filesBase}/ratio.csv`, max_reject_ratio: 0 },
  }));
  for (const [s, prefix] of [[raw, 'ratio-q'], [form, 'ratio-f'], [url, 'ratio-url']] as const) {
    assert.equal(s.status, 'failed', prefix);
    assert.equal(s.error, 'rejected 3 of 203 rows (1.5%), above max-reject-ratio 0: nothing was imported');
    assert.equal(await leadCount(prefix), 0, prefix);
  }
  const { rows } = await db.pool.query(`SELECT options->'maxRejectRatio' AS r FROM imports WHERE id = ANY ($1::uuid[]) ORDER BY created_at`, [[raw.id, form.id, url.id]]);
  assert.deepEqual(rows, [{ r: 0 }, { r: 0 }, { r: 0 }]);

  // Under the limit: completed, the rejects kept as always.
  const half = await accepted(await app.inject({
    method: 'POST', url: '/imports?pipeline=leads&max_reject_ratio=.5', headers: { 'content-type': 'text/csv' }, payload: leadsCsv(200, 3, 'ratio-h'),
  }));
  assert.equal(half.status, 'completed', half.error ?? '');
  assert.deepEqual(half.rows, { read: 203, inserted: 200, updated: 0, unchanged: 0, rejected: 3 });
});

test('a max_reject_ratio that is not a number from 0 to 1 is a 400 invalid_input, and no import is created', async () => {
  const before = await importCount();
  const csv = leadsCsv(5, 0, 'ratio-bad');
  const refused = (res: { statusCode: number; json(): unknown }, what: string) => {
    assert.equal(res.statusCode, 400, what);
    const { error } = res.json() as { error: { code: string; message: string } };
    assert.equal(error.code, 'invalid_input', what);
    assert.match(error.message, /max_reject_ratio"? must be a number from 0 to 1/, what);
  };
  for (const bad of ['2', '1.5', '-0', '-0.1', 'abc', '0x1', '1e-1', 'NaN', ' 0']) {
    const q = `/imports?pipeline=leads&max_reject_ratio=${encodeURIComponent(bad)}`;
    refused(await app.inject({ method: 'POST', url: q, headers: { 'content-type': 'text/csv' }, payload: csv }), `query ${bad}`);
  }
  refused(await app.inject({ method: 'POST', url: '/imports', ...multipart([{ name: 'pipeline', value: 'leads' }, { name: 'max_reject_ratio', value: '7' }, { name: 'file', filename: 'f.csv', content: csv }]) }), 'form 7');
  for (const bad of [2, -1, '0', null, true]) {
    refused(await app.inject({ method: 'POST', url: '/imports', payload: { pipeline: 'leads', url: `${filesBase}/ratio.csv`, max_reject_ratio: bad } }), `json ${JSON.stringify(bad)}`);
  }
  // Given twice in the query string.
  const twice = await app.inject({ method: 'POST', url: '/imports?pipeline=leads&max_reject_ratio=0&max_reject_ratio=1', headers: { 'content-type': 'text/csv' }, payload: csv });
  assert.equal(twice.statusCode, 400);
  assert.match(twice.json().error.message, /max_reject_ratio must be given once/);
  assert.equal(await importCount(), before);
});
