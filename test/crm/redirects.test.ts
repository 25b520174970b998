/**
 * Credentials and redirects, against real local servers (two ports: two origins). The
 * Pipedrive token travels in `x-api-token`, a header fetch forwards to wherever a redirect
 * points: the client follows no redirect, and a 3xx ends the run with an error naming the
 * Location (credentials and query values masked) and `base_url`. HTTP Basic credentials of
 * a CRM source or of the provider feed follow a redirect within the origin, and are dropped
 * by fetch on one to another origin (also after a same-origin hop).
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, test } from 'node:test';
import { MisdirectedError, PipedriveClient } from '../../src/clients/pipedrive.ts';
import { validateCrmConfig } from '../../src/pipelines/crm/config.ts';
import { probeSource } from '../../src/pipelines/crm/sources.ts';
import { CrmRunError, runCrmSync } from '../../src/pipelines/crm/sync.ts';
import { fetchFeed } from '../../src/pipelines/events/fetch-feed.ts';
import { testDb, type TestDb } from '../helpers/db.ts';
import { JAFFLE } from './helpers.ts';

const TOKEN = 'TOKENredirect123';
const PASSWORD = 'PROXYpw456';
const LEAK = 'LOCATIONsecret789';

interface Seen {
  url: string;
  authorization: string | undefined;
  token: string | undefined;
}

/** A server that records what it was sent and answers with `route`. */
class Recorder {
  seen: Seen[] = [];
  url = '';
  private server: http.Server;
  constructor(route: (req: http.IncomingMessage, res: http.ServerResponse) => void) {
    this.server = http.createServer((req, res) => {
      this.seen.push({ url: req.url ?? '', authorization: req.headers.authorization, token: req.headers['x-api-token'] as string | undefined });
      route(req, res);
    });
  }
  async start(): Promise<void> {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }
  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}

/** Another origin (another port): serves anything, records everything. */
const other = new Recorder((_req, res) => res.writeHead(200, { 'content-type': 'text/csv' }).end('id,first_name,last_name\n1,Ada,Lovelace\n'));
/** The origin the URLs name: redirects within itself, then to `other`. */
const origin = new Recorder((req, res) => {
  const url = req.url ?? '/';
  if (url.startsWith('/api/')) {
    // A "proxy" in front of nothing: every API call redirected elsewhere, a secret in the Location.
    res.writeHead(302, { location: `${other.url}${url.slice(4)}${url.includes('?') ? '&' : '?'}api_token=${LEAK}` }).end();
  } else if (url.startsWith('/same/')) {
    // The query (a token for this server) is not passed on.
    res.writeHead(302, { location: `/moved/${url.slice(6).replace(/\?.*/, '')}` }).end();
  } else if (url.startsWith('/moved/')) {
    res.writeHead(307, { location: `${other.url}/${url.slice(7)}` }).end();
  } else {
    res.writeHead(404).end();
  }
});
let db: TestDb;

before(async () => {
  await other.start();
  await origin.start();
  db = await testDb();
});
after(async () => {
  await origin.close();
  await other.close();
  await db.close();
});

const withPassword = (url: string) => url.replace('http://', `http://proxy:${PASSWORD}@`);

function client(baseUrl: string): PipedriveClient {
  return new PipedriveClient({
    baseUrl, token: TOKEN, concurrency: 2, rateLimit: { limit: 100, windowMs: 1000 },
    retry: { maxAttempts: 3, baseMs: 1, maxMs: 5, maxRetryAfterMs: 1000 }, timeoutMs: 5000,
  });
}

