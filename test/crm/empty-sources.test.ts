/**
 * A source with no data rows (raw_payments.csv truncated after its header by a half-written
 * export): the run fails before anything is written to the CRM, naming the source, and the
 * rows staged before stay; unless the source is declared `allow_empty: true`.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { PipedriveSimulator } from '../../src/dev/pipedrive-simulator.ts';
import { validateCrmConfig } from '../../src/pipelines/crm/config.ts';
import { refreshSource } from '../../src/pipelines/crm/sources.ts';
import { CrmRunError, runCrmSync } from '../../src/pipelines/crm/sync.ts';
import { testDb, type TestDb } from '../helpers/db.ts';
import { FileServer, crmState, expectedJaffle, runCli, tmpDir, writeConfig } from './helpers.ts';

const TOKEN = 'empty-token';
let db: TestDb;
let sim: PipedriveSimulator;
let files: FileServer;
let apiUrl: string;
const dir = tmpDir();
const PAYMENTS = 'raw_payments.csv';
let payments = '';

before(async () => {
  db = await testDb();
  sim = new PipedriveSimulator({ token: TOKEN });
  apiUrl = await sim.listen();
  files = new FileServer();
  payments = files.text(PAYMENTS);
  await files.start();
});
after(async () => {
  await sim.close();
  await files.close();
  await db.close();
});

function sync(config: string) {
  return runCli(['sync', 'crm', '--once', '--json', '--config', config], { DATABASE_URL: db.url, PIPEDRIVE_API_TOKEN: TOKEN });
}

/** Requests that write to the CRM (POST, PUT), per route. */
function writes(): Record<string, number> {
  return Object.fromEntries(Object.entries(sim.stats.byRoute).filter(([route]) => /^(POST|PUT|PATCH|DELETE) /.test(route)));
}

async function stagedPayments(pipeline: string): Promise<number> {
  const { rows } = await db.pool.query(`SELECT count(*)::int AS n FROM crm_payments WHERE pipeline = $1`, [pipeline]);
  return rows[0].n;
}

test('a source with only its header fails the run before any write; with allow_empty it is synced', async () => {
  sim.reset();
  files.set(PAYMENTS, payments);
  const config = writeConfig(dir, files.url, apiUrl, { name: 'empty' });
  const first = await sync(config);
  assert.equal(first.code, 0, first.stderr);
  assert.equal(JSON.parse(first.stdout.trim()).deals.created, 99);
  const values = new Map([...crmState(sim).deals].map(([k, [d]]) => [k, d?.value]));
  assert.equal(await stagedPayments('empty'), 113);

  // The upstream export is half-written: the header alone.
  files.set(PAYMENTS, 'id,order_id,payment_method,amount\r\n');
  sim.stats.byRoute = {};
  const r = await sync(config);
  assert.equal(r.code, 1);
  const out = JSON.parse(r.stdout.trim());
  assert.equal(out.status, 'failed');
  assert.equal(out.code, 'invalid_file');
  assert.match(out.error, /^source payments \(http:\/\/127\.0\.0\.1:\d+\/raw_payments\.csv\) has no data rows \(no line after the header\)/);
  assert.match(out.error, /set sources\.payments\.allow_empty: true/);
  assert.match(r.stderr, /sluice: source payments .* has no data rows .*\[invalid_file\]/);
  assert.deepEqual(writes(), {}, 'nothing written to the CRM');
  assert.deepEqual(new Map([...crmState(sim).deals].map(([k, [d]]) => [k, d?.value])), values, 'no deal value changed');
  assert.equal(await stagedPayments('empty'), 113, 'the rows staged before stay');
  const { rows } = await db.pool.query(`SELECT status, error FROM crm_runs WHERE pipeline = 'empty' ORDER BY id DESC LIMIT 1`);
  assert.equal(rows[0].status, 'failed');
  assert.match(rows[0].error, /source payments .* has no data rows/);
  // Not remembered as fetched: the next run reads the source again, and fails again.
  assert.equal((await sync(config)).code, 1);

  // Declared as one that may be empty: synced (every deal's value becomes 0).
  const allowed = writeConfig(dir, files.url, apiUrl, {
    name: 'empty',
    sources: {
      customers: `${files.url}/raw_customers.csv`,
      orders: `${files.url}/raw_orders.csv`,
      payments: { location: `${files.url}/${PAYMENTS}`, allow_empty: true },
    },
  });
  const ok = await sync(allowed);
  assert.equal(ok.code, 0, ok.stderr);
  const done = JSON.parse(ok.stdout.trim());
  assert.equal(done.status, 'completed');
  const nonZero = [...expectedJaffle().deals.values()].filter((d) => d.value !== 0).length;
  assert.equal(done.deals.updated, nonZero);
  assert.ok([...crmState(sim).deals.values()].every(([d]) => d?.value === 0));
  assert.equal(await stagedPayments('empty'), 0);

  // Staged empty under allow_empty, then the key removed: refused, although unchanged.
  const again = await sync(config);
  assert.equal(again.code, 1);
  assert.match(JSON.parse(again.stdout.trim()).error, /source payments .* has no data rows \(none staged, and the source is unchanged\)/);
});

