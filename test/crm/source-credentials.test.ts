/**
 * Sources whose URL carries credentials (`http://admin:pw123SECRET@host/raw_customers.csv`):
 * sent as HTTP Basic authorization to a server that requires it, and the password found in
 * no message, log, stored error or stored location (CLI stdout/stderr, crm_runs,
 * crm_sources, GET /crm/runs), also when the server refuses it or cannot be reached.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { PipedriveSimulator } from '../../src/dev/pipedrive-simulator.ts';
import { validateCrmConfig } from '../../src/pipelines/crm/config.ts';
import { startSchedule } from '../../src/pipelines/crm/service.ts';
import { testDb, type TestDb } from '../helpers/db.ts';
import { FileServer, runCli, tmpDir, until, writeConfig, runsApiBody, storedRunsText } from './helpers.ts';

const PASSWORD = 'pw123SECRET';
const TOKEN = 'credentials-token';
let db: TestDb;
let sim: PipedriveSimulator;
let files: FileServer;
let apiUrl: string;
const dir = tmpDir();

before(async () => {
  db = await testDb();
  sim = new PipedriveSimulator({ token: TOKEN });
  apiUrl = await sim.listen();
  files = new FileServer();
  files.auth = { user: 'admin', password: PASSWORD };
  await files.start();
});
after(async () => {
  await sim.close();
  await files.close();
  await db.close();
});

/** `http://admin:<password>@127.0.0.1:port` */
function withCredentials(password: string): string {
  return files.url.replace('http://', `http://admin:${password}@`);
}

const stored = (pipeline: string) => storedRunsText(db.pool, pipeline);
const runsApi = (pipeline: string) => runsApiBody(db.pool, pipeline);

function sync(config: string) {
  return runCli(['sync', 'crm', '--once', '--json', '--config', config], { DATABASE_URL: db.url, PIPEDRIVE_API_TOKEN: TOKEN });
}

test('a source URL with user:password is fetched with HTTP Basic auth; the password is shown nowhere', async () => {
  const config = writeConfig(dir, withCredentials(PASSWORD), apiUrl, { name: 'creds' });
  const before = files.authorizations.length;
  const r = await sync(config);
  assert.equal(r.code, 0, r.stderr);
  const out = JSON.parse(r.stdout.trim());
  assert.equal(out.status, 'completed');
  assert.equal(out.persons.created, 100);
  assert.equal(out.deals.created, 99);
  const sent = files.authorizations.slice(before);
  assert.equal(sent.length, 3);
  assert.ok(sent.every((a) => a === `Basic ${Buffer.from(`admin:${PASSWORD}`).toString('base64')}`));
  assert.ok(!`${r.stdout}${r.stderr}`.includes(PASSWORD));
  const rows = await stored('creds');
  assert.ok(!rows.includes(PASSWORD), rows);
  // The location is kept (the user too, to say which account), its password masked.
  assert.match(rows, /"location":"http:\/\/admin:\*\*\*@127\.0\.0\.1:\d+\/raw_payments\.csv"/);
  const api = await runsApi('creds');
  assert.ok(!api.includes(PASSWORD));
  assert.match(api, /admin:\*\*\*@127\.0\.0\.1/);
  // The masked location is the same source: the next run's requests are conditional (304s).
  const again = await sync(config);
  assert.equal(again.code, 0, again.stderr);
  assert.equal(JSON.parse(again.stdout.trim()).status, 'skipped');

  // The password rotated (server and config): the same sources, still conditional (three
  // 304s), the same fingerprint, the run skipped; the new password stored nowhere either.
  const rotated = 'pw456ROTATED';
  files.auth = { user: 'admin', password: rotated };
  try {
    const notModified = files.hits.notModified;
    const r2 = await sync(writeConfig(dir, withCredentials(rotated), apiUrl, { name: 'creds' }));
    assert.equal(r2.code, 0, r2.stderr);
    assert.equal(JSON.parse(r2.stdout.trim()).status, 'skipped');
    assert.equal(files.hits.notModified, notModified + 3);
    assert.ok(!`${r2.stdout}${r2.stderr}`.includes(rotated));
    const recorded = await stored('creds');
    assert.ok(!recorded.includes(rotated) && !recorded.includes(PASSWORD), recorded);
    const hashes = await db.pool.query(`SELECT DISTINCT config_hash FROM crm_runs WHERE pipeline = 'creds'`);
    assert.equal(hashes.rowCount, 1);
  } finally {
    files.auth = { user: 'admin', password: PASSWORD };
  }
});

