/**
 * Crash safety: `sluice sync crm` killed with SIGKILL half-way through creating deals, then
 * run again, creates no duplicates; what it created was journaled in Postgres as it went,
 * and the dead run is recorded as interrupted.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { PipedriveSimulator } from '../../src/dev/pipedrive-simulator.ts';
import { testDb, type TestDb } from '../helpers/db.ts';
import { FileServer, crmState, expectedJaffle, killAtDealCreate, runCli, tmpDir, writeConfig } from './helpers.ts';

let db: TestDb;
let sim: PipedriveSimulator;
let files: FileServer;
let apiUrl: string;
const TOKEN = 'crash-token';

before(async () => {
  db = await testDb();
  // A real API answers in tens of milliseconds: the kill lands mid-run.
  sim = new PipedriveSimulator({ token: TOKEN, latencyMs: 15 });
  apiUrl = await sim.listen();
  files = new FileServer();
  await files.start();
});
after(async () => {
  await sim.close();
  await files.close();
  await db.close();
});

test('kill -9 half-way, run again: no duplicates, every record once, the dead run marked interrupted', async () => {
  const config = writeConfig(tmpDir(), files.url, apiUrl);
  const env = { DATABASE_URL: db.url, PIPEDRIVE_API_TOKEN: TOKEN };
  const child = runCli(['sync', 'crm', '--once', '--json', '--config', config], env);
  await killAtDealCreate(sim, child.pid, 40);
  const killed = await child;
  assert.equal(killed.signal, 'SIGKILL');
  // Requests the killed process had already sent are still applied by the CRM.
  await sim.idle();
  const createdBefore = sim.deals.length;
  assert.ok(createdBefore >= 40 && createdBefore < 99, `${createdBefore} deals before the kill`);
  assert.equal(sim.persons.length, 100);

  const journal = await db.pool.query<{ kind: string; n: number }>(
    `SELECT kind, count(*)::int AS n FROM crm_links GROUP BY kind ORDER BY kind`,
  );
  const links = Object.fromEntries(journal.rows.map((r) => [r.kind, r.n]));
  assert.equal(links.person, 100, 'every person create was journaled');
  // The journal is flushed in batches: the last few creates may be known to the CRM only.
  assert.ok((links.deal ?? 0) > 0 && (links.deal ?? 0) <= createdBefore, `journal has ${links.deal} deals`);
  const running = await db.pool.query(`SELECT status FROM crm_runs`);
  assert.deepEqual(running.rows.map((r) => r.status), ['running']);

  const again = await runCli(['sync', 'crm', '--once', '--json', '--config', config], env);
  assert.equal(again.code, 0, again.stderr);
  const s = JSON.parse(again.stdout.trim());
  assert.equal(s.status, 'completed');
  assert.deepEqual(s.persons, { created: 0, updated: 0, unchanged: 100, failed: 0, unconfirmed: 0 });
  assert.deepEqual(s.deals, { created: 99 - createdBefore, updated: 0, unchanged: createdBefore, failed: 0, unconfirmed: 0 });

  const want = expectedJaffle();
  const crm = crmState(sim);
  assert.equal(sim.deals.length, 99);
  for (const [key, d] of want.deals) {
    assert.equal(crm.deals.get(key)?.length, 1, `deal ${key} exactly once`);
    assert.equal(crm.deals.get(key)?.[0]?.value, d.value);
  }
  const runs = await db.pool.query(`SELECT status, error FROM crm_runs ORDER BY id`);
  assert.equal(runs.rows[0].status, 'failed');
  assert.match(runs.rows[0].error, /interrupted/);
  assert.equal(runs.rows[1].status, 'completed');
  const all = await db.pool.query<{ n: number }>(`SELECT count(*)::int AS n FROM crm_links WHERE kind = 'deal'`);
  assert.equal(all.rows[0]?.n, (links.deal ?? 0) + 99 - createdBefore, 'the re-run journaled its own creates');
});
