/**
 * What the feed's source may be and how `sync events` reads its settings: credentials in the
 * URL (sent as HTTP Basic, never shown), a document that is not the event feed (an error
 * page), a sync interval too short to be one, the SLUICE_PROVIDER_* settings in the CLI, and
 * URLs that are not http(s).
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import { after, before, test } from 'node:test';
import { SETTINGS } from '../../src/config.ts';
import { getSync } from '../../src/db/sql/events.ts';
import { startProviderSimulator, type ProviderSimulator } from '../../src/dev/provider-simulator.ts';
import { SyncScheduler } from '../../src/pipelines/events/sync-service.ts';
import { syncEvents, type SyncResult } from '../../src/pipelines/events/sync.ts';
import { testDb, type TestDb } from '../helpers/db.ts';
import { killAll, startSluice } from '../helpers/processes.ts';
import { exitedWithin } from '../cli/exit.ts';
import { RESPONSE_1 } from './feeds.ts';

const PASSWORD = 's3cretpw';
let db: TestDb;
/** Requires Basic bob:s3cretpw. */
let sim: ProviderSimulator;
/** A plain feed, no credentials. */
let open: ProviderSimulator;
before(async () => {
  db = await testDb();
  sim = await startProviderSimulator({ responses: [RESPONSE_1], basicAuth: { user: 'bob', password: PASSWORD } });
  open = await startProviderSimulator({ responses: [RESPONSE_1] });
});
after(async () => {
  await killAll();
  await sim.close();
  await open.close();
  await db.close();
});

const withCredentials = (url: string, user: string, password: string) => url.replace('http://', `http://${user}:${password}@`);

/** `sluice sync events ...args` to its end: exit code, stdout, stderr. */
async function cli(args: string[], env: Record<string, string> = {}, ms = 60_000) {
  const p = startSluice(['sync', 'events', ...args], { DATABASE_URL: db.url, SLUICE_PROVIDER_URL: '', ...env });
  const code = await exitedWithin(p, ms);
  return { code, output: p.output() };
}

/** Every provider_syncs row's url and error, as one text. */
async function storedText(): Promise<string> {
  const { rows } = await db.pool.query<{ url: string; error: string | null }>('SELECT url, error FROM provider_syncs');
  return rows.map((r) => `${r.url} ${r.error ?? ''}`).join('\n');
}

test('credentials in the feed URL are sent as HTTP Basic: the sync completes, and the stored URL masks the password', async () => {
  const r = await syncEvents(db.pool, { url: withCredentials(sim.url, 'bob', PASSWORD), trigger: 'test', retries: 0 });
  assert.equal(r.status, 'completed', r.error);
  assert.equal(r.eventsSeen, 3);
  const record = await getSync(db.pool, r.syncId);
  assert.equal(record?.url, withCredentials(sim.url, 'bob', '***'));
  // Percent-encoded credentials are decoded before they are sent.
  const encoded = await startProviderSimulator({ responses: [RESPONSE_1], basicAuth: { user: 'b@b', password: 'p:w/ü' } });
  try {
    const e = await syncEvents(db.pool, { url: withCredentials(encoded.url, 'b%40b', 'p%3Aw%2F%C3%BC'), trigger: 'test', retries: 0 });
    assert.equal(e.status, 'completed', e.error);
  } finally {
    await encoded.close();
  }
});