test('a refused password or an unreachable server fails the run without showing the password', async () => {
  const wrong = 'WRONGpw999';
  const refused = await sync(writeConfig(dir, withCredentials(wrong), apiUrl, { name: 'creds-refused' }));
  assert.equal(refused.code, 1);
  assert.match(refused.stderr, /source \w+: HTTP 401 from http:\/\/admin:\*\*\*@127\.0\.0\.1:\d+\/raw_\w+\.csv \(check the user and password/);
  assert.equal(JSON.parse(refused.stdout.trim()).status, 'failed');
  // Nothing listens on port 1: fetch fails, and its message quotes no password either.
  const down = await sync(writeConfig(dir, `http://admin:${wrong}@127.0.0.1:1`, apiUrl, { name: 'creds-down' }));
  assert.equal(down.code, 1);
  assert.match(down.stderr, /cannot fetch http:\/\/admin:\*\*\*@127\.0\.0\.1:1\/raw_\w+\.csv/);
  for (const r of [refused, down]) assert.ok(!`${r.stdout}${r.stderr}`.includes(wrong), `${r.stdout}${r.stderr}`);
  for (const p of ['creds-refused', 'creds-down']) {
    const rows = await stored(p);
    assert.match(rows, /"status":"failed"/);
    assert.ok(!rows.includes(wrong), rows);
    assert.ok(!(await runsApi(p)).includes(wrong));
  }
});

test("the scheduled service's log and outcomes show no password", async () => {
  const wrong = 'WRONGpw777';
  const config = validateCrmConfig({
    name: 'creds-scheduled',
    sources: { customers: `${withCredentials(wrong)}/raw_customers.csv`, orders: `${withCredentials(wrong)}/raw_orders.csv`, payments: `${withCredentials(wrong)}/raw_payments.csv` },
    schedule: { interval: '100ms', retry_after: 'off' },
    destination: { type: 'postgres' },
  });
  const lines: string[] = [];
  const outcomes: string[] = [];
  const service = await startSchedule(db.pool, config, { trigger: 'schedule', log: (l) => lines.push(l), onRun: (o) => outcomes.push(JSON.stringify(o)) });
  try {
    await until(() => outcomes.length >= 1, 'a scheduled run');
  } finally {
    await service.stop();
  }
  assert.match(lines.join('\n'), /HTTP 401 from http:\/\/admin:\*\*\*@/);
  assert.ok(!lines.join('\n').includes(wrong));
  assert.ok(!outcomes.join('\n').includes(wrong));
});

test('config errors quoting a URL mask its password', () => {
  assert.throws(
    () => validateCrmConfig({
      sources: { customers: `ftp://admin:${PASSWORD}@files.example/c.csv`, orders: 'o.csv', payments: 'p.csv' },
      destination: { base_url: `ftp://admin:${PASSWORD}@api.example/v1` },
    }),
    (err: Error) => {
      assert.match(err.message, /sources.customers: expected an http\(s\) URL or a file path, got "ftp:\/\/admin:\*\*\*@files.example\/c.csv"/);
      assert.match(err.message, /destination.base_url: expected an http\(s\) URL, got "ftp:\/\/admin:\*\*\*@api.example\/v1"/);
      assert.ok(!err.message.includes(PASSWORD));
      return true;
    },
  );
});
