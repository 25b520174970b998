/**
 * Rows sharing an email (README, "The lead import rules"): the rows of a key met again
 * before its chunk is merged are folded together, so importing a file twice reports every
 * row unchanged and writes nothing; and the place (city and state) a key's rows give is
 * taken whole from the first row naming a city or a state, whether the rows are folded
 * together or split (the first one merged with its chunk, the others last).
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import type { ImportResult } from '../../src/engine/import-runner.ts';
import { importText as importLeads } from './import-text.ts';
import { testDb, type TestDb } from '../helpers/db.ts';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-repeats-'));
after(() => fs.rmSync(dir, { recursive: true, force: true }));

/** The reviewer's file: a@x.com on rows 1, 2 and 4 (spelled three ways), b@x.com once. */
const REPEATS = 'Name,Email,Tags,Job Title,Phone,Opportunity\nA1,A@x.com,t1,,,\nA2, a@X.COM ,"t2,t1",Dev,(11) 9999-0000,yes\nB,b@x.com,,,,\nA3,a@x.com,,,12345,no\n';

/**
 * Other emails, with a long name, that put a key's later rows past the parser's first batch
 * (128 KiB, BATCH_BYTES in import-runner.ts; 1,000 rows of 200 bytes): in chunks of
 * SPLIT rows, the chunk holding a key's first row is merged before its repeats are read,
 * so they are merged last, apart from it.
 */
const FILLER = Array.from({ length: 1_000 }, (_, i) => ({ email: `filler${i}@x.com`, name: `Filler ${'x'.repeat(180)} ${i}` }));
/** A chunk size that merges chunks while the first batch is parsed (not too many of them: each is a merge). */
const SPLIT = 50;

const importText = (db: TestDb, text: string, size?: number): Promise<ImportResult> => importLeads(dir, db, text, size);

/** Every lead with its contact details and place; with `stamps`, when each was last written. */
async function snapshot(db: TestDb, stamps = false) {
  const { rows } = await db.pool.query(
    `SELECT l.email, l.name, l.job_title, l.opportunity, l.tags, li.mobile_phone, c.name AS city, s.acronym AS state
            ${stamps ? ', l.updated_at, li.updated_at AS info_updated_at' : ''}
       FROM leads l LEFT JOIN lead_infos li ON li.lead_id = l.id
       LEFT JOIN cities c ON c.id = l.city_id LEFT JOIN states s ON s.id = l.state_id
      ORDER BY l.email`,
  );
  return rows as Array<Record<string, unknown>>;
}

/** Runs `f` on a fresh database, dropped afterwards. */
async function withDb<T>(f: (db: TestDb) => Promise<T>): Promise<T> {
  const db = await testDb();
  try {
    return await f(db);
  } finally {
    await db.close();
  }
}

const A = { email: 'a@x.com', name: 'A3', job_title: 'Dev', opportunity: false, tags: ['t1', 't2'], mobile_phone: '1199990000', city: null, state: null };
const B = { email: 'b@x.com', name: 'B', job_title: null, opportunity: null, tags: [], mobile_phone: null, city: null, state: null };

test('a file repeating an email within one chunk, imported twice: the second import is all unchanged and writes nothing', async () => {
  // Adaptive chunks, then fixed sizes: one chunk for the whole file (4, 1000), or chunks of
  // 1 and 2 rows merged after the repeats were read (the file is one parser batch).
  for (const size of [undefined, 4, 1000, 1, 2]) {
    await withDb(async (db) => {
      const first = await importText(db, REPEATS, size);
      assert.deepEqual(first.rows, { read: 4, inserted: 2, updated: 2, unchanged: 0, rejected: 0 }, `first import, chunks of ${size ?? 'adaptive'}`);
      assert.deepEqual(await snapshot(db), [A, B], `chunks of ${size ?? 'adaptive'}`);
      const before = await snapshot(db, true);
      const second = await importText(db, REPEATS, size);
      assert.deepEqual(second.rows, { read: 4, inserted: 0, updated: 0, unchanged: 4, rejected: 0 }, `second import, chunks of ${size ?? 'adaptive'}`);
      assert.deepEqual(await snapshot(db, true), before, `nothing written, updated_at kept (chunks of ${size ?? 'adaptive'})`);
    });
  }
});

