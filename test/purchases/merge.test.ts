/**
 * The purchases target is named by its key (identity 'key': no `id` column, the document is
 * the primary key). Its merges, prepared chunks (tuple ids, no drawn ids) and whole-stage
 * merges alike (rows of a key met before, updated by key), must give the tables and counts
 * of merging the whole file at once, from the CLI and through the intake, and a record
 * changed by a writer outside Sluice between a chunk's preparation and its write must fail
 * the import. Real Postgres.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { after, test } from 'node:test';
import { runImport } from '../../src/engine/import-runner.ts';
import { acceptUpload, importStatus } from '../../src/intake/index.ts';
import { purchases } from '../../src/pipelines/purchases.ts';
import { testDb, type TestDb } from '../helpers/db.ts';
import { importHeldBeforeWrite } from '../helpers/processes.ts';
import { startIntake, waitFor } from '../intake/http-helpers.ts';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-purchases-merge-'));
after(() => fs.rmSync(dir, { recursive: true, force: true }));

const pad = (s: string, n: number) => s.padEnd(n);
const HEADER = `${pad('CPF', 19)}${pad('PRIVATE', 12)}${pad('INCOMPLETO', 12)}${pad('DATA DA ÚLTIMA COMPRA', 22)}${pad('TICKET MÉDIO', 22)}${pad('TICKET DA ÚLTIMA COMPRA', 24)}${pad('LOJA MAIS FREQUÊNTE', 20)}LOJA DA ÚLTIMA COMPRA`;
function row(doc: string, ticket: string, date = '2012-02-29'): string {
  return `${pad(doc, 19)}${pad('0', 12)}${pad('1', 12)}${pad(date, 22)}${pad(ticket, 22)}${pad(ticket, 24)}${pad('79.379.491/0008-50', 20)}79.379.491/0001-83`;
}
const file = (rows: string[]) => `${HEADER}\n${rows.join('\n')}\n`;

const E1 = '111.444.777-35';
const E2 = '529.982.247-25';
const E3 = '11.444.777/0001-61';
const A = '000.000.001-91';
const B = '123.456.789-09';
/** Existing records, imported through the pipeline itself. */
const SEED = file([row(E1, '1,00'), row(E2, '2,00'), row(E3, '3,00')]);
const ROWS = [
  row(A, '10,00'), // new
  row(E1, '11,00'), // existing, changed
  row(E2, '2,00'), // existing, unchanged
  row(B, '20,00'), // new...
  row(B, '21,00'), // ...and changed by a later row: 1 inserted, 1 updated
  row(E3, '3,00'), // existing, unchanged by this row...
  row(E3, '33,00'), // ...changed by this one: both rows updated
  row('999.999.999-99', '1,00', '2012-02-30'), // impossible date: rejected
];

async function seeded(): Promise<TestDb> {
  const db = await testDb();
  const seedFile = path.join(dir, 'seed.txt');
  fs.writeFileSync(seedFile, SEED);
  const r = await runImport({ pool: db.pool, pipeline: purchases, file: seedFile });
  assert.equal(r.status, 'completed', r.error);
  return db;
}

async function table(db: TestDb) {
  const { rows } = await db.pool.query(`SELECT to_jsonb(p) - 'created_at' - 'updated_at' AS r FROM purchases p ORDER BY document`);
  return rows.map((r) => r.r);
}

async function cli(size: number) {
  const db = await seeded();
  try {
    const f = path.join(dir, `file-${size}.txt`);
    fs.writeFileSync(f, file(ROWS));
    process.env.SLUICE_CHUNK_ROWS = String(size);
    const r = await runImport({ pool: db.pool, pipeline: purchases, file: f });
    assert.equal(r.status, 'completed', r.error);
    const again = await runImport({ pool: db.pool, pipeline: purchases, file: f });
    return { rows: r.rows, again: again.rows, table: await table(db), timings: r.timings };
  } finally {
    delete process.env.SLUICE_CHUNK_ROWS;
    await db.close();
  }
}

test('the purchases table has no id: the document is its primary key', async () => {
  const db = await testDb();
  try {
    const { rows } = await db.pool.query(
      `SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
        WHERE i.indrelid = 'purchases'::regclass AND i.indisprimary`,
    );
    assert.deepEqual(rows.map((r) => r.attname), ['document']);
    const id = await db.pool.query(`SELECT 1 FROM pg_attribute WHERE attrelid = 'purchases'::regclass AND attname = 'id' AND NOT attisdropped`);
    assert.equal(id.rowCount, 0);
  } finally {
    await db.close();
  }
});

