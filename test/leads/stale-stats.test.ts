/**
 * Merge plans never scan the target tables: inside an import's transaction their statistics
 * are stale (autovacuum may record a table empty while the import has filled it), and a
 * scan per chunk or per row would not end on a big base. Checked on the plans themselves,
 * with the statistics of leads and lead_infos (and of purchases, named by its key) forced to
 * say "empty". (So no merge has to ANALYZE the targets mid-import: no plan depends on their
 * statistics.)
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { runImport } from '../../src/engine/import-runner.ts';
import { LEADS_CSV_HEADER } from '../../src/gen/leads.ts';
import { repoRoot } from '../../src/config.ts';
import { leads } from '../../src/pipelines/leads.ts';
import { purchases } from '../../src/pipelines/purchases.ts';
import { testDbAndDir, type TestDb } from '../helpers/db.ts';

const FIXTURE = path.join(repoRoot, 'test/fixtures/neoway/base_teste_2000.txt');
let db: TestDb;
const dir = testDbAndDir('sluice-stats-', (d) => (db = d));

test('with the targets recorded empty, the merge still reaches them by index only', async () => {
  await db.pool.query(`INSERT INTO leads (email, name) SELECT 'l' || i || '@x.com', 'N' FROM generate_series(1, 20000) i`);
  await db.pool.query(`INSERT INTO lead_infos (lead_id) SELECT id FROM leads WHERE id % 2 = 0`);
  await db.pool.query('ANALYZE leads, lead_infos');
  // What autovacuum leaves after analyzing a table while it was empty: pages, no tuples.
  await db.pool.query(`UPDATE pg_class SET reltuples = 0 WHERE relname IN ('leads', 'lead_infos')`);
  const file = path.join(dir, 'f.csv');
  // 300 distinct emails merged in prepared chunks, then 50 met again: the last merge.
  const rows = Array.from({ length: 350 }, (_, i) => `l${(i % 300) * 100}@x.com,M${i},tw${i},,,,,,,,,,`);
  fs.writeFileSync(file, `${LEADS_CSV_HEADER}\n${rows.join('\n')}\n`);

  // A file with two email columns: every row waits for the last merge, whose keys are
  // first resolved against the existing leads.
  const two = path.join(dir, 'two.csv');
  fs.writeFileSync(two, `Email,Work Email,Name\n${Array.from({ length: 50 }, (_, i) => `x${i}@x.com,l${i * 100}@x.com,W${i}`).join('\n')}\n`);

  const text = await explained(async () => {
    const r = await runImport({ pool: db.pool, pipeline: leads, file });
    assert.equal(r.status, 'completed', r.error);
    assert.deepEqual(r.rows, { read: 350, inserted: 100, updated: 250, unchanged: 0, rejected: 0 });
    const r2 = await runImport({ pool: db.pool, pipeline: leads, file: two });
    assert.equal(r2.status, 'completed', r2.error);
    assert.deepEqual(r2.rows, { read: 50, inserted: 0, updated: 50, unchanged: 0, rejected: 0 });
  });
  const steps = ['prepare', 'apply_update', 'apply_child_update', 'probe', 'upsert', 'child_update', 'child_insert_missing', 'resolve_keys'];
  assertReachedByIndex(text, steps, ['leads', 'lead_infos']);
});

test('a target named by its key (purchases), recorded empty: reached by its key index only', async () => {
  const seedFile = path.join(dir, 'seed.txt');
  fs.copyFileSync(FIXTURE, seedFile);
  assert.equal((await runImport({ pool: db.pool, pipeline: purchases, file: seedFile })).status, 'completed');
  await db.pool.query('ANALYZE purchases');
  await db.pool.query(`UPDATE pg_class SET reltuples = 0 WHERE relname = 'purchases'`);
  // 300 existing documents, each changed (PRIVATE flipped), in prepared chunks; 50 met again: the last merge.
  const [header, ...data] = fs.readFileSync(FIXTURE, 'utf8').split('\n').filter((l) => l.trim() !== '');
  const flip = (l: string) => l.replace(/^(\S+\s+)([01])(\s)/, (_, a: string, b: string, c: string) => `${a}${b === '0' ? '1' : '0'}${c}`);
  const rows = [...data.slice(0, 300).map(flip), ...data.slice(0, 50)];
  const file = path.join(dir, 'p.txt');
  fs.writeFileSync(file, `${header}\n${rows.join('\n')}\n`);
  const text = await explained(async () => {
    const r = await runImport({ pool: db.pool, pipeline: purchases, file });
    assert.equal(r.status, 'completed', r.error);
    // The 50 met again are folded with their first rows (met before their chunk merged): flipped
    // then restored, unchanged, 100 rows.
    assert.deepEqual(r.rows, { read: 350, inserted: 0, updated: 250, unchanged: 100, rejected: 0 });
  });
  assertReachedByIndex(text, ['prepare', 'apply_update', 'probe', 'upsert'], ['purchases']);
});

/** What `run` printed with SLUICE_EXPLAIN=1 (chunks of 100 rows): the plans of the merge steps. */
async function explained(run: () => Promise<void>): Promise<string> {
  const plans: string[] = [];
  const write = process.stderr.write.bind(process.stderr);
  process.stderr.write = ((chunk: string | Uint8Array) => {
    plans.push(String(chunk));
    return true;
  }) as typeof process.stderr.write;
  process.env.SLUICE_EXPLAIN = '1';
  process.env.SLUICE_CHUNK_ROWS = '100';
  try {
    await run();
  } finally {
    process.stderr.write = write;
    delete process.env.SLUICE_EXPLAIN;
    delete process.env.SLUICE_CHUNK_ROWS;
  }
  return plans.join('');
}

/** Every step was explained; no plan scans `tables`, and every index scan of them is searched for given keys. */
function assertReachedByIndex(text: string, steps: string[], tables: string[]): void {
  for (const step of steps) assert.match(text, new RegExp(`-- ${step}\\n`), `${step} was explained`);
  for (const t of tables) assert.doesNotMatch(text, new RegExp(`Seq Scan on ${t}\\b`));
  const scan = new RegExp(`(Index|Index Only|Bitmap Index) Scan (using \\S+ )?on (${tables.map((t) => `${t}|${t}_\\w+`).join('|')})\\b`);
  const lines = text.split('\n');
  lines.forEach((line, i) => {
    if (scan.test(line)) {
      assert.match(lines[i + 1] ?? '', /Index Cond:/, `a full index scan:\n${lines.slice(Math.max(0, i - 8), i + 4).join('\n')}`);
    }
  });
}
