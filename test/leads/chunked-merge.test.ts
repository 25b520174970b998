/**
 * The pipelined import merges a file in chunks while it parses (import-runner.ts). Whatever
 * the chunk size, the tables and the counts must be those of merging the whole file at once:
 * rows of one key apply in file order even when they fall in different chunks.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { chunkTarget, runImport } from '../../src/engine/import-runner.ts';
import type { Pipeline } from '../../src/engine/pipeline.ts';
import { leads } from '../../src/pipelines/leads.ts';
import { testDb, type TestDb } from '../helpers/db.ts';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-chunks-'));
after(() => fs.rmSync(dir, { recursive: true, force: true }));

const HEADER = 'Email,Nome,Twitter,Website,Facebook,Linkedin,Phone,City,State,Tags,Opportunity,Job Title,Available for mailing';
const ROWS = [
  'new1@x.com,Name A,@a1,,,,,,,t1,,,', // 2: creates new1
  'old1@x.com,,@o1,,,,,,,,,,', // 3: fills old1's blank twitter (its only change)
  'new1@x.com,Name B,,w.com,,,,,,t2,,,', // 4: later row of new1
  'old2@x.com,Same,,,,,,,,,,,', // 5: changes nothing by itself...
  'old2@x.com,Changed,,,,,,,,,,,', // 6: ...but this later row does: both count as updated
  'not-an-email,X,,,,,,,,,,,', // 7: rejected
  'old3@x.com,N3,,,,,,,XYZ,,,,', // 8: name changed, state rejected for the field only
  'new2@x.com,,,,,,,Campinas,SP,,,,', // 9: new lead with city and state
  'new3@x.com,One,,,,,,,,,,,', // 10-13: one new email on four rows: 1 inserted, 3 updated
  'new3@x.com,Two,,,,,,,,,,,',
  'new3@x.com,,,,,,,,,a,,,',
  'new3@x.com,Four,,,,,,,,b,,,',
  'old1@x.com,,@other,,,,,,,,,,', // 14: twitter already filled by line 3: unchanged field
  'old4@x.com,Four,,,,,,,,,,,', // 15: existing, nothing changes
];

async function seed(db: TestDb): Promise<void> {
  await db.pool.query(`INSERT INTO leads (email, name) VALUES ('old1@x.com', 'One'), ('old2@x.com', 'Same'), ('old3@x.com', 'Old3'), ('old4@x.com', 'Four')`);
  await db.pool.query(`INSERT INTO lead_infos (lead_id, facebook) SELECT id, 'fb' FROM leads WHERE email = 'old1@x.com'`);
}

async function snapshot(db: TestDb) {
  const { rows } = await db.pool.query(
    `SELECT l.email, l.name, l.job_title, l.opportunity, l.available_for_mailing, l.tags,
            c.name AS city, s.acronym AS state,
            li.twitter, li.facebook, li.linkedin, li.website, li.mobile_phone, li.lead_id IS NOT NULL AS has_info
       FROM leads l LEFT JOIN lead_infos li ON li.lead_id = l.id
       LEFT JOIN cities c ON c.id = l.city_id LEFT JOIN states s ON s.id = l.state_id
      ORDER BY l.email`,
  );
  return rows;
}

/**
 * On a fresh database prepared by `seed`, imports `content` in chunks of `size` rows and
 * hands the result to `check` (the database is closed afterwards).
 */
async function chunked<T>(
  size: number,
  o: { seed: (db: TestDb) => Promise<unknown>; content: string; pipeline?: Pipeline },
  check: (db: TestDb, r: Awaited<ReturnType<typeof runImport>>) => Promise<T>,
): Promise<T> {
  const db = await testDb();
  try {
    await o.seed(db);
    const file = path.join(dir, `chunks-${size}.csv`);
    fs.writeFileSync(file, o.content);
    process.env.SLUICE_CHUNK_ROWS = String(size);
    const r = await runImport({ pool: db.pool, pipeline: o.pipeline ?? leads, file });
    assert.equal(r.status, 'completed', r.error);
    return await check(db, r);
  } finally {
    delete process.env.SLUICE_CHUNK_ROWS;
    await db.close();
  }
}

async function importWithChunks(size: number) {
  return chunked(size, { seed, content: `${HEADER}\n${ROWS.join('\n')}\n` }, async (db, r) => ({ rows: r.rows, table: await snapshot(db) }));
}