test('chunks of 1, 2 and 1,000 rows (prepared, then the rows of keys met before by key): the counts and table of one merge', async () => {
  const whole = await cli(1000);
  assert.deepEqual(whole.rows, { read: 8, inserted: 2, updated: 4, unchanged: 1, rejected: 1 });
  const tickets = Object.fromEntries(whole.table.map((r: { document: string; avg_ticket: number }) => [r.document, r.avg_ticket]));
  assert.deepEqual(tickets, { '00000000191': 10, '11144477735': 11, '52998224725': 2, '12345678909': 21, '11444777000161': 33 });
  for (const size of [1, 2]) {
    const r = await cli(size);
    assert.ok(r.timings.prepare !== undefined, `chunks prepared on the second connection: ${JSON.stringify(r.timings)}`);
    assert.deepEqual(r.rows, whole.rows, `counts with ${size}-row chunks`);
    assert.deepEqual(r.again, whole.again, `re-import counts with ${size}-row chunks`);
    assert.deepEqual(r.table, whole.table, `table with ${size}-row chunks`);
  }
  assert.equal(whole.again.inserted, 0);
  assert.equal(whole.again.rejected, 1);
});

test('through the intake, parts of 1 and 3 rows: the same counts and table', async () => {
  const reference = await cli(1000);
  for (const partRows of [1, 3]) {
    const db = await seeded();
    const running = await startIntake(db, { workers: 2 });
    try {
      const { id } = await acceptUpload(running.ctx, { pipeline: 'purchases', fileName: 'p.txt', source: 'test' }, Readable.from([Buffer.from(file(ROWS))]), { partRows });
      const s = await waitFor(`import with ${partRows}-row parts`, async () => {
        const x = await importStatus(db.pool, id);
        return x && ['completed', 'failed', 'cancelled'].includes(x.status) ? x : undefined;
      });
      assert.equal(s.status, 'completed', s.error ?? '');
      assert.deepEqual(s.rows, reference.rows, `counts with ${partRows}-row parts`);
      assert.deepEqual(await table(db), reference.table, `table with ${partRows}-row parts`);
    } finally {
      await running.stop();
      await db.close();
    }
  }
});

test("a record changed outside Sluice between its chunk's preparation and its write: the import fails, nothing written", async () => {
  const db = await seeded();
  try {
    const f = path.join(dir, 'outside.txt');
    fs.writeFileSync(f, file(ROWS));
    const { code, out, before } = await importHeldBeforeWrite({
      db, file: f, pipeline: 'purchases', pause: path.join(dir, 'pause-apply'),
      // E1 is in the first chunk, exists and is changed by it: another writer updates it meanwhile.
      meanwhile: () => db.pool.query(`UPDATE purchases SET private = true WHERE document = '11144477735'`),
      snapshot: () => table(db),
    });
    assert.equal(code, 1);
    assert.equal(out.status, 'failed');
    assert.match(out.error, /changed outside this import/);
    assert.deepEqual(await table(db), before, 'nothing written by the import');
  } finally {
    await db.close();
  }
});

test('tickets: rounded to cents as stored (a re-import is unchanged), over 12 digits before the comma a reject of its row', async () => {
  const db = await testDb();
  try {
    const f = path.join(dir, 'money.txt');
    fs.writeFileSync(f, file([row(A, '1,999'), row(B, '123456789012345,00'), row(E1, '999999999999,99')]));
    const r = await runImport({ pool: db.pool, pipeline: purchases, file: f });
    assert.equal(r.status, 'completed', r.error);
    assert.deepEqual(r.rows, { read: 3, inserted: 2, updated: 0, unchanged: 0, rejected: 1 });
    const rej = (await db.pool.query('SELECT line, reason FROM import_rejects WHERE import_id = $1', [r.id])).rows;
    assert.deepEqual(rej, [{ line: 3, reason: 'avg_ticket: out of range (at most 12 digits before the comma): "123456789012345,00"' }]);
    const { rows } = await db.pool.query(`SELECT document, avg_ticket FROM purchases ORDER BY document`);
    assert.deepEqual(rows, [{ document: '00000000191', avg_ticket: '2.00' }, { document: '11144477735', avg_ticket: '999999999999.99' }]);
    const again = await runImport({ pool: db.pool, pipeline: purchases, file: f });
    assert.deepEqual(again.rows, { read: 3, inserted: 0, updated: 0, unchanged: 2, rejected: 1 });
  } finally {
    await db.close();
  }
});

