/**
 * What the CLI and the API answer when there is no run to speak of: `sluice sync crm --once
 * --json` with the pipeline locked (or a bad config) prints one JSON object, and
 * GET /crm/runs/:id/failures of a run that does not exist is a 404 in the API's error form.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { insertRun, tryLockPipeline, unlockPipeline } from '../../src/db/sql/crm.ts';
import { buildServer } from '../../src/http/server.ts';
import { testDb, type TestDb } from '../helpers/db.ts';
import { JAFFLE, runCli, tmpDir, writeConfig } from './helpers.ts';

let db: TestDb;
const dir = tmpDir();

before(async () => {
  db = await testDb();
});
after(async () => {
  await db.close();
});

const ZERO = { created: 0, updated: 0, unchanged: 0, failed: 0, unconfirmed: 0 };

test('--json prints one JSON object when the pipeline is locked by another run (exit 1)', async () => {
  const config = writeConfig(dir, JAFFLE, 'http://127.0.0.1:1/v1', { name: 'locked' });
  const holder = await db.pool.connect();
  try {
    assert.equal(await tryLockPipeline(holder, 'locked'), true);
    const r = await runCli(['sync', 'crm', '--once', '--json', '--config', config], { DATABASE_URL: db.url, PIPEDRIVE_API_TOKEN: 'x' });
    assert.equal(r.code, 1);
    const lines = r.stdout.trim().split('\n');
    assert.equal(lines.length, 1, r.stdout);
    const out = JSON.parse(lines[0] as string);
    assert.deepEqual({ ...out, duration_ms: 0 }, {
      persons: ZERO, deals: ZERO, requests: 0, retries_429: 0, duration_ms: 0,
      run_id: null, status: 'failed', error: 'a sync of pipeline "locked" is already running', code: 'conflict',
    });
    assert.match(r.stderr, /sluice: a sync of pipeline "locked" is already running \[conflict\]/);
  } finally {
    await unlockPipeline(holder, 'locked');
    holder.release();
  }
});

test('--json prints one JSON object for a bad config too (exit 2)', async () => {
  const file = path.join(dir, 'bad.yaml');
  fs.writeFileSync(file, 'sources:\n  customers: c.csv\n');
  const r = await runCli(['sync', 'crm', '--once', '--json', '--config', file], { DATABASE_URL: 'postgres://unused@127.0.0.1:1/x' });
  assert.equal(r.code, 2);
  const out = JSON.parse(r.stdout.trim());
  assert.equal(out.status, 'failed');
  assert.equal(out.run_id, null);
  assert.equal(out.code, 'invalid_input');
  assert.match(out.error, /sources.orders: required/);
});

test('--json prints one JSON object without --config, and for --force without --once (exit 2)', async () => {
  // Until session 9 commander refused a missing --config itself: usage text, no JSON.
  const cases: Array<[string[], RegExp]> = [
    [['sync', 'crm', '--once', '--json'], /--config is required/],
    [['sync', 'crm', '--force', '--json', '--config', path.join(dir, 'any.yaml')], /--force applies to --once runs/],
  ];
  for (const [args, message] of cases) {
    const r = await runCli(args, { DATABASE_URL: 'postgres://unused@127.0.0.1:1/x' });
    assert.equal(r.code, 2, r.stderr);
    const lines = r.stdout.trim().split('\n');
    assert.equal(lines.length, 1, r.stdout);
    const out = JSON.parse(lines[0] as string);
    assert.equal(out.status, 'failed');
    assert.equal(out.code, 'invalid_input');
    assert.match(out.error, message);
  }
});

test('GET /crm/runs/:id/failures: 404 for a run that does not exist, 200 for one without failures', async () => {
  const runId = await insertRun(db.pool, { pipeline: 'outcomes', trigger: 'api', destination: 'postgres', forced: false, configHash: 'x' });
  const app = await buildServer({ pool: db.pool });
  try {
    const missing = await app.inject({ method: 'GET', url: `/crm/runs/${runId + 1000}/failures` });
    assert.equal(missing.statusCode, 404);
    assert.deepEqual(missing.json(), { error: { code: 'not_found', message: `no CRM run ${runId + 1000}` } });
    const found = await app.inject({ method: 'GET', url: `/crm/runs/${runId}/failures` });
    assert.equal(found.statusCode, 200);
    assert.deepEqual(found.json(), { failures: [] });
    const bad = await app.inject({ method: 'GET', url: '/crm/runs/abc/failures' });
    assert.equal(bad.statusCode, 400);
    assert.equal(bad.json().error.code, 'invalid_input');
  } finally {
    await app.close();
  }
});

test('GET /crm/runs reads its parameters strictly: 1e2, 0x10, " 7" and a repeated pipeline are 400s', async () => {
  const app = await buildServer({ pool: db.pool });
  try {
    for (const url of ['/crm/runs?limit=1e2', '/crm/runs?limit=0x10', '/crm/runs?limit=%207', '/crm/runs?pipeline=a&pipeline=b', '/crm/runs/1/failures?limit=1.5', '/crm/runs/0x1/failures']) {
      const res = await app.inject({ method: 'GET', url });
      assert.equal(res.statusCode, 400, `${url}: ${res.body}`);
      assert.equal(res.json().error.code, 'invalid_input', url);
    }
    const ok = await app.inject({ method: 'GET', url: '/crm/runs?limit=7&pipeline=none' });
    assert.equal(ok.statusCode, 200, ok.body);
    assert.deepEqual(ok.json(), { runs: [] });
  } finally {
    await app.close();
  }
});