test('a wrong password: HTTP 401, not retried, and the password is nowhere (result, stored row, scheduler, CLI output)', async () => {
  const wrong = 'wr0ngpassw0rd';
  const url = withCredentials(sim.url, 'bob', wrong);
  const r = await syncEvents(db.pool, { url, trigger: 'test', retries: 2, backoffMs: 5 });
  assert.equal(r.status, 'failed');
  assert.equal(r.attempts, 1);
  assert.match(r.error ?? '', /HTTP 401/);
  assert.doesNotMatch(JSON.stringify(r), new RegExp(wrong));

  // The scheduler of `serve` (what it logs is its results and messages).
  const scheduler = new SyncScheduler(db.pool, { url, intervalS: 3600, retries: 0 });
  const said: string[] = [];
  scheduler.on('skip', (m) => said.push(m));
  scheduler.on('unrecorded', (m) => said.push(m));
  const result = new Promise<SyncResult>((resolve) => scheduler.once('sync', resolve));
  scheduler.start();
  said.push(JSON.stringify(await result));
  await scheduler.stop();
  assert.doesNotMatch(said.join('\n'), new RegExp(wrong));

  const out = await cli(['--once', '--url', url, '--retries', '0']);
  assert.equal(out.code, 1, out.output);
  assert.match(out.output, /HTTP 401/);
  assert.doesNotMatch(out.output, new RegExp(wrong));
  // The reported case: the right password works from the CLI too.
  const ok = await cli(['--once', '--url', withCredentials(sim.url, 'bob', PASSWORD)]);
  assert.equal(ok.code, 0, ok.output);
  assert.equal(JSON.parse(ok.output).status, 'completed');
  assert.doesNotMatch(ok.output, new RegExp(PASSWORD));

  const stored = await storedText();
  assert.doesNotMatch(stored, new RegExp(`${wrong}|${PASSWORD}`));
  assert.match(stored, /bob:\*\*\*@/);
});

test('an error that quotes the URL (one fetch cannot parse) does not quote its password', async () => {
  const r = await syncEvents(db.pool, { url: `http://bob:${PASSWORD}@[::1/feed`, trigger: 'test', retries: 2, backoffMs: 5 });
  assert.equal(r.status, 'failed');
  assert.equal(r.attempts, 1, 'not a URL: not retried');
  assert.doesNotMatch(`${JSON.stringify(r)}\n${await storedText()}`, new RegExp(PASSWORD));
  const out = await cli(['--once', '--url', `http://bob:${PASSWORD}@[::1/feed`]);
  assert.equal(out.code, 2, out.output);
  assert.doesNotMatch(out.output, new RegExp(PASSWORD));
});

