/** The Postgres destination: the same deals into crm_deals, upserted set-based. */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { validateCrmConfig } from '../../src/pipelines/crm/config.ts';
import { runCrmSync } from '../../src/pipelines/crm/sync.ts';
import { testDb, type TestDb } from '../helpers/db.ts';
import { JAFFLE, expectedJaffle, tmpDir } from './helpers.ts';

let db: TestDb;
before(async () => {
  db = await testDb();
});
after(async () => {
  await db.close();
});

function config(multiplier: number, orders = `${JAFFLE}/raw_orders.csv`) {
  return validateCrmConfig({
    name: 'pg',
    sources: { customers: `${JAFFLE}/raw_customers.csv`, orders, payments: `${JAFFLE}/raw_payments.csv` },
    value: { multiplier },
    destination: { type: 'postgres' },
  });
}

async function deals(): Promise<Map<string, { title: string; value: string; status: string; customer_id: string }>> {
  const { rows } = await db.pool.query(`SELECT order_id, customer_id, title, value::text, status FROM crm_deals WHERE pipeline = 'pg'`);
  return new Map(rows.map((r) => [r.order_id, r]));
}

test('first run writes every person and deal; a second run changes nothing; a new multiplier updates', async () => {
  const o = await runCrmSync(db.pool, config(1), { trigger: 'cli' });
  assert.equal(o.status, 'completed');
  assert.deepEqual(o.summary.persons, { created: 100, updated: 0, unchanged: 0, failed: 0, unconfirmed: 0 });
  assert.deepEqual(o.summary.deals, { created: 99, updated: 0, unchanged: 0, failed: 0, unconfirmed: 0 });
  assert.equal(o.summary.requests, 0);
  const want = expectedJaffle();
  const got = await deals();
  for (const [key, d] of want.deals) {
    assert.equal(got.get(key)?.title, d.title);
    assert.equal(Number(got.get(key)?.value), d.value, `order ${key}`);
    assert.equal(got.get(key)?.status, d.status);
    assert.equal(got.get(key)?.customer_id, d.personKey);
  }
  const again = await runCrmSync(db.pool, config(1), { trigger: 'cli', force: true });
  assert.deepEqual(again.summary.deals, { created: 0, updated: 0, unchanged: 99, failed: 0, unconfirmed: 0 });
  const zero = [...want.deals.values()].filter((d) => d.value === 0).length;
  const doubled = await runCrmSync(db.pool, config(2), { trigger: 'cli' });
  assert.deepEqual(doubled.summary.deals, { created: 0, updated: 99 - zero, unchanged: zero, failed: 0, unconfirmed: 0 });
  assert.equal(Number((await deals()).get('2')?.value), want.deals.get('2')!.value * 2);
});

test('an order whose customer is missing is a failure of the run, recorded with its reason', async () => {
  const dir = tmpDir();
  const orders = path.join(dir, 'orders.csv');
  fs.writeFileSync(orders, `${fs.readFileSync(`${JAFFLE}/raw_orders.csv`, 'utf8')}500,9999,2018-05-01,placed\r\n`);
  const o = await runCrmSync(db.pool, config(2, orders), { trigger: 'cli' });
  assert.equal(o.summary.deals.failed, 1);
  assert.deepEqual(o.failures, [{ kind: 'deal', key: '500', operation: 'upsert', error: 'customer 9999 is not in the customers source' }]);
});
