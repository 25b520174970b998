/**
 * The CRM snapshot and the plan: of several records with one key the lowest CRM id is
 * maintained whatever order the pages came in (copies counted, left alone), records
 * deleted in the CRM while its pages are read make no record go unseen (nothing is
 * created twice), and the persons are planned and sent while the deal pages are still
 * being read.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createSnapshotTables, insertRemotePersons, nextPersonWork, planPersons, RUN_TABLES } from '../../src/db/sql/crm-plan.ts';
import { runCrmSync } from '../../src/pipelines/crm/sync.ts';
import { crmState, expectedJaffle, inProcessCrm } from './helpers.ts';

const crm = inProcessCrm('snapshot');
const { sim, config } = crm;
const want = expectedJaffle();

/** Records nobody synced: no key field, so not Sluice's (they only make more pages). */
function handMadeDeals(count: number): void {
  for (let i = 0; i < count; i++) {
    sim.deals.push({
      id: sim.deals.length + 1, title: `hand-made ${i}`, value: 0, currency: 'USD', status: 'open', person_id: null, org_id: null,
      stage_id: 1, pipeline_id: 1, expected_close_date: null, add_time: '2020-01-01 00:00:00',
    });
  }
}

test('plan: the lowest CRM id of a key is maintained whatever the page order; copies counted, records without key ignored', async () => {
  const c = await crm.db.pool.connect();
  try {
    await createSnapshotTables(c);
    // Key "a" on three pages, its lowest id (3) in the middle one; "b" once; no key: not ours.
    await insertRemotePersons(c, [{ crmId: 7, key: 'a', name: 'seven' }, { crmId: 1, key: null, name: 'no key' }]);
    await insertRemotePersons(c, [{ crmId: 5, key: 'a', name: 'five' }, { crmId: 3, key: 'a', name: 'three' }, { crmId: 2, key: 'b', name: 'b' }]);
    await insertRemotePersons(c, [{ crmId: 9, key: 'a', name: 'nine' }]);
    await c.query(`CREATE TEMP TABLE crm_want_persons AS SELECT * FROM (VALUES ('a', 'three'), ('b', 'B new'), ('c', 'c')) v(key, name)`);
    const counts = await planPersons(c);
    assert.deepEqual(counts, { create: 1, update: 1, unchanged: 1, fail: 0, duplicates: 1 });
    const work = await nextPersonWork(c, 0, 10);
    assert.deepEqual(work.map((w) => [w.key, w.action, w.crm_id === null ? null : Number(w.crm_id)]), [['b', 'update', 2], ['c', 'create', null]]);
  } finally {
    await c.query(`DROP TABLE IF EXISTS ${RUN_TABLES}`);
    c.release();
  }
});

test('duplicate keys in the CRM, on other pages: the lowest id is maintained, the others left alone and counted', async () => {
  const cfg = config();
  assert.equal((await runCrmSync(crm.db.pool, cfg, { trigger: 'cli' })).status, 'completed');
  const fields = crmState(sim);
  const person1 = fields.persons.get('1')?.[0];
  const deal2 = fields.deals.get('2')?.[0];
  assert.ok(person1 && deal2);
  const personKey = Object.keys(person1).find((k) => /^[0-9a-f]{40}$/.test(k) && person1[k] === '1') as string;
  // 600 records without key push the copies onto the second page of each list.
  for (let i = 0; i < 600; i++) sim.persons.push({ ...person1, id: sim.persons.length + 1, name: `hand-made ${i}`, [personKey]: null });
  handMadeDeals(600);
  sim.persons.push({ ...person1, id: sim.persons.length + 1, name: 'A Copy' });
  sim.deals.push({ ...deal2, id: sim.deals.length + 1, value: 12345 });

  sim.stats.byRoute = {};
  const o = await runCrmSync(crm.db.pool, cfg, { trigger: 'cli', force: true });
  assert.equal(o.status, 'completed');
  const plan = o.details.plan as { persons: Record<string, number>; deals: Record<string, number> };
  assert.equal(plan.persons.duplicates, 1);
  assert.equal(plan.deals.duplicates, 1);
  assert.deepEqual(o.summary.persons, { created: 0, updated: 0, unchanged: want.persons.size, failed: 0, unconfirmed: 0 });
  assert.deepEqual(o.summary.deals, { created: 0, updated: 0, unchanged: want.deals.size, failed: 0, unconfirmed: 0 });
  // Only list requests: 2 field lists, 2 pages of persons (701), 2 of deals (700).
  assert.deepEqual(sim.stats.byRoute, { 'GET /v1/personFields': 1, 'GET /v1/dealFields': 1, 'GET /v1/persons': 2, 'GET /v1/deals': 2 });
});