test('chunk sizes from 1 row to the whole file give the same tables and counts', async () => {
  const whole = await importWithChunks(1000);
  assert.deepEqual(whole.rows, { read: 14, inserted: 3, updated: 9, unchanged: 1, rejected: 1 });
  const by = new Map(whole.table.map((r: { email: string }) => [r.email, r]));
  const get = (e: string) => by.get(e) as Record<string, unknown>;
  assert.equal(get('new1@x.com').name, 'Name B');
  assert.deepEqual(get('new1@x.com').tags, ['t1', 't2']);
  assert.equal(get('new1@x.com').twitter, 'a1');
  assert.equal(get('new1@x.com').website, 'http://w.com');
  assert.equal(get('old1@x.com').twitter, 'o1');
  assert.equal(get('old1@x.com').facebook, 'fb');
  assert.equal(get('old2@x.com').name, 'Changed');
  assert.equal(get('old3@x.com').name, 'N3');
  assert.equal(get('old3@x.com').state, null);
  assert.equal(get('new2@x.com').city, 'Campinas');
  assert.equal(get('new2@x.com').state, 'SP');
  assert.equal(get('new3@x.com').name, 'Four');
  assert.deepEqual(get('new3@x.com').tags, ['a', 'b']);
  for (const size of [1, 2, 3, 5]) {
    const r = await importWithChunks(size);
    assert.deepEqual(r.rows, whole.rows, `counts with ${size}-row chunks`);
    assert.deepEqual(r.table, whole.table, `tables with ${size}-row chunks`);
  }
});

test('adaptive chunks (the default: a small first chunk, shrinking near the end) give the tables and counts of one chunk', async () => {
  // 20,000 rows: repeats of earlier emails, existing leads, cities new and old.
  const rows = Array.from({ length: 20_000 }, (_, i) => {
    const e = i % 7 === 0 ? `e${i % 1000}@x.com` : `e${i}@x.com`;
    return `${e},N${i},tw${i},,,,,${i % 3 === 0 ? `City${i % 50}` : ''},${i % 5 === 0 ? 'SP' : ''},t${i % 4},,,`;
  });
  const content = `${HEADER}\n${rows.join('\n')}\n`;
  const seedSome = (db: TestDb) => db.pool.query(`INSERT INTO leads (email, name) SELECT 'e' || i || '@x.com', 'Old' FROM generate_series(0, 20000, 3) i`);
  const run = async (size: number | undefined) => {
    const db = await testDb();
    try {
      await seedSome(db);
      const file = path.join(dir, `adaptive-${size ?? 'default'}.csv`);
      fs.writeFileSync(file, content);
      if (size) process.env.SLUICE_CHUNK_ROWS = String(size);
      const r = await runImport({ pool: db.pool, pipeline: leads, file });
      assert.equal(r.status, 'completed', r.error);
      return { rows: r.rows, table: await snapshot(db), chunks: r.timings.chunks };
    } finally {
      delete process.env.SLUICE_CHUNK_ROWS;
      await db.close();
    }
  };
  // One after the other: SLUICE_CHUNK_ROWS is process-wide.
  const adaptive = await run(undefined);
  const whole = await run(100_000);
  // 5,000 rows first, then chunks shrinking to the end: several, against one.
  assert.equal(whole.chunks, 1);
  assert.ok((adaptive.chunks ?? 0) >= 3, `adaptive chunks: ${adaptive.chunks}`);
  assert.deepEqual(adaptive.rows, whole.rows);
  assert.equal(adaptive.table.length, whole.table.length);
  assert.deepEqual(adaptive.table, whole.table);
});

test('chunkTarget: small first chunk, full chunks in the middle, half the rows left near the end', () => {
  assert.equal(chunkTarget(0, 0, 0, 1e9), 5_000);
  assert.equal(chunkTarget(3, 100_000, 10e6, 100e6), 25_000);
  // 1 MB left at 10,000 rows per MB: 10,000 rows left, chunks of 5,000.
  assert.equal(chunkTarget(9, 990_000, 99e6, 100e6), 5_000);
  assert.equal(chunkTarget(12, 999_900, 99.99e6, 100e6), 2_500);
});

