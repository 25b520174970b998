/**
 * Jaffle over HTTP into the Pipedrive simulator, through the CLI (`sluice sync crm --once
 * --json`): the first run creates every person and deal with the right values, the second
 * changes nothing, a new multiplier updates every deal, a changed source updates exactly
 * what it changed.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { PipedriveSimulator } from '../../src/dev/pipedrive-simulator.ts';
import { testDb, type TestDb } from '../helpers/db.ts';
import { FileServer, crmState, expectedJaffle, runCli, tmpDir, writeConfig } from './helpers.ts';

let db: TestDb;
let sim: PipedriveSimulator;
let files: FileServer;
let apiUrl: string;
const dir = tmpDir();
const TOKEN = 'test-token-pipedrive';

before(async () => {
  db = await testDb();
  sim = new PipedriveSimulator({ token: TOKEN });
  apiUrl = await sim.listen();
  files = new FileServer();
  await files.start();
});
after(async () => {
  await sim.close();
  await files.close();
  await db.close();
});

async function sync(config: string, ...extra: string[]) {
  const r = await runCli(['sync', 'crm', '--once', '--json', '--config', config, ...extra], {
    DATABASE_URL: db.url,
    PIPEDRIVE_API_TOKEN: TOKEN,
  });
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout.trim().split('\n').at(-1) as string);
}

function assertCrmMatches(multiplier: number): void {
  const want = expectedJaffle(multiplier);
  const crm = crmState(sim);
  assert.equal(sim.persons.length, want.persons.size, 'one CRM person per customer');
  assert.equal(sim.deals.length, want.deals.size, 'one CRM deal per order');
  for (const [key, name] of want.persons) {
    const [p, ...dupes] = crm.persons.get(key) ?? [];
    assert.ok(p, `person ${key} exists`);
    assert.equal(dupes.length, 0, `person ${key} has no duplicate`);
    assert.equal(p.name, name);
  }
  for (const [key, d] of want.deals) {
    const [deal, ...dupes] = crm.deals.get(key) ?? [];
    assert.ok(deal, `deal ${key} exists`);
    assert.equal(dupes.length, 0);
    assert.equal(deal.title, d.title, `deal ${key} title`);
    assert.equal(deal.value, d.value, `deal ${key} value`);
    assert.equal(deal.currency, 'USD');
    assert.equal(deal.status, d.status, `deal ${key} status`);
    assert.equal(deal.expected_close_date, d.date);
    // person_id is the CRM's id of the customer's person, not the CSV's customer id.
    const person = crm.persons.get(d.personKey)?.[0];
    assert.equal(deal.person_id, person?.id, `deal ${key} person`);
  }
}

test('first run creates every person and deal with the right values, using the minimum of requests', async () => {
  const config = writeConfig(dir, files.url, apiUrl);
  const s = await sync(config);
  assert.equal(s.status, 'completed');
  assert.deepEqual(s.persons, { created: 100, updated: 0, unchanged: 0, failed: 0, unconfirmed: 0 });
  assert.deepEqual(s.deals, { created: 99, updated: 0, unchanged: 0, failed: 0, unconfirmed: 0 });
  assert.equal(s.retries_429, 0);
  // 2 field lists + 2 field creates + 1 page of persons + 1 of deals + 100 + 99 creates.
  assert.equal(s.requests, 2 + 2 + 2 + 199);
  assert.equal(sim.stats.requests, s.requests);
  assertCrmMatches(1);
  // Order 25 has three payments (20 + 22 + 16 USD): summed once, not multiplied by a join.
  assert.equal(crmState(sim).deals.get('25')?.[0]?.value, 58);
});

test('second run: unchanged sources are not re-processed; forced, it sends only list requests', async () => {
  const config = writeConfig(dir, files.url, apiUrl);
  const before304 = files.hits.notModified;
  const skipped = await sync(config);
  assert.equal(skipped.status, 'skipped');
  assert.equal(skipped.requests, 0);
  assert.equal(files.hits.notModified - before304, 3, 'each source answered 304 Not Modified');

  sim.stats.requests = 0;
  sim.stats.byRoute = {};
  const forced = await sync(config, '--force');
  assert.equal(forced.status, 'completed');
  assert.deepEqual(forced.persons, { created: 0, updated: 0, unchanged: 100, failed: 0, unconfirmed: 0 });
  assert.deepEqual(forced.deals, { created: 0, updated: 0, unchanged: 99, failed: 0, unconfirmed: 0 });
  assert.equal(forced.requests, 4);
  assert.deepEqual(Object.keys(sim.stats.byRoute).sort(), ['GET /v1/dealFields', 'GET /v1/deals', 'GET /v1/personFields', 'GET /v1/persons']);
  assertCrmMatches(1);
});

test('a changed multiplier updates every deal whose value changes, and only those', async () => {
  const config = writeConfig(dir, files.url, apiUrl, { value: { multiplier: 2.5, currency: 'USD' } });
  const zero = [...expectedJaffle().deals.values()].filter((d) => d.value === 0).length;
  sim.stats.byRoute = {};
  const s = await sync(config);
  assert.equal(s.status, 'completed', 'a new config is processed although the sources did not change');
  assert.deepEqual(s.deals, { created: 0, updated: 99 - zero, unchanged: zero, failed: 0, unconfirmed: 0 });
  assert.deepEqual(s.persons, { created: 0, updated: 0, unchanged: 100, failed: 0, unconfirmed: 0 });
  assert.equal(sim.stats.byRoute['PUT /v1/deals/:id'], 99 - zero);
  assertCrmMatches(2.5);
});

test('a changed source over HTTP updates exactly the records it changed', async () => {
  const config = writeConfig(dir, files.url, apiUrl, { value: { multiplier: 2.5, currency: 'USD' } });
  // One more payment for order 2 and a renamed customer 1 (whose orders change title).
  files.set('raw_payments.csv', `${files.text('raw_payments.csv').trimEnd()}\r\n1000,2,coupon,400\r\n`);
  files.set('raw_customers.csv', files.text('raw_customers.csv').replace('1,Michael,P.', '1,Michael,Q.'));
  const ordersOfCustomer1 = [...expectedJaffle().deals.values()].filter((d) => d.personKey === '1').length;
  const s = await sync(config);
  assert.equal(s.status, 'completed');
  assert.deepEqual(s.persons, { created: 0, updated: 1, unchanged: 99, failed: 0, unconfirmed: 0 });
  assert.equal(s.deals.updated, 1 + ordersOfCustomer1);
  const crm = crmState(sim);
  assert.equal(crm.persons.get('1')?.[0]?.name, 'Michael Q.');
  assert.equal(crm.deals.get('2')?.[0]?.value, (2000 + 400) * 2.5 / 100);
});

test('GET /crm/runs lists the runs newest first', async () => {
  const { buildServer } = await import('../../src/http/server.ts');
  const app = await buildServer({ pool: db.pool });
  try {
    const res = await app.inject({ method: 'GET', url: '/crm/runs?limit=3' });
    assert.equal(res.statusCode, 200);
    const { runs } = res.json() as { runs: Array<{ id: number; status: string; summary: { deals: { updated: number } } }> };
    assert.equal(runs.length, 3);
    assert.ok((runs[0] as { id: number }).id > (runs[1] as { id: number }).id);
    assert.equal(runs[0]?.status, 'completed');
    const bad = await app.inject({ method: 'GET', url: '/crm/runs?limit=0' });
    assert.equal(bad.statusCode, 400);
    assert.equal(bad.json().error.code, 'invalid_input');
  } finally {
    await app.close();
  }
});