test('the persons are planned and sent while the deal pages are still being read', async () => {
  const cfg = config({ concurrency: 2, rate_limit: '10/200ms' });
  assert.equal((await runCrmSync(crm.db.pool, config(undefined, cfg.name), { trigger: 'cli' })).status, 'completed');
  // 20,000 deals without key: 41 pages, about a second at 10 requests per 200 ms.
  handMadeDeals(20_000);
  const person = crmState(sim).persons.get('1')?.[0];
  assert.ok(person);
  person.name = 'Renamed Elsewhere';
  const order: string[] = [];
  const log = (e: { route: string }) => order.push(e.route);
  sim.on('request', log);
  try {
    const o = await runCrmSync(crm.db.pool, cfg, { trigger: 'cli', force: true });
    assert.equal(o.status, 'completed');
    assert.deepEqual(o.summary.persons, { created: 0, updated: 1, unchanged: want.persons.size - 1, failed: 0, unconfirmed: 0 });
  } finally {
    sim.off('request', log);
  }
  const put = order.indexOf('PUT /v1/persons/:id');
  assert.ok(put > order.indexOf('GET /v1/deals'), 'the deal pages follow the person pages');
  assert.ok(put < order.lastIndexOf('GET /v1/deals'), `the person update went before the last deal page: ${order.join(', ')}`);
  assert.equal(order.filter((r) => r === 'GET /v1/deals').length, 41);
});

test('records deleted in the CRM during the read shift the later pages: the gap is read again, nothing is created twice', async () => {
  const cfg = config({ concurrency: 1 }); // one page after another: the deletions land between two
  // 498 records nobody synced, then Sluice's 99 deals (ids 499-597): pages of 500 overlap by
  // one, the second starts at offset 499 (id 500 unchanged).
  handMadeDeals(498);
  assert.equal((await runCrmSync(crm.db.pool, cfg, { trigger: 'cli' })).status, 'completed');
  const { dKey } = crmState(sim);
  // Three deleted after the first page: the second begins at id 503, ids 501-502 slid onto the
  // first page's range unseen (one deletion the overlap absorbs: the second begins at 504 after 503).
  for (const [deletions, rereads] of [[3, 1], [1, 0]] as const) {
    let armed = true;
    const deleteAfterFirstPage = (e: { route: string; status: number }) => {
      if (!armed || e.route !== 'GET /v1/deals' || e.status !== 200) return;
      armed = false;
      for (const d of sim.deals.filter((x) => x.status !== 'deleted' && !x[dKey]).slice(0, deletions)) d.status = 'deleted';
    };
    sim.on('request', deleteAfterFirstPage);
    sim.stats.byRoute = {};
    try {
      const o = await runCrmSync(crm.db.pool, cfg, { trigger: 'cli', force: true });
      assert.equal(o.status, 'completed');
      assert.deepEqual(o.summary.deals, { created: 0, updated: 0, unchanged: want.deals.size, failed: 0, unconfirmed: 0 }, `${deletions} deleted`);
      assert.equal((o.details.lists as { deals: { rereads: number } }).deals.rereads, rereads);
      assert.equal(sim.stats.byRoute['GET /v1/deals'], 2 + rereads);
    } finally {
      sim.off('request', deleteAfterFirstPage);
    }
    assert.equal(armed, false);
  }
  const crmNow = crmState(sim);
  for (const [key] of want.deals) assert.equal(crmNow.deals.get(key)?.length, 1, `deal ${key} once`);
  assert.equal(sim.deals.length, 498 + want.deals.size);
});