test('a target without an id sequence: chunks merged whole on the import connection, same tables and counts', async () => {
  const prepared = await importWithChunks(2);
  const whole = await chunked(2, {
    seed: async (db) => {
      // An id default from a sequence the column does not own: pg_get_serial_sequence is null.
      await db.pool.query(`ALTER TABLE leads ALTER COLUMN id DROP IDENTITY; CREATE SEQUENCE other_ids; ALTER TABLE leads ALTER COLUMN id SET DEFAULT nextval('other_ids')`);
      await seed(db);
    },
    content: `${HEADER}\n${ROWS.join('\n')}\n`,
  }, async (db, r) => {
    assert.ok(r.timings.chunk_upsert !== undefined && r.timings.prepare === undefined, `merged on one connection: ${JSON.stringify(r.timings)}`);
    return { rows: r.rows, table: await snapshot(db) };
  });
  assert.deepEqual(whole.rows, prepared.rows);
  assert.deepEqual(whole.table, prepared.table);
});

test('a failed import leaves no chunk merged', async () => {
  const db = await testDb();
  try {
    await seed(db);
    const before = await snapshot(db);
    const file = path.join(dir, 'fail.csv');
    // Valid rows first (merged in chunks), then too many rejects: nothing may remain.
    fs.writeFileSync(file, `${HEADER}\n${ROWS.slice(0, 5).join('\n')}\n${Array.from({ length: 20 }, (_, i) => `bad${i},X,,,,,,,,,,,`).join('\n')}\n`);
    process.env.SLUICE_CHUNK_ROWS = '2';
    const r = await runImport({ pool: db.pool, pipeline: leads, file, maxRejectRatio: 0.5 });
    assert.equal(r.status, 'failed');
    assert.match(r.error!, /nothing was imported/);
    assert.deepEqual(await snapshot(db), before);
  } finally {
    delete process.env.SLUICE_CHUNK_ROWS;
    await db.close();
  }
});

/** A pipeline without a child table: the upsert alone decides the counts. */
const leadsNoChild: Pipeline = {
  ...leads,
  name: 'leads_names',
  columns: leads.columns.filter((c) => c.name === 'name'),
  target: { table: 'leads', key: 'email', fields: [{ column: 'name', from: 'name', merge: 'overwrite' }] },
};

test('without a child table, a key met unchanged then changed by a later row counts both rows updated', async () => {
  for (const size of [1, 1000]) {
    await chunked(size, {
      seed: (db) => db.pool.query(`INSERT INTO leads (email, name) VALUES ('k@x.com', 'Same'), ('u@x.com', 'U')`),
      content: 'Email,Name\nk@x.com,Same\nu@x.com,U\nk@x.com,Other\nn@x.com,New\n',
      pipeline: leadsNoChild,
    }, async (db, r) => {
      assert.deepEqual(r.rows, { read: 4, inserted: 1, updated: 2, unchanged: 1, rejected: 0 }, `${size}-row chunks`);
      const { rows } = await db.pool.query(`SELECT name FROM leads WHERE email = 'k@x.com'`);
      assert.equal(rows[0].name, 'Other');
    });
  }
});

test('a file whose last chunk fills up with its last row: that chunk is merged whole, child rows and counts included', async () => {
  // Distinct keys only (no row waits for a last merge), 6 rows in chunks of 3 and of 2.
  const rows = [1, 2, 3, 4, 5, 6].map((i) => `e${i}@x.com,N${i},tw${i},,,,,,,,,,`);
  for (const size of [2, 3]) {
    await chunked(size, {
      seed: (db) => db.pool.query(`INSERT INTO leads (email, name) VALUES ('e1@x.com', 'Old'), ('e4@x.com', 'Old')`),
      content: `${HEADER}\n${rows.join('\n')}\n`,
    }, async (db, r) => {
      assert.deepEqual(r.rows, { read: 6, inserted: 4, updated: 2, unchanged: 0, rejected: 0 }, `${size}-row chunks`);
      const infos = await db.pool.query(`SELECT l.email, li.twitter FROM leads l JOIN lead_infos li ON li.lead_id = l.id ORDER BY l.email`);
      assert.deepEqual(infos.rows.map((x: { twitter: string }) => x.twitter), ['tw1', 'tw2', 'tw3', 'tw4', 'tw5', 'tw6']);
    });
  }
});
