/**
 * Sources whose URL carries a secret in its query string
 * (`http://exporter:pw@host/raw_customers.csv?access_token=SECRET`): the request uses the
 * real URL, and every place the URL is shown or stored masks each query value
 * (`?access_token=***`): the run's outcome, crm_runs, crm_sources, GET /crm/runs, errors.
 * The masked location stands for every value of the query, so it cannot tell whether the
 * last fetch was this resource: a digest of the real URL does (its query included, its
 * password not; crm_sources.location_sha256). Another `?date=` is fetched unconditionally
 * (neither the last resource's Last-Modified nor its entity tag, which a server's version
 * counter may share between resources, is sent) and the config's fingerprint changes; a
 * rotated password is the same resource (conditional, both validators; the run skipped).
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { validateCrmConfig } from '../../src/pipelines/crm/config.ts';
import { CrmRunError, runCrmSync } from '../../src/pipelines/crm/sync.ts';
import { testDb, type TestDb } from '../helpers/db.ts';
import { FILES, JAFFLE, runsApiBody, storedRunsText } from './helpers.ts';

const SECRET = 'QUERYSECRETx42';
const PASSWORD = 'pwEXPORT77';
/** The exporter's password after a rotation: both are accepted. */
const ROTATED = 'pwROTATED88';
const BASIC = [PASSWORD, ROTATED].map((pw) => `Basic ${Buffer.from(`exporter:${pw}`).toString('base64')}`);

interface Seen {
  path: string;
  query: string;
  ifNoneMatch: string | undefined;
  ifModifiedSince: string | undefined;
  status: number;
}

/**
 * Exports behind a token in the query and Basic auth. `/dated/raw_customers.csv?date=...`
 * is a different resource per date (its Last-Modified that date, no ETag); the other files
 * carry an ETag and a Last-Modified and honour both conditions (`/open/...` without the token).
 * `/versioned/raw_customers.csv?date=...` also differs per date, but its entity tag is the
 * export's version counter, one for every date (`"v<version>"`), and If-None-Match alone is
 * honoured: the tag of one date's export answers 304 for any other.
 */
let server: http.Server;
let base = '';
const seen: Seen[] = [];
const files = new Map(FILES.map((f) => [f, fs.readFileSync(path.join(JAFFLE, f))]));
const MODIFIED = new Date('2024-03-01T00:00:00Z');
const VERSION = '"v7"';