test('Pipedrive: a redirect is not followed (the token stays home); every request fails with one clear error', async () => {
  origin.seen = [];
  other.seen = [];
  const c = client(withPassword(`${origin.url}/api/v1`));
  let first: unknown;
  await assert.rejects(c.call('GET', '/persons', { query: { start: 0 } }), (err: unknown) => {
    first = err;
    assert.ok(err instanceof MisdirectedError, String(err));
    assert.equal(err.code, 'invalid_input');
    assert.equal(err.status, 302);
    assert.match(err.message, /^GET \/persons: Pipedrive answered HTTP 302 \(a redirect, Location: http:\/\/127\.0\.0\.1:\d+\/v1\/persons\?start=\*\*\*&api_token=\*\*\*\)/);
    assert.match(err.message, /base_url \(http:\/\/proxy:\*\*\*@127\.0\.0\.1:\d+\/api\/v1\) does not point at the API/);
    assert.match(err.message, /the API token is not sent there/);
    for (const secret of [TOKEN, PASSWORD, LEAK]) assert.ok(!err.message.includes(secret), err.message);
    return true;
  });
  // A write too, and at once: the client is done (no second request to the origin).
  await assert.rejects(c.call('POST', '/persons', { body: { name: 'x' } }), (err: unknown) => err === first);
  assert.equal(origin.seen.length, 1);
  assert.equal(origin.seen[0]?.token, TOKEN, 'the origin named by base_url got the token');
  assert.deepEqual(other.seen, [], 'the redirect target got nothing');
  assert.equal(c.stats.requests, 1);
});

test('Pipedrive: a same-origin redirect is refused as well (the API never redirects)', async () => {
  other.seen = [];
  const c = client(`${origin.url}/same/v1`);
  await assert.rejects(c.call('GET', '/users/me'), (err: unknown) => {
    assert.ok(err instanceof MisdirectedError);
    assert.match(err.message, /HTTP 302 \(a redirect, Location: http:\/\/127\.0\.0\.1:\d+\/moved\/v1\/users\/me\)/);
    return true;
  });
  assert.deepEqual(other.seen, []);
});

test('a CRM run whose base_url redirects ends at once, failed with the error, no token stored or sent on', async () => {
  process.env.PIPEDRIVE_API_TOKEN = TOKEN;
  other.seen = [];
  const config = validateCrmConfig({
    name: 'redirected',
    sources: { customers: `${JAFFLE}/raw_customers.csv`, orders: `${JAFFLE}/raw_orders.csv`, payments: `${JAFFLE}/raw_payments.csv` },
    destination: { base_url: `${origin.url}/api/v1`, concurrency: 4, rate_limit: '10000/1s', retry: { max_attempts: 2, base_ms: 1, max_ms: 5 } },
  });
  await assert.rejects(runCrmSync(db.pool, config, { trigger: 'cli' }), (err: unknown) => {
    assert.ok(err instanceof CrmRunError, String(err));
    assert.equal(err.code, 'invalid_input');
    assert.match(err.message, /Pipedrive answered HTTP 302 .*base_url .* does not point at the API/);
    return true;
  });
  assert.deepEqual(other.seen, []);
  const { rows } = await db.pool.query(`SELECT status, row_to_json(r)::text AS t FROM crm_runs r WHERE pipeline = 'redirected'`);
  assert.equal(rows[0]?.status, 'failed');
  for (const secret of [TOKEN, LEAK]) assert.ok(!rows[0]?.t.includes(secret), rows[0]?.t);
});

test('a CRM source: Basic credentials follow a same-origin redirect, not the next one to another origin', async () => {
  origin.seen = [];
  other.seen = [];
  const probe = await probeSource(db.pool, 'redirected-source', 'customers', `${withPassword(origin.url)}/same/raw_customers.csv?access_token=${LEAK}`, true);
  probe.opened?.stream.destroy();
  assert.ok(probe.opened, 'fetched');
  assert.equal(probe.location, `http://proxy:***@${origin.url.slice(7)}/same/raw_customers.csv?access_token=***`);
  const basic = `Basic ${Buffer.from(`proxy:${PASSWORD}`).toString('base64')}`;
  assert.deepEqual(origin.seen.map((s) => [s.url, s.authorization]), [
    [`/same/raw_customers.csv?access_token=${LEAK}`, basic],
    ['/moved/raw_customers.csv', basic],
  ]);
  assert.deepEqual(other.seen.map((s) => [s.url, s.authorization]), [['/raw_customers.csv', undefined]]);
});

test('the provider feed: Basic credentials follow a same-origin redirect, not the next one to another origin', async () => {
  origin.seen = [];
  other.seen = [];
  let body = '';
  for await (const chunk of fetchFeed(`${withPassword(origin.url)}/same/feed.xml`)) body += Buffer.from(chunk).toString();
  assert.match(body, /Lovelace/);
  assert.deepEqual(origin.seen.map((s) => s.authorization !== undefined), [true, true]);
  assert.deepEqual(other.seen.map((s) => [s.url, s.authorization]), [['/feed.xml', undefined]]);
});