test('a repeat read after the chunk of its first row was merged: the same final values as one chunk', async () => {
  // a@x.com's first row, 1,000 other emails, then a@x.com's other rows.
  const lines = REPEATS.trimEnd().split('\n');
  const text = `${[lines[0], lines[1], ...FILLER.map((f) => `${f.name},${f.email},,,,`), lines[2], lines[3], lines[4]].join('\n')}\n`;
  const run = (size: number) =>
    withDb(async (db) => {
      const first = await importText(db, text, size);
      const table = await snapshot(db);
      const second = await importText(db, text, size);
      assert.deepEqual(await snapshot(db), table, `a re-import changes no value (chunks of ${size})`);
      return { first: first.rows, second: second.rows, table };
    });
  const whole = await run(100_000);
  assert.deepEqual(whole.first, { read: 1_004, inserted: 1_002, updated: 2, unchanged: 0, rejected: 0 });
  assert.deepEqual(whole.second, { read: 1_004, inserted: 0, updated: 0, unchanged: 1_004, rejected: 0 });
  assert.deepEqual(whole.table.find((l) => l.email === 'a@x.com'), A);
  const split = await run(SPLIT);
  assert.deepEqual(split.first, whole.first);
  assert.deepEqual(split.table, whole.table);
  // The README's exception: a@x.com's first row was merged with its chunk, its others last,
  // so a re-import rewrites the lead (back to the same values) and reports its 3 rows updated.
  assert.deepEqual(split.second, { read: 1_004, inserted: 0, updated: 3, unchanged: 1_001, rejected: 0 });
});

/** Rows of one email each, in file order, and the place the README's rule gives them. */
const PLACES: Array<{ email: string; rows: Array<[string, string]>; place: [string | null, string | null] }> = [
  // The reviewer's case: the first row names a state only; the city of a later row is not added.
  { email: 'p1@x.com', rows: [['', 'SP'], ['Campinas', 'SP']], place: [null, 'SP'] },
  // A state only first, then a city with another state: the first row's state alone.
  { email: 'q@x.com', rows: [['', 'RJ'], ['Recife', 'PE']], place: [null, 'RJ'] },
  { email: 'r@x.com', rows: [['', ''], ['Natal', ''], ['Niterói', 'RJ']], place: ['Natal', null] },
  { email: 's@x.com', rows: [['', ''], ['', 'BA'], ['Salvador', 'BA']], place: [null, 'BA'] },
  { email: 't@x.com', rows: [['Campinas', 'SP'], ['', 'RJ'], ['Recife', 'PE']], place: ['Campinas', 'SP'] },
];

/** Each email's first row, then `between` rows of other emails, then the emails' other rows. */
function placesFile(between: typeof FILLER): string {
  const row = (email: string, [city, state]: [string, string]) => `${email},,${city},${state}`;
  return `${[
    'Email,Name,City,State',
    ...PLACES.map((p) => row(p.email, p.rows[0]!)),
    ...between.map((f) => `${f.email},${f.name},,`),
    ...PLACES.flatMap((p) => p.rows.slice(1).map((r) => row(p.email, r))),
  ].join('\n')}\n`;
}

test('the place of an email on several rows is the first row naming a city or a state, whatever the chunks', async () => {
  // One parser batch: every key's rows are folded together whatever the chunks. With the
  // filler and small chunks, each key's first row is merged with its chunk, its others last.
  for (const [what, text, sizes] of [['one batch', placesFile([]), [1, 2, 100_000]], ['repeats after a merged chunk', placesFile(FILLER), [10, SPLIT, 100_000]]] as const) {
    const tables = [];
    for (const size of sizes) {
      const table = await withDb(async (db) => {
        const r = await importText(db, text, size);
        assert.equal(r.rows.rejected, 0);
        return snapshot(db);
      });
      for (const p of PLACES) {
        const l = table.find((x) => x.email === p.email)!;
        assert.deepEqual([l.city, l.state], p.place, `${p.email}, ${what}, chunks of ${size}`);
      }
      tables.push(table);
    }
    assert.deepEqual(tables[0], tables[2], `${what}: chunks of ${sizes[0]} and the whole file`);
    assert.deepEqual(tables[1], tables[2], `${what}: chunks of ${sizes[1]} and the whole file`);
  }
});

test('a lead that had no place takes the first row naming one, however its rows are split', async () => {
  for (const size of [SPLIT, 100_000]) {
    await withDb(async (db) => {
      await db.pool.query(`INSERT INTO leads (email, name) SELECT email, 'Old' FROM unnest($1::text[]) email`, [PLACES.map((p) => p.email)]);
      const r = await importText(db, placesFile(FILLER), size);
      assert.equal(r.rows.inserted, FILLER.length, `chunks of ${size}`);
      const table = await snapshot(db);
      for (const p of PLACES) {
        const l = table.find((x) => x.email === p.email)!;
        assert.deepEqual([l.city, l.state], p.place, `${p.email}, chunks of ${size}`);
      }
    });
  }
});