test('a first run with an empty source creates no key field', async () => {
  sim.reset();
  files.set(PAYMENTS, payments);
  files.set('empty_customers.csv', '');
  const config = validateCrmConfig({
    name: 'empty-first',
    sources: { customers: `${files.url}/empty_customers.csv`, orders: `${files.url}/raw_orders.csv`, payments: `${files.url}/${PAYMENTS}` },
    destination: { base_url: apiUrl, rate_limit: '10000/1s' },
  });
  process.env.PIPEDRIVE_API_TOKEN = TOKEN;
  await assert.rejects(runCrmSync(db.pool, config, { trigger: 'cli' }), (err: unknown) => {
    assert.ok(err instanceof CrmRunError);
    assert.equal(err.code, 'invalid_file');
    assert.match(err.message, /^source customers \(.*\/empty_customers\.csv\) is empty \(0 bytes, not even its header line\); the run is refused before anything is written/);
    assert.equal(err.outcome.status, 'failed');
    return true;
  });
  assert.deepEqual(writes(), {}, 'no field created, nothing written');
  assert.equal(sim.personFields.some((f) => f.name === 'CustomerID'), false);
});

test('lines that are all rejects are no data rows either; refreshSource takes allow_empty', async () => {
  files.set('bad_orders.csv', 'id,user_id,order_date,status\nx,1,2018-01-01,placed\n');
  await assert.rejects(refreshSource(db.pool, 'empty-rejects', 'orders', `${files.url}/bad_orders.csv`, false), /source orders .* has no data rows \(all 1 lines rejected\)/);
  const r = await refreshSource(db.pool, 'empty-rejects', 'orders', `${files.url}/bad_orders.csv`, false, { allowEmpty: true });
  assert.equal(r.rows, 0);
  assert.equal(r.rejected, 1);
});

test('allow_empty is validated like every other key', () => {
  const base = { customers: 'c.csv', orders: 'o.csv' };
  const c = validateCrmConfig({ sources: { ...base, payments: { location: 'p.csv', allow_empty: true } } }, '/etc/crm.yaml');
  assert.equal(c.sources.payments, '/etc/p.csv');
  assert.deepEqual(c.allowEmpty, { customers: false, orders: false, payments: true });
  assert.throws(
    () => validateCrmConfig({ sources: { ...base, payments: { location: 'p.csv', allow_empty: 'yes', alow_empty: true } } }),
    (err: Error) => {
      assert.match(err.message, /sources\.payments\.allow_empty: expected true or false, got "yes"/);
      assert.match(err.message, /sources\.payments\.alow_empty: unknown key \(allowed: location, allow_empty\)/);
      return true;
    },
  );
  assert.throws(() => validateCrmConfig({ sources: { ...base, payments: { allow_empty: true } } }), /sources\.payments\.location: required/);
});
