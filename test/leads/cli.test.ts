/**
 * The CLI as a subprocess (`./bin/sluice`): import --json and exit codes, inspect, rejects,
 * db url, gen leads and gen csv.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { repoRoot } from '../../src/config.ts';
import { checkFileFormat } from '../../src/intake/accept.ts';
import { getPipeline } from '../../src/pipelines/index.ts';
import { testDbAndDir, type TestDb } from '../helpers/db.ts';

let db: TestDb;
const dir = testDbAndDir('sluice-cli-', (d) => (db = d));

function sluice(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(path.join(repoRoot, 'bin', 'sluice'), args, {
      env: { ...process.env, DATABASE_URL: db.url },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

function write(name: string, content: string): string {
  const file = path.join(dir, name);
  fs.writeFileSync(file, content);
  return file;
}

test('import --json prints one result object; exit 0 when completed', async () => {
  const file = write('ok.csv', 'Email,Name\ncli1@example.com,One\ncli2@example.com,Two\nnope,Bad\n');
  const r = await sluice(['import', file, '--pipeline', 'leads', '--json']);
  assert.equal(r.code, 0, r.stderr);
  const out = JSON.parse(r.stdout);
  assert.deepEqual(Object.keys(out), ['id', 'pipeline', 'status', 'rows', 'field_rejects', 'duration_ms']);
  assert.equal(out.status, 'completed');
  assert.deepEqual(out.rows, { read: 3, inserted: 2, updated: 0, unchanged: 0, rejected: 1 });
  assert.equal(out.field_rejects, 0);
  assert.match(r.stderr, /rows\/s/, 'progress goes to stderr');

  // The whole-row reject is counted; no field reject, so no line about them.
  assert.doesNotMatch(r.stderr, /field value/);

  const csv = await sluice(['rejects', out.id]);
  assert.equal(csv.code, 0, csv.stderr);
  assert.equal(csv.stdout, 'line,field,reason,raw\r\n4,,"email: not an email: ""nope""","nope,Bad"\r\n');
  const nd = await sluice(['rejects', out.id, '--format', 'ndjson']);
  assert.deepEqual(JSON.parse(nd.stdout.trim()), { line: 4, field: null, reason: 'email: not an email: "nope"', raw: 'nope,Bad' });
});

test('a failed import exits non-zero with the error in the JSON', async () => {
  const file = write('nokey.csv', 'Name\nNo Email\n');
  const r = await sluice(['import', file, '--pipeline', 'leads', '--json']);
  assert.equal(r.code, 1);
  const out = JSON.parse(r.stdout);
  assert.equal(out.status, 'failed');
  assert.equal(out.error, 'invalid file: email information missing');
});

test('usage errors exit 2 with a clear message', async () => {
  const file = write('u.csv', 'Email\nx@example.com\n');
  const unknown = await sluice(['import', file, '--pipeline', 'nope']);
  assert.equal(unknown.code, 2);
  assert.match(unknown.stderr, /unknown pipeline "nope" \(available: /);
  const ratio = await sluice(['import', file, '--pipeline', 'leads', '--max-reject-ratio', '2']);
  assert.equal(ratio.code, 2);
  // As over HTTP: an empty value is no ratio (Number('') made it 0).
  const empty = await sluice(['import', file, '--pipeline', 'leads', '--max-reject-ratio', '']);
  assert.equal(empty.code, 2);
  assert.match(empty.stderr, /--max-reject-ratio must be a number between 0 and 1, got ""/);
  const missing = await sluice(['import', path.join(dir, 'missing.csv'), '--pipeline', 'leads']);
  assert.equal(missing.code, 2);
  assert.match(missing.stderr, /no such file/);
  const directory = await sluice(['import', dir, '--pipeline', 'leads']);
  assert.equal(directory.code, 2);
  assert.match(directory.stderr, /is not a file \(a directory\)/);
});

test('--delimiter for a fixed-width pipeline is bad usage (exit 2), in the words POST /imports refuses it with; nothing imported', async () => {
  const fixture = fs.readFileSync(path.join(repoRoot, 'test', 'fixtures', 'neoway', 'base_teste_2000.txt'), 'utf8');
  const file = write('purchases-5.txt', `${fixture.split('\n').slice(0, 6).join('\n')}\n`);
  const r = await sluice(['import', file, '--pipeline', 'purchases', '--delimiter', ';', '--json']);
  assert.equal(r.code, 2, r.stderr);
  assert.equal(r.stdout, '');
  let http = '';
  try {
    checkFileFormat(getPipeline('purchases'), { delimiter: ';' });
  } catch (err) {
    http = (err as Error).message;
  }
  assert.equal(http, 'delimiter is for CSV files: the purchases pipeline reads fixed-width files, whose columns are not delimited');
  assert.equal(r.stderr, `sluice: --${http} [invalid_input]\n`);
  const { rows } = await db.pool.query(`SELECT count(*)::int AS n FROM imports WHERE pipeline = 'purchases'`);
  assert.deepEqual(rows, [{ n: 0 }]);
});

test('--encoding takes the labels POST /imports takes (latin1...); a file not UTF-8 past its start says which flag imports it', async () => {
  // ASCII over the first 64 KiB (detected as UTF-8), then a Latin-1 accent.
  const rows = Array.from({ length: 2500 }, (_, i) => `enc${i}@example.com,Ana ${i}`);
  const file = path.join(dir, 'late-latin1.csv');
  fs.writeFileSync(file, Buffer.from(`Email,Name\n${rows.join('\n')}\nenc-joao@example.com,João\n`, 'latin1'));
  const detected = await sluice(['import', file, '--pipeline', 'leads', '--json']);
  assert.equal(detected.code, 1);
  assert.match(JSON.parse(detected.stdout).error, /not valid UTF-8 \(if it is Latin-1\/windows-1252, import it with --encoding windows-1252\)$/);
  const forced = await sluice(['import', file, '--pipeline', 'leads', '--json', '--encoding', 'Latin1']);
  assert.equal(forced.code, 0, forced.stderr);
  assert.equal(JSON.parse(forced.stdout).rows.inserted, 2501);
  const { rows: joao } = await db.pool.query(`SELECT name FROM leads WHERE email = 'enc-joao@example.com'`);
  assert.deepEqual(joao, [{ name: 'João' }]);
  const bad = await sluice(['import', file, '--pipeline', 'leads', '--encoding', 'ebcdic']);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /--encoding must be utf-8 or windows-1252 \(or a label of either: latin1, iso-8859-1, cp1252\.\.\.\), got ebcdic/);
});

test('--encoding that the first bytes contradict is refused, not imported: a BOM file given windows-1252, Latin-1 bytes given utf-8', async () => {
  // Read as windows-1252, the BOM would become "ï»¿" in front of "Name": a column the leads
  // pipeline no longer knows, its values dropped without a word.
  const bom = write('bom.csv', '\uFEFFName,Email\nAna,bom@example.com\n');
  const asLatin = await sluice(['import', bom, '--pipeline', 'leads', '--json', '--encoding', 'windows-1252']);
  assert.equal(asLatin.code, 1, asLatin.stderr);
  assert.equal(
    JSON.parse(asLatin.stdout).error,
    'invalid file: it was given --encoding windows-1252, but it starts with a UTF-8 byte order mark; run it with --encoding utf-8, or without --encoding',
  );
  const latin = path.join(dir, 'latin1.csv');
  fs.writeFileSync(latin, Buffer.from('Email,Name\njoao-enc@example.com,João\n', 'latin1'));
  const asUtf8 = await sluice(['import', latin, '--pipeline', 'leads', '--json', '--encoding', 'utf-8']);
  assert.equal(asUtf8.code, 1, asUtf8.stderr);
  assert.equal(
    JSON.parse(asUtf8.stdout).error,
    'invalid file: it was given --encoding utf-8, but its first bytes are not valid UTF-8; save the file as UTF-8, or run it with --encoding windows-1252',
  );
  const { rows } = await db.pool.query(`SELECT email FROM leads WHERE email IN ('bom@example.com', 'joao-enc@example.com')`);
  assert.deepEqual(rows, []);
  // Without --encoding both are read right.
  const plain = await sluice(['import', bom, '--pipeline', 'leads', '--json']);
  assert.equal(plain.code, 0, plain.stderr);
  assert.deepEqual((await db.pool.query(`SELECT name FROM leads WHERE email = 'bom@example.com'`)).rows, [{ name: 'Ana' }]);
});

test('inspect --json shows what Sluice detects', async () => {
  const file = write('inspect.csv', 'Email;Nome\n"a@example.com";"Silva; Ana"\n');
  const r = await sluice(['inspect', file, '--json']);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout), {
    format: 'csv',
    delimiter: ';',
    encoding: 'utf-8',
    header: ['Email', 'Nome'],
    rows: [['a@example.com', 'Silva; Ana']],
  });
});

test('db url prints the connection URL', async () => {
  const r = await sluice(['db', 'url']);
  assert.equal(r.code, 0);
  assert.equal(r.stdout.trim(), db.url);
});

test('gen leads inserts set-based; gen csv writes the original format with existing emails', async () => {
  const g = await sluice(['gen', 'leads', '2000']);
  assert.equal(g.code, 0, g.stderr);
  const { rows } = await db.pool.query(`SELECT count(*)::int AS n FROM leads WHERE email LIKE 'lead-%'`);
  assert.equal(rows[0].n, 2000);
  const out = path.join(dir, 'gen.csv');
  const c = await sluice(['gen', 'csv', '1000', '--out', out, '--existing', '0.3']);
  assert.equal(c.code, 0, c.stderr);
  const lines = fs.readFileSync(out, 'utf8').trimEnd().split('\n');
  assert.equal(lines[0], 'Email,Nome,Twitter,Website,Facebook,Linkedin,Phone,City,State,Tags,Opportunity,Job Title,Available for mailing');
  assert.equal(lines.length, 1001);
  const imp = await sluice(['import', out, '--pipeline', 'leads', '--json', '--no-progress']);
  const res = JSON.parse(imp.stdout);
  assert.deepEqual(res.rows, { read: 1000, inserted: 700, updated: res.rows.updated, unchanged: res.rows.unchanged, rejected: 0 });
  assert.equal(res.rows.updated + res.rows.unchanged, 300);
});

test('field rejects (the row imported without the value) are told on stderr, with where to see them, and counted by --json', async () => {
  const file = write('fields.csv', 'Email,State\nfield1@example.com,Sao Paulo\nfield2@example.com,XYZ\nfield3@example.com,SP\n');
  const r = await sluice(['import', file, '--pipeline', 'leads', '--no-progress']);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /inserted 3, updated 0, unchanged 0, rejected 0 /);
  const id = /^import (\S+) completed/.exec(r.stdout)?.[1];
  assert.ok(id, r.stdout);
  assert.equal(r.stderr, `2 field values rejected (their rows imported without them)\nsee the rejects: sluice rejects ${id}\n`);
  // With --json, in the object (`rejected` counts whole rows only).
  const j = await sluice(['import', write('fields2.csv', 'Email,State\nfield4@example.com,XYZ\n'), '--pipeline', 'leads', '--json', '--no-progress']);
  assert.equal(j.code, 0, j.stderr);
  const out = JSON.parse(j.stdout);
  assert.deepEqual([out.rows.rejected, out.field_rejects], [0, 1]);
  // A failed import imported no row, so dropped no value of one (a whole-row reject over the
  // ratio fails it; its other row's field reject is stored, but nothing was imported).
  const failed = await sluice(['import', write('fields3.csv', 'Email,State\nfield5@example.com,XYZ\nnope,SP\n'), '--pipeline', 'leads', '--json', '--no-progress', '--max-reject-ratio', '0.1']);
  assert.equal(failed.code, 1, failed.stderr);
  const f = JSON.parse(failed.stdout);
  assert.deepEqual([f.status, f.rows.rejected, f.field_rejects], ['failed', 1, 0]);
  const text = await sluice(['import', path.join(dir, 'fields3.csv'), '--pipeline', 'leads', '--no-progress', '--max-reject-ratio', '0.1']);
  assert.doesNotMatch(text.stderr, /field value/);
});