/** A local server answering every request with 200 and `body`. */
async function serving(body: string): Promise<{ url: string; requests: () => number; close: () => Promise<void> }> {
  let requests = 0;
  const server = http.createServer((_req, res) => {
    requests += 1;
    res.writeHead(200, { 'content-type': 'application/xml' }).end(body);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as { port: number }).port}/feed`,
    requests: () => requests,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}

test('a document whose root is not <eventList> (an error page) fails the sync as an invalid file, naming its root; nothing is stored', async () => {
  const cases: Array<[string, string]> = [
    ['<error>rate limited</error>', 'error'],
    ['<?xml version="1.0"?>\n<html><body>Maintenance</body></html>', 'html'],
    [
      '<a><base_event base_event_id="900" sell_mode="online" title="Stray"><event event_start_date="2021-01-01T10:00:00" event_end_date="2021-01-01T11:00:00" event_id="1"><zone zone_id="1" price="5"/></event></base_event></a>',
      'a',
    ],
  ];
  for (const [body, root] of cases) {
    const server = await serving(body);
    try {
      const r = await syncEvents(db.pool, { url: server.url, trigger: 'test', retries: 1, backoffMs: 5 });
      assert.equal(r.status, 'failed', body);
      assert.match(r.error ?? '', new RegExp(`root element is <${root}>, not <eventList>`), body);
      // The provider's trouble, like an HTTP 5xx: retried (then the breaker counts the failed sync).
      assert.equal(r.attempts, 2, body);
      assert.equal(server.requests(), 2, body);
      assert.equal((await getSync(db.pool, r.syncId))?.status, 'failed');
    } finally {
      await server.close();
    }
  }
  const { rows } = await db.pool.query(`SELECT 1 FROM provider_base_events WHERE base_event_id = '900'`);
  assert.equal(rows.length, 0, 'the stray event was not stored');

  // From the CLI, with the reported error page: exit 1, failed.
  const page = await serving('<error>rate limited</error>');
  try {
    // The scheduler's circuit breaker opens on error pages (it never did: they "completed").
    await db.pool.query('UPDATE provider_feed_state SET next_sync_at = now()'); // free the slot the scheduler above claimed
    const scheduler = new SyncScheduler(db.pool, { url: page.url, intervalS: 0.05, retries: 0, breaker: { failureThreshold: 2, cooldownMs: 60_000 } });
    const statuses: string[] = [];
    scheduler.on('sync', (r) => statuses.push(r.status));
    const open = new Promise<void>((resolve) => scheduler.on('skip', (reason) => reason === 'circuit open' && resolve()));
    scheduler.start();
    await open;
    await scheduler.stop();
    assert.deepEqual(statuses, ['failed', 'failed']);
    assert.equal(scheduler.breaker.state, 'open');

    const out = await cli(['--once', '--url', page.url, '--retries', '0']);
    assert.equal(out.code, 1, out.output);
    const summary = JSON.parse(out.output.split('\n')[0]!);
    assert.equal(summary.status, 'failed');
    assert.match(summary.error, /root element is <error>/);
  } finally {
    await page.close();
  }
});

test('a sync interval below 1 s is bad usage: the --interval flag and SLUICE_PROVIDER_INTERVAL_S (exit 2)', async () => {
  for (const v of ['0', '0.5', '-1', 'abc', String(2 ** 31)]) {
    const out = await cli(['--url', open.url, '--interval', v], {}, 20_000);
    assert.equal(out.code, 2, `--interval ${v}: ${out.output}`);
    assert.match(out.output, /--interval must be a whole number from 1 to 2147483/);
    const env = await cli(['--url', open.url], { SLUICE_PROVIDER_INTERVAL_S: v }, 20_000);
    assert.equal(env.code, 2, `SLUICE_PROVIDER_INTERVAL_S=${v}: ${env.output}`);
    assert.match(env.output, /SLUICE_PROVIDER_INTERVAL_S must be a whole number from 1 to 2147483/);
  }
  assert.equal(open.fetches, 0, 'the provider was never fetched');
  assert.equal(SETTINGS.SLUICE_PROVIDER_INTERVAL_S!.check('0'), 'must be a whole number from 1 to 2147483');
  assert.equal(SETTINGS.SLUICE_PROVIDER_INTERVAL_S!.check('1'), undefined);
  // serve refuses it before it opens anything (the database URL here leads nowhere).
  const serve = startSluice(['serve', '--port', '0'], { DATABASE_URL: 'postgres://sluice:x@127.0.0.1:1/none', SLUICE_PROVIDER_URL: open.url, SLUICE_PROVIDER_INTERVAL_S: '0' });
  const code = await exitedWithin(serve, 60_000);
  assert.equal(code, 2, serve.output());
  assert.match(serve.output(), /SLUICE_PROVIDER_INTERVAL_S must be a whole number from 1/);
});

test('sync events reads the SLUICE_PROVIDER_* settings as defaults, and its flags override them', async () => {
  const stalled = await startProviderSimulator({ responses: [RESPONSE_1] });
  stalled.setMode('timeout');
  try {
    // SLUICE_PROVIDER_IDLE_TIMEOUT_S (was ignored: the 15 s default applied) and SLUICE_PROVIDER_RETRIES.
    const env = await cli(['--once', '--url', stalled.url], { SLUICE_PROVIDER_IDLE_TIMEOUT_S: '1', SLUICE_PROVIDER_RETRIES: '0' }, 12_000);
    assert.equal(env.code, 1, env.output);
    const summary = JSON.parse(env.output.split('\n')[0]!);
    assert.match(summary.error, /no response headers within 1000 ms/);
    assert.equal(summary.attempts, 1);
    // The flags win over the settings.
    const flags = await cli(['--once', '--url', stalled.url, '--idle-timeout', '2', '--retries', '1'], { SLUICE_PROVIDER_IDLE_TIMEOUT_S: '1', SLUICE_PROVIDER_RETRIES: '0' }, 20_000);
    assert.equal(flags.code, 1, flags.output);
    const s2 = JSON.parse(flags.output.split('\n')[0]!);
    assert.match(s2.error, /no response headers within 2000 ms/);
    assert.equal(s2.attempts, 2);
    // SLUICE_PROVIDER_URL is the default URL.
    const url = await cli(['--once'], { SLUICE_PROVIDER_URL: open.url });
    assert.equal(url.code, 0, url.output);
  } finally {
    await stalled.close();
  }
  // A bad setting is refused before anything opens, like serve's, even when a flag overrides it.
  const bad = await cli(['--once', '--url', open.url], { DATABASE_URL: 'postgres://sluice:x@127.0.0.1:1/none', SLUICE_PROVIDER_TIMEOUT_S: 'soon', SLUICE_PROVIDER_RETRIES: 'some' });
  assert.equal(bad.code, 2, bad.output);
  assert.match(bad.output, /SLUICE_PROVIDER_TIMEOUT_S must be a whole number from 1 to 2147483, got "soon"; SLUICE_PROVIDER_RETRIES must be a number, got "some"/);
  for (const [flag, value] of [['--timeout', '0'], ['--idle-timeout', '0'], ['--retries', '-1'], ['--retries', '1.5']] as const) {
    const out = await cli(['--once', '--url', open.url, flag, value], { DATABASE_URL: 'postgres://sluice:x@127.0.0.1:1/none' });
    assert.equal(out.code, 2, `${flag} ${value}: ${out.output}`);
    assert.match(out.output, new RegExp(`${flag} must be`));
  }
});

test('a URL that is not http(s) is bad usage at once (exit 2), and a sync given one fails without retrying', async () => {
  for (const url of ['ftp://127.0.0.1:1/feed', `ftp://bob:${PASSWORD}@127.0.0.1:1/feed`, 'file:///etc/passwd', 'not a url']) {
    const out = await cli(['--once', '--url', url], { DATABASE_URL: 'postgres://sluice:x@127.0.0.1:1/none' }, 20_000);
    assert.equal(out.code, 2, `${url}: ${out.output}`);
    assert.match(out.output, /http:\/\/ or https:\/\//);
    assert.doesNotMatch(out.output, new RegExp(PASSWORD));
    const env = await cli(['--once'], { DATABASE_URL: 'postgres://sluice:x@127.0.0.1:1/none', SLUICE_PROVIDER_URL: url }, 20_000);
    assert.equal(env.code, 2, `SLUICE_PROVIDER_URL=${url}: ${env.output}`);
    assert.doesNotMatch(env.output, new RegExp(PASSWORD));
  }
  const r = await syncEvents(db.pool, { url: `ftp://bob:${PASSWORD}@127.0.0.1:1/feed`, trigger: 'test', retries: 2, backoffMs: 5 });
  assert.equal(r.status, 'failed');
  assert.equal(r.attempts, 1);
  assert.match(r.error ?? '', /http:\/\/ or https:\/\//);
  assert.doesNotMatch(r.error ?? '', new RegExp(PASSWORD));
  // serve refuses it too (exit 2), and does not print the password.
  const serve = startSluice(['serve', '--port', '0'], { DATABASE_URL: db.url, SLUICE_PROVIDER_URL: `ftp://bob:${PASSWORD}@127.0.0.1:1/feed` });
  const code = await exitedWithin(serve, 60_000);
  assert.equal(code, 2, serve.output());
  assert.match(serve.output(), /SLUICE_PROVIDER_URL must be an http:\/\/ or https:\/\/ URL/);
  assert.doesNotMatch(serve.output(), new RegExp(PASSWORD));
});

test('the simulator refuses a bad count for a failure mode (it used to fail forever)', async () => {
  const control = open.url.replace('/feed', '/_control');
  for (const count of ['abc', '0', '-2', '1.5', '']) {
    const res = await fetch(`${control}/mode?mode=error&count=${count}`, { method: 'POST' });
    assert.equal(res.status, 400, `count=${count}`);
    assert.match(((await res.json()) as { error: string }).error, /count must be a whole number of at least 1/);
  }
  const state = (await (await fetch(control)).json()) as { mode: string };
  assert.equal(state.mode, 'ok', 'a refused request changes nothing');
  assert.throws(() => open.setMode('error', Number.NaN), /count must be a whole number of at least 1/);
  const ok = await fetch(`${control}/mode?mode=error&count=1`, { method: 'POST' });
  assert.equal(ok.status, 200);
  assert.equal((await fetch(open.url)).status, 500);
  assert.equal((await fetch(open.url)).status, 200);
  // Without credentials the Basic-auth simulator answers 401, with a challenge.
  const anonymous = await fetch(sim.url);
  assert.equal(anonymous.status, 401);
  assert.match(anonymous.headers.get('www-authenticate') ?? '', /^Basic/);
});