before(async () => {
  server = http.createServer((req, res) => {
    const u = new URL(req.url ?? '/', 'http://x');
    const answer = (status: number, headers: Record<string, string> = {}, body?: Buffer | string) => {
      seen.push({
        path: u.pathname, query: u.search, status,
        ifNoneMatch: req.headers['if-none-match'], ifModifiedSince: req.headers['if-modified-since'],
      });
      res.writeHead(status, headers).end(body);
    };
    if (!BASIC.includes(req.headers.authorization ?? '')) return answer(401);
    if (!u.pathname.startsWith('/open/') && u.searchParams.get('access_token') !== SECRET) return answer(403);
    const name = path.basename(u.pathname) as (typeof FILES)[number];
    const body = files.get(name);
    if (!body) return answer(404);
    if (u.pathname.startsWith('/dated/')) {
      const date = new Date(`${u.searchParams.get('date')}T00:00:00Z`);
      const ims = req.headers['if-modified-since'];
      if (ims && date.getTime() <= Date.parse(ims)) return answer(304);
      // Each date's export differs: the first customer's name says which.
      const text = body.toString().replace('1,Michael,P.', `1,Michael ${u.searchParams.get('date')},P.`);
      return answer(200, { 'content-type': 'text/csv', 'last-modified': date.toUTCString() }, text);
    }
    if (u.pathname.startsWith('/versioned/')) {
      if (req.headers['if-none-match'] === VERSION) return answer(304, { etag: VERSION });
      const text = body.toString().replace('1,Michael,P.', `1,Michael of ${u.searchParams.get('date')?.slice(0, 7)},P.`);
      return answer(200, { 'content-type': 'text/csv', etag: VERSION }, text);
    }
    const etag = `"${name}-v1"`;
    if (req.headers['if-none-match'] === etag) return answer(304, { etag });
    const ims = req.headers['if-modified-since'];
    if (!req.headers['if-none-match'] && ims && MODIFIED.getTime() <= Date.parse(ims)) return answer(304);
    answer(200, { 'content-type': 'text/csv', etag, 'last-modified': MODIFIED.toUTCString() }, body);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  base = `http://exporter:${PASSWORD}@127.0.0.1:${(server.address() as AddressInfo).port}`;
  db = await testDb();
});
let db: TestDb;
after(async () => {
  server.closeAllConnections();
  await new Promise<void>((r) => server.close(() => r()));
  await db.close();
});

function config(name: string, customers?: string, password = PASSWORD) {
  const at = (f: string) => `${base.replace(PASSWORD, password)}/files/${f}?access_token=${SECRET}&page=1`;
  return validateCrmConfig({
    name,
    sources: { customers: customers ?? at('raw_customers.csv'), orders: at('raw_orders.csv'), payments: at('raw_payments.csv') },
    destination: { type: 'postgres' },
  });
}

const stored = (pipeline: string) => storedRunsText(db.pool, pipeline);
const runsApi = (pipeline: string) => runsApiBody(db.pool, pipeline);

function assertNoSecret(text: string): void {
  assert.ok(!text.includes(SECRET), text);
  assert.ok(!text.includes(PASSWORD), text);
  assert.ok(!text.includes(ROTATED), text);
}

test('the real URL is fetched; outcome, crm_runs, crm_sources and GET /crm/runs show ?access_token=***', async () => {
  const first = await runCrmSync(db.pool, config('qs'), { trigger: 'cli' });
  assert.equal(first.status, 'completed');
  assert.equal(first.summary.persons.created, 100);
  assert.equal(
    first.sources.payments?.location,
    `http://exporter:***@${base.replace(/^.*@/, '')}/files/raw_payments.csv?access_token=***&page=***`,
  );
  assertNoSecret(JSON.stringify(first));
  const rows = await stored('qs');
  assertNoSecret(rows);
  assert.match(rows, /"location":"http:\/\/exporter:\*\*\*@127\.0\.0\.1:\d+\/files\/raw_customers\.csv\?access_token=\*\*\*&page=\*\*\*"/);
  const api = await runsApi('qs');
  assertNoSecret(api);
  assert.match(api, /raw_orders\.csv\?access_token=\*\*\*&page=\*\*\*/);

  // The same real URL is the same source: conditional requests, on both validators (its
  // identity includes the query, so they are this resource's own).
  const before = seen.length;
  const again = await runCrmSync(db.pool, config('qs'), { trigger: 'cli' });
  assert.equal(again.status, 'skipped');
  const requests = seen.slice(before);
  assert.equal(requests.length, 3);
  for (const r of requests) {
    assert.equal(r.status, 304);
    assert.match(r.ifNoneMatch ?? '', /-v1"$/);
    assert.equal(r.ifModifiedSince, MODIFIED.toUTCString());
  }
});

test('another query value behind the same masked location: fetched again, not taken as unchanged', async () => {
  const dated = (date: string) => `${base}/dated/raw_customers.csv?access_token=${SECRET}&date=${date}`;
  const feb = await runCrmSync(db.pool, config('qs-dated', dated('2024-02-01')), { trigger: 'cli' });
  assert.equal(feb.status, 'completed');
  assert.equal(feb.sources.customers?.reason, 'new');
  // An older export: with the February Last-Modified sent, this server would answer 304.
  const before = seen.length;
  const jan = await runCrmSync(db.pool, config('qs-dated', dated('2024-01-01')), { trigger: 'cli' });
  assert.equal(jan.sources.customers?.location, feb.sources.customers?.location, 'shown alike');
  assert.equal(jan.sources.customers?.reason, 'changed');
  assert.equal(jan.summary.persons.updated, 1);
  const r = seen.slice(before).find((x) => x.path === '/dated/raw_customers.csv');
  assert.equal(r?.status, 200);
  assert.equal(r?.ifModifiedSince, undefined);
  // The same date again: this resource's own Last-Modified is sent, and honoured.
  const mark = seen.length;
  const same = await runCrmSync(db.pool, config('qs-dated', dated('2024-01-01')), { trigger: 'cli' });
  assert.equal(same.status, 'skipped');
  const o = seen.slice(mark).find((x) => x.path === '/dated/raw_customers.csv');
  assert.equal(o?.status, 304);
  assert.equal(o?.ifModifiedSince, new Date('2024-01-01T00:00:00Z').toUTCString());
  // A URL without query values sends both conditions too.
  const open = `${base}/open/raw_customers.csv`;
  await runCrmSync(db.pool, config('qs-open', open), { trigger: 'cli' });
  const mark2 = seen.length;
  await runCrmSync(db.pool, config('qs-open', open), { trigger: 'cli' });
  const p = seen.slice(mark2).find((x) => x.path === '/open/raw_customers.csv');
  assert.equal(p?.status, 304);
  assert.equal(p?.ifModifiedSince, MODIFIED.toUTCString());
  assert.match(p?.ifNoneMatch ?? '', /-v1"$/);
});

/** crm_sources' customers row and the pipeline's last run's config fingerprint. */
async function identityOf(pipeline: string): Promise<{ location: string; location_sha256: string | null; config_hash: string }> {
  const { rows } = await db.pool.query(
    `SELECT s.location, s.location_sha256,
            (SELECT config_hash FROM crm_runs r WHERE r.pipeline = s.pipeline ORDER BY id DESC LIMIT 1) AS config_hash
       FROM crm_sources s WHERE s.pipeline = $1 AND s.source = 'customers'`,
    [pipeline],
  );
  return rows[0];
}

test('another ?date= where the ETag is a version counter shared by every date: fetched unconditionally, the new export staged', async () => {
  const versioned = (date: string, password = PASSWORD) =>
    `${base.replace(PASSWORD, password)}/versioned/raw_customers.csv?access_token=${SECRET}&date=${date}`;
  const jan = await runCrmSync(db.pool, config('qs-versioned', versioned('2024-01-01')), { trigger: 'cli' });
  assert.equal(jan.status, 'completed');
  const janId = await identityOf('qs-versioned');

  // February's export carries the same entity tag ("v7"): sent, it would get a 304 and
  // January's rows would stay staged, the run skipped.
  const before = seen.length;
  const feb = await runCrmSync(db.pool, config('qs-versioned', versioned('2024-02-01')), { trigger: 'cli' });
  const r = seen.slice(before).find((x) => x.path === '/versioned/raw_customers.csv');
  assert.equal(r?.ifNoneMatch, undefined, 'not conditional on the other date\'s entity tag');
  assert.equal(r?.status, 200);
  assert.equal(feb.status, 'completed');
  assert.equal(feb.sources.customers?.reason, 'changed');
  assert.equal(feb.summary.persons.updated, 1);
  const { rows } = await db.pool.query(`SELECT first_name FROM crm_customers WHERE pipeline = 'qs-versioned' AND id = 1`);
  assert.deepEqual(rows, [{ first_name: 'Michael of 2024-02' }]);
  const febId = await identityOf('qs-versioned');
  assert.equal(febId.location, janId.location, 'shown alike: ?access_token=***&date=***');
  assert.notEqual(febId.location_sha256, janId.location_sha256);
  assert.notEqual(febId.config_hash, janId.config_hash, 'another source: another fingerprint');

  // The exporter's password rotated: the same resource. Conditional (the entity tag of
  // February's export, both validators of the others), every source a 304, the run skipped.
  const mark = seen.length;
  const rotated = await runCrmSync(db.pool, config('qs-versioned', versioned('2024-02-01', ROTATED), ROTATED), { trigger: 'cli' });
  assert.equal(rotated.status, 'skipped');
  const requests = seen.slice(mark);
  assert.equal(requests.length, 3);
  for (const x of requests) assert.equal(x.status, 304, JSON.stringify(x));
  assert.equal(requests.find((x) => x.path === '/versioned/raw_customers.csv')?.ifNoneMatch, VERSION);
  for (const x of requests.filter((y) => y.path.startsWith('/files/'))) assert.equal(x.ifModifiedSince, MODIFIED.toUTCString());
  const rotatedId = await identityOf('qs-versioned');
  assert.equal(rotatedId.location_sha256, febId.location_sha256);
  assert.equal(rotatedId.config_hash, febId.config_hash, 'a new password alone: the same fingerprint');

  // Nothing secret stored in clear: neither password, the token, nor the query's values.
  const recorded = await stored('qs-versioned');
  assertNoSecret(recorded);
  assert.ok(!/date=2024/.test(recorded), recorded);
  assert.ok(!recorded.includes(versioned('2024-02-01')), recorded);
  const { rows: columns } = await db.pool.query(`SELECT * FROM crm_sources WHERE pipeline = 'qs-versioned'`);
  assert.equal(columns.length, 3);
  for (const row of columns) {
    assert.match(row.location_sha256, /^[0-9a-f]{64}$/);
    assertNoSecret(JSON.stringify(row));
  }
});

test('refused or unreachable: the error shows the query values masked, stored and thrown alike', async () => {
  const refused = validateCrmConfig({
    name: 'qs-refused',
    sources: {
      customers: `${base}/files/raw_customers.csv?access_token=WRONG${SECRET}`,
      orders: `${base}/files/raw_orders.csv?access_token=WRONG${SECRET}`,
      payments: `${base}/files/raw_payments.csv?access_token=WRONG${SECRET}`,
    },
    destination: { type: 'postgres' },
  });
  await assert.rejects(runCrmSync(db.pool, refused, { trigger: 'cli' }), (err: unknown) => {
    assert.ok(err instanceof CrmRunError);
    assert.match(err.message, /HTTP 403 from http:\/\/exporter:\*\*\*@127\.0\.0\.1:\d+\/files\/raw_\w+\.csv\?access_token=\*\*\*/);
    assertNoSecret(err.message);
    return true;
  });
  const down = validateCrmConfig({
    name: 'qs-down',
    sources: {
      customers: `http://127.0.0.1:1/raw_customers.csv?access_token=${SECRET}`,
      orders: `http://127.0.0.1:1/raw_orders.csv?access_token=${SECRET}`,
      payments: `http://127.0.0.1:1/raw_payments.csv?access_token=${SECRET}`,
    },
    destination: { type: 'postgres' },
  });
  await assert.rejects(runCrmSync(db.pool, down, { trigger: 'cli' }), (err: unknown) => {
    assert.ok(err instanceof CrmRunError);
    assert.match(err.message, /cannot fetch http:\/\/127\.0\.0\.1:1\/raw_\w+\.csv\?access_token=\*\*\*/);
    assertNoSecret(err.message);
    return true;
  });
  for (const p of ['qs-refused', 'qs-down']) {
    const rows = await stored(p);
    assert.match(rows, /"status":"failed"/);
    assertNoSecret(rows);
    assertNoSecret(await runsApi(p));
  }
});
