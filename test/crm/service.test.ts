/** The scheduled sync inside `sluice serve`: enabled by SLUICE_CRM_CONFIG, recorded runs. */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { stringify } from 'yaml';
import { buildServer } from '../../src/http/server.ts';
import { crmSyncService } from '../../src/pipelines/crm/service.ts';
import { testDb, type TestDb } from '../helpers/db.ts';
import { JAFFLE, tmpDir, until } from './helpers.ts';

let db: TestDb;
before(async () => {
  db = await testDb();
});
after(async () => {
  delete process.env.SLUICE_CRM_CONFIG;
  await db.close();
});

test('disabled without SLUICE_CRM_CONFIG', async () => {
  delete process.env.SLUICE_CRM_CONFIG;
  const app = await buildServer({ pool: db.pool });
  assert.equal(await crmSyncService.start({ pool: db.pool }, app), undefined);
  await app.close();
});

test('runs on its interval, records each run, and GET /crm/runs shows them', async () => {
  const file = path.join(tmpDir(), 'crm.yaml');
  fs.writeFileSync(file, stringify({
    name: 'scheduled',
    sources: { customers: `${JAFFLE}/raw_customers.csv`, orders: `${JAFFLE}/raw_orders.csv`, payments: `${JAFFLE}/raw_payments.csv` },
    schedule: { interval: '200ms' },
    destination: { type: 'postgres' },
  }));
  process.env.SLUICE_CRM_CONFIG = file;
  const app = await buildServer({ pool: db.pool });
  const service = await crmSyncService.start({ pool: db.pool }, app);
  assert.ok(service);
  try {
    // The first run does the work; the next ones find nothing changed.
    await until(async () => {
      const { rows } = await db.pool.query(`SELECT status FROM crm_runs WHERE pipeline = 'scheduled' AND status <> 'running' ORDER BY id`);
      return rows.length >= 2 && rows[0].status === 'completed' && rows[1].status === 'skipped';
    }, 'two scheduled runs');
  } finally {
    await service.stop();
  }
  const res = await app.inject({ method: 'GET', url: '/crm/runs?pipeline=scheduled' });
  const { runs } = res.json() as { runs: Array<{ trigger: string; status: string; summary: { deals: { created: number } } }> };
  assert.ok(runs.length >= 2);
  assert.ok(runs.every((r) => r.trigger === 'schedule'));
  const first = runs.at(-1);
  assert.equal(first?.status, 'completed');
  assert.equal(first?.summary.deals.created, 99);
  const failures = await app.inject({ method: 'GET', url: '/crm/runs/1/failures' });
  assert.equal(failures.statusCode, 200);
  await app.close();
});
