/**
 * The intake merge's `ids` step (MergeSession.rememberPrepared): for every part merged as a
 * narrow chunk, the outcome of its keys met again later in the file. Its tables have no
 * statistics and a part's rows are filtered by `exclude` (hashtext of the key = ANY of its
 * keys met before), which Postgres estimates to leave 1 row: it planned a nested loop
 * reading the rows met again once per row of the part, for files whose keys repeat across
 * parts: 17.6-19.6 s (a review's runs) and 66-132 s (a fuller table) against 0.21-0.37 s. Here the statements' plans on tables shaped like a
 * part's (real Postgres, no timing): the same statements without the session's settings
 * plan that nested loop, the session's do not, and they remember the right keys.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type { Client } from '../../src/db/pool.ts';
import { MergeSession } from '../../src/load/merge.ts';
import { createStageSql } from '../../src/load/merge-sql.ts';
import { purchases } from '../../src/pipelines/purchases.ts';
import { testDb, type TestDb } from '../helpers/db.ts';

let db: TestDb;
before(async () => {
  db = await testDb();
});
after(async () => {
  await db.close();
});

const PART = 'sluice_stage_plan_p1';
const PREPARED = 'sluice_stage_plan_m1';
const LATER = 'sluice_intake_later';

/**
 * In `client`'s open merge transaction: a part of 10,000 distinct keys whose last 2,000 were
 * met before (left out of its chunk: `exclude`), its prepared table (the other 8,000, all
 * found in the target), and the rows met again later: 5,000 keys of this part and 5,000 of
 * others. Returns the chunk as rememberPrepared takes it.
 */
async function partShapedTables(client: Client) {
  await client.query(createStageSql(purchases, PART));
  await client.query(
    `INSERT INTO ${PART} (line, part, document) SELECT i, 1, lpad(i::text, 11, '0') FROM generate_series(1, 10000) i`,
  );
  await client.query(`CREATE TEMP TABLE ${LATER} (LIKE ${PART} INCLUDING DEFAULTS) ON COMMIT DROP`);
  await client.query(
    `INSERT INTO ${LATER} (line, part, document) SELECT 20000 + i, 2, lpad((CASE WHEN i <= 5000 THEN i ELSE 100000 + i END)::text, 11, '0')
       FROM generate_series(1, 10000) i`,
  );
  const suspects = (await client.query(`SELECT array_agg(hashtext(document::text)) AS h FROM ${PART} WHERE line > 8000`)).rows[0].h as number[];
  const exclude = `hashtext(m.document::text) = ANY ('{${suspects.join(',')}}'::int[])`;
  await client.query(
    `CREATE UNLOGGED TABLE ${PREPARED} WITH (autovacuum_enabled = false) AS
       SELECT m.document AS key, m.line AS tid, false AS changed, false AS cchanged FROM ${PART} m WHERE NOT (${exclude})`,
  );
  return { prepared: PREPARED, source: PART, exclude };
}

/** EXPLAIN of each timed statement, the settings among them run as they are. */
async function plans(client: Client, statements: Array<{ name?: string; text: string }>): Promise<string[]> {
  const out: string[] = [];
  for (const s of statements) {
    if (!s.name) {
      await client.query(s.text);
      continue;
    }
    const { rows } = await client.query(`EXPLAIN ${s.text}`);
    // (The 2,000 hashes of `exclude` elided: a failure shows the plan.)
    out.push(rows.map((r: Record<string, string>) => r['QUERY PLAN'].replace(/'\{[^}]*\}'/g, "'{...}'")).join('\n'));
  }
  return out;
}

test("the ids step joins a part to the rows met again without a nested loop, and remembers the right keys", async () => {
  const client = await db.pool.connect();
  try {
    const session = new MergeSession(client, purchases, {}, true);
    assert.equal(await session.begin(), true);
    const chunk = await partShapedTables(client);
    const statements = session.rememberStatements([chunk], LATER);
    const ids = statements.filter((s) => s.name === 'ids');
    assert.equal(ids.length, 1);
    // The tables reproduce the misestimate: left to itself, the planner nests loops.
    const [bare] = await plans(client, ids);
    assert.match(bare!, /Nested Loop/, bare);
    assert.match(bare!, /rows=1 /, 'the part scan under `exclude` is estimated at 1 row');
    const [planned] = await plans(client, statements);
    assert.doesNotMatch(planned!, /Nested Loop/, planned);
    assert.equal((await client.query('SHOW enable_nestloop')).rows[0].enable_nestloop, 'on', 'set back after the step');
    // Run for real: the keys of this part met again later, except those it left out.
    await session.rememberPrepared([chunk], LATER);
    const { rows } = await client.query(
      `SELECT count(*)::int AS n, min(key) AS first, max(key) AS last, bool_or(inserted) AS inserted FROM sluice_ids_all`,
    );
    assert.deepEqual(rows[0], { n: 5000, first: '00000000001', last: '00000005000', inserted: false });
  } finally {
    await client.query('ROLLBACK').catch(() => {});
    client.release();
  }
});
