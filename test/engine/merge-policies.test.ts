/**
 * The merge policies of a declared pipeline give the same table however the file is cut:
 * merged whole, one row per chunk, in adaptive chunks, and over HTTP in parts of 100 rows
 * staged by two workers (a review found keep-first and add-to-set depending on the cut). The
 * pipeline is a declaration on the leads table that no built-in makes: `name` keep-first,
 * `job_title` overwrite, `tags` add-to-set with no parser. Also: fill-if-blank takes a stored
 * value of white space only as blank, and add-to-set adds to a stored set holding a NULL.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { after, test } from 'node:test';
import { runImport } from '../../src/engine/import-runner.ts';
import type { Pipeline } from '../../src/engine/pipeline.ts';
import { setMembers } from '../../src/validate/set-members.ts';
import { acceptUpload } from '../../src/intake/index.ts';
import { pipelines } from '../../src/pipelines/index.ts';
import { leads } from '../../src/pipelines/leads.ts';
import { testDb, type TestDb } from '../helpers/db.ts';
import { startIntake, waitForImportEnd } from '../intake/http-helpers.ts';

const declared: Pipeline = {
  name: 'policies_probe',
  description: 'keep-first, overwrite and add-to-set without a parser, on leads',
  format: { kind: 'csv' },
  key: leads.key,
  columns: [
    { name: 'name', headers: ['name'], type: 'text' },
    { name: 'job_title', headers: ['job title'], type: 'text' },
    { name: 'tags', headers: ['tags'], type: 'text' },
  ],
  target: {
    table: 'leads',
    key: 'email',
    fields: [
      { column: 'name', from: 'name', merge: 'keep-first' },
      { column: 'job_title', from: 'job_title', merge: 'overwrite' },
      { column: 'tags', from: 'tags', merge: 'add-to-set', targetType: 'text[]' },
    ],
  },
};
// Uploads name their pipeline: the intake finds it in the registry.
pipelines[declared.name] = declared;

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-policies-'));
after(() => fs.rmSync(dir, { recursive: true, force: true }));

const filler = (n: number) => Array.from({ length: n }, (_, i) => `f${i}@x.com,F,${'x'.repeat(200)},`);
// k1: a blank name on its first row, a name on a later one. k2: one row, tags "a,a". k3: tags
// "b, b" then "c". Between them, over 128 KiB of other rows (an adaptive chunk boundary) or
// 150 (part boundaries at 100 rows).
const file = (fill: number) =>
  ['Email,Name,Job Title,Tags', 'k1@x.com,,J1,', 'k2@x.com,K2,,"a,a"', 'k3@x.com,K3,,"b, b"', ...filler(fill), 'k1@x.com,Late,J2,', 'k3@x.com,,,c'].join('\n') + '\n';

const EXPECTED = [
  { email: 'k1@x.com', name: null, job_title: 'J2', tags: [] },
  { email: 'k2@x.com', name: 'K2', job_title: null, tags: ['a'] },
  { email: 'k3@x.com', name: 'K3', job_title: null, tags: ['b', 'c'] },
];

async function table(db: TestDb) {
  return (await db.pool.query(`SELECT email, name, job_title, tags FROM leads WHERE email LIKE 'k%' ORDER BY email`)).rows;
}

async function viaCli(content: string, chunkRows?: number) {
  const db = await testDb();
  try {
    const f = path.join(dir, `cli-${chunkRows ?? 'adaptive'}-${content.length}.csv`);
    fs.writeFileSync(f, content);
    if (chunkRows) process.env.SLUICE_CHUNK_ROWS = String(chunkRows);
    const r = await runImport({ pool: db.pool, pipeline: declared, file: f });
    assert.equal(r.status, 'completed', r.error);
    return { rows: r.rows, table: await table(db) };
  } finally {
    delete process.env.SLUICE_CHUNK_ROWS;
    await db.close();
  }
}

async function viaHttp(content: string) {
  const db = await testDb();
  const intake = await startIntake(db, { workers: 2 });
  try {
    const { id } = await acceptUpload(intake.ctx, { pipeline: declared.name, fileName: 'p.csv', source: 'test' }, Readable.from([Buffer.from(content)]), { partRows: 100 });
    const s = await waitForImportEnd(id, db.pool);
    assert.equal(s.status, 'completed', s.error ?? '');
    return { rows: s.rows, table: await table(db) };
  } finally {
    await intake.stop();
    await db.close();
  }
}

test('keep-first, overwrite and add-to-set give one table however the file is cut', async () => {
  const big = file(1000);
  const small = file(150);
  const runs = {
    whole: await viaCli(big, 100_000),
    oneRowChunks: await viaCli(big, 1),
    adaptive: await viaCli(big),
    small: await viaCli(small),
    http: await viaHttp(small),
  };
  for (const [how, r] of Object.entries(runs)) assert.deepEqual(r.table, EXPECTED, how);
  for (const how of ['oneRowChunks', 'adaptive'] as const) assert.deepEqual(runs[how].rows, runs.whole.rows, how);
});

test('setMembers: trimmed, blanks dropped, each once in first-seen order', () => {
  assert.equal(setMembers('a'), 'a');
  assert.equal(setMembers(' a , a,b,, '), 'a,b');
  assert.equal(setMembers(' , '), null);
  assert.equal(setMembers('  '), null);
});

test('fill-if-blank fills stored white space; add-to-set adds to a set holding a NULL, and a re-import changes nothing', async () => {
  const db = await testDb();
  try {
    const { rows } = await db.pool.query<{ id: string }>(
      `INSERT INTO leads (email, tags) VALUES ('e1@x.com', '{}'), ('n@x.com', ARRAY[NULL, 'a']) RETURNING id`,
    );
    await db.pool.query(`INSERT INTO lead_infos (lead_id, twitter, facebook, website) VALUES ($1, '', '   ', E'\\t')`, [rows[0]!.id]);
    const f = path.join(dir, 'blank.csv');
    fs.writeFileSync(f, 'Email,Twitter,Facebook,Website,Tags\ne1@x.com,tw,fb,site.com,\nn@x.com,,,,"a,b"\n');
    const first = await runImport({ pool: db.pool, pipeline: leads, file: f });
    assert.equal(first.status, 'completed', first.error);
    assert.deepEqual([first.rows.inserted, first.rows.updated, first.rows.unchanged], [0, 2, 0]);
    const infos = (await db.pool.query(`SELECT twitter, facebook, website FROM lead_infos i JOIN leads l ON l.id = i.lead_id WHERE l.email = 'e1@x.com'`)).rows[0];
    assert.equal(infos.twitter, 'tw');
    assert.match(infos.facebook, /fb/);
    assert.match(infos.website, /site\.com/);
    assert.deepEqual((await db.pool.query(`SELECT tags FROM leads WHERE email = 'n@x.com'`)).rows[0].tags, [null, 'a', 'b']);
    const again = await runImport({ pool: db.pool, pipeline: leads, file: f });
    assert.deepEqual([again.rows.inserted, again.rows.updated, again.rows.unchanged], [0, 0, 2]);
  } finally {
    await db.close();
  }
});