test('a malformed first row is rejected alone: the header takes its columns from most of the first rows (CLI and intake)', async () => {
  const db = await testDb();
  const intake = await startIntake(db, { workers: 2 });
  try {
    // The first row lacks its ticket: 7 fields.
    const text = file([row(A, '1,00').replace(/^(.{65})\S+\s+/, '$1'), row(B, '2,00'), row(E1, '3,00'), row(E2, '4,00')]);
    const f = path.join(dir, 'bad-first.txt');
    fs.writeFileSync(f, text);
    const r = await runImport({ pool: db.pool, pipeline: purchases, file: f });
    assert.equal(r.status, 'completed', r.error);
    assert.deepEqual(r.rows, { read: 4, inserted: 3, updated: 0, unchanged: 0, rejected: 1 });
    const rej = (await db.pool.query('SELECT line, reason FROM import_rejects WHERE import_id = $1', [r.id])).rows;
    assert.deepEqual(rej, [{ line: 2, reason: 'expected 8 fields, found 7' }]);
    await db.pool.query('TRUNCATE purchases');
    const { id } = await acceptUpload(intake.ctx, { pipeline: 'purchases', fileName: 'bad-first.txt', source: 'raw' }, Readable.from([Buffer.from(text)]));
    const s = await waitFor('the upload to finish', async () => {
      const st = await importStatus(db.pool, id);
      return st && st.status !== 'queued' && st.status !== 'running' ? st : undefined;
    });
    assert.equal(s.status, 'completed', s.error ?? '');
    assert.deepEqual(s.rows, { read: 4, inserted: 3, updated: 0, unchanged: 0, rejected: 1 });
  } finally {
    await intake.stop();
    await db.close();
  }
});

test('alphanumeric CNPJs are stored with their letters, as documents and as stores', async () => {
  const db = await testDb();
  try {
    const f = path.join(dir, 'alnum.txt');
    const store = (r: string) => r.replace('79.379.491/0008-50', '12.ABC.345/01DE-35');
    fs.writeFileSync(f, file([store(row('12.ABC.345/01DE-35', '1,00')), row('12.XYZ.345/01DE-35', '2,00'), row(A, '3,00')]));
    const r = await runImport({ pool: db.pool, pipeline: purchases, file: f });
    assert.equal(r.status, 'completed', r.error);
    assert.deepEqual(r.rows, { read: 3, inserted: 3, updated: 0, unchanged: 0, rejected: 0 });
    const { rows } = await db.pool.query(
      `SELECT document, document_type, document_valid, most_frequent_store, most_frequent_store_valid FROM purchases ORDER BY document`,
    );
    assert.deepEqual(rows, [
      { document: '00000000191', document_type: 'cpf', document_valid: true, most_frequent_store: '79379491000850', most_frequent_store_valid: true },
      { document: '12ABC34501DE35', document_type: 'cnpj', document_valid: true, most_frequent_store: '12ABC34501DE35', most_frequent_store_valid: true },
      { document: '12XYZ34501DE35', document_type: 'cnpj', document_valid: false, most_frequent_store: '79379491000850', most_frequent_store_valid: true },
    ]);
  } finally {
    await db.close();
  }
});

test('a file without one of the 8 columns fails before anything is written (not NULLs in every row)', async () => {
  const db = await testDb();
  try {
    const f = path.join(dir, 'no-ticket.txt');
    // TICKET MÉDIO's header and values cut out of every line.
    const cut = (l: string) => l.slice(0, 65) + l.slice(87);
    fs.writeFileSync(f, file([row(A, '1,00'), row(B, '2,00')]).split('\n').map(cut).join('\n'));
    const r = await runImport({ pool: db.pool, pipeline: purchases, file: f });
    assert.equal(r.status, 'failed');
    assert.equal(r.error, 'invalid file: no column "ticket medio", which the purchases pipeline requires');
    assert.equal((await db.pool.query('SELECT count(*)::int AS n FROM purchases')).rows[0].n, 0);
  } finally {
    await db.close();
  }
});
