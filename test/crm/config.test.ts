/** Config validation (every mistake reported with its path) and schedules. */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { pathToFileURL } from 'node:url';
import { repoRoot } from '../../src/config.ts';
import { configHash, loadCrmConfig, parseRateLimit, shownLocation, sourceIdentity, validateCrmConfig } from '../../src/pipelines/crm/config.ts';
import { nextRun, parseSchedule } from '../../src/pipelines/crm/schedule.ts';
import { runCli, tmpDir } from './helpers.ts';

const sources = { customers: 'c.csv', orders: 'https://example.invalid/o.csv', payments: 'file:///tmp/p.csv' };

function problems(doc: unknown): string {
  try {
    validateCrmConfig(doc, 'x.yaml');
  } catch (err) {
    return (err as Error).message;
  }
  assert.fail('expected the config to be refused');
}

test('a minimal config gets the documented defaults', () => {
  delete process.env.PIPEDRIVE_BASE_URL;
  const c = validateCrmConfig({ sources }, '/etc/sluice/crm.yaml');
  assert.equal(c.name, 'crm');
  assert.equal(c.sources.customers, '/etc/sluice/c.csv', 'paths are relative to the config file');
  assert.equal(c.sources.orders, 'https://example.invalid/o.csv');
  assert.equal(c.sources.payments, '/tmp/p.csv');
  assert.deepEqual(c.value, { multiplier: 1, currency: 'USD', decimals: 2 });
  assert.equal(c.statusMap.completed, 'won');
  assert.equal(c.schedule, undefined);
  assert.equal(c.destination.type, 'pipedrive');
  if (c.destination.type !== 'pipedrive') return;
  assert.equal(c.destination.baseUrl, 'https://api.pipedrive.com/v1');
  assert.deepEqual(c.destination.rateLimit, { limit: 80, windowMs: 2000 });
  assert.equal(c.destination.personKeyField, 'CustomerID');
  assert.equal(c.destination.dealKeyField, 'OrderID');
});

test('file:// URLs are decoded to paths (spaces, UTF-8); a remote host is refused', () => {
  const dir = path.join(tmpDir(), 'my dir');
  fs.mkdirSync(dir);
  fs.writeFileSync(path.join(dir, 'café.csv'), 'id,first_name,last_name\n');
  const url = pathToFileURL(path.join(dir, 'café.csv')).href;
  assert.match(url, /my%20dir\/caf%C3%A9\.csv$/);
  const c = validateCrmConfig({ sources: { ...sources, customers: url } });
  assert.equal(c.sources.customers, path.join(dir, 'café.csv'));
  assert.ok(fs.existsSync(c.sources.customers));
  assert.match(problems({ sources: { ...sources, customers: 'file://files.example/c.csv' } }), /sources.customers: expected an http\(s\) URL or a file path/);
});

test('the base URL comes from the config, else PIPEDRIVE_BASE_URL', () => {
  process.env.PIPEDRIVE_BASE_URL = 'http://127.0.0.1:9/v1/';
  try {
    const fromEnv = validateCrmConfig({ sources }).destination;
    assert.equal(fromEnv.type === 'pipedrive' && fromEnv.baseUrl, 'http://127.0.0.1:9/v1');
    const fromFile = validateCrmConfig({ sources, destination: { base_url: 'http://127.0.0.1:8/v1' } }).destination;
    assert.equal(fromFile.type === 'pipedrive' && fromFile.baseUrl, 'http://127.0.0.1:8/v1');
  } finally {
    delete process.env.PIPEDRIVE_BASE_URL;
  }
});

test('every mistake is reported at once, with its path', () => {
  const msg = problems({
    name: 'bad name!',
    sources: { customers: 'ftp://x/c.csv', orders: '' },
    schedule: { cron: '61 * * * *' },
    value: { multiplier: 'two', currency: 'dollars', rule: 'average' },
    status_map: { placed: 'pending' },
    destination: { type: 'pipedrive', api_token: 'secret', rate_limit: 'fast', concurrency: 0, colour: 'red' },
    extra: 1,
  });
  for (const expected of [
    'x.yaml is invalid',
    'name: expected letters',
    'sources.customers: expected an http(s) URL or a file path',
    'sources.orders: required',
    'sources.payments: required',
    'schedule.cron: cron minute field "61" is out of range 0-59',
    'value.multiplier: expected a number',
    'value.currency: expected an ISO 4217 code',
    'value.rule: only "total_paid"',
    'status_map.placed: expected open, won or lost',
    'destination.api_token: secrets do not belong in the config file; set PIPEDRIVE_API_TOKEN',
    'destination.rate_limit: expected "<requests>/<seconds>s"',
    'destination.concurrency: expected an integer >= 1',
    'destination.colour: unknown key',
    'extra: unknown key',
  ]) {
    assert.ok(msg.includes(expected), `missing ${JSON.stringify(expected)} in:\n${msg}`);
  }
});

test('schedule needs exactly one of cron or interval; sources must be a mapping', () => {
  assert.match(problems({ sources, schedule: { cron: '* * * * *', interval: '1h' } }), /exactly one of `cron`/);
  assert.match(problems({ sources, schedule: { interval: 'soon' } }), /schedule.interval: expected a duration/);
  assert.match(problems({ sources: 'http://x' }), /sources: required: a mapping/);
  assert.match(problems({ sources, destination: { type: 'salesforce' } }), /destination.type: expected "pipedrive" or "postgres"/);
});

test('files: unreadable and non-YAML files have clear errors', () => {
  const dir = tmpDir();
  assert.throws(() => loadCrmConfig(path.join(dir, 'nope.yaml')), /cannot read config .*nope.yaml: ENOENT/);
  fs.writeFileSync(path.join(dir, 'bad.yaml'), 'sources: [unclosed');
  assert.throws(() => loadCrmConfig(path.join(dir, 'bad.yaml')), /is not valid YAML/);
  const example = loadCrmConfig(path.join(repoRoot, 'examples/crm-sync.yaml'));
  assert.equal(example.name, 'jaffle');
  assert.equal(example.schedule?.kind, 'cron');
});

test('the CLI refuses a bad config with exit code 2 and the list of problems', async () => {
  const dir = tmpDir();
  const file = path.join(dir, 'crm.yaml');
  fs.writeFileSync(file, 'sources:\n  customers: c.csv\nvalue:\n  multiplier: -1\n');
  const r = await runCli(['sync', 'crm', '--once', '--config', file], { DATABASE_URL: 'postgres://unused@127.0.0.1:1/x' });
  assert.equal(r.code, 2);
  assert.match(r.stderr, /sources.orders: required/);
  assert.match(r.stderr, /value.multiplier: expected a number >= 0, got -1/);
  assert.equal(r.stdout, '');
});

test('rate limits and schedules parse', () => {
  assert.deepEqual(parseRateLimit('80/2s'), { limit: 80, windowMs: 2000 });
  assert.deepEqual(parseRateLimit('25/0.5s'), { limit: 25, windowMs: 500 });
  assert.deepEqual(parseRateLimit('100/1m'), { limit: 100, windowMs: 60_000 });
  assert.equal(parseRateLimit('x/2s'), undefined);
  const from = new Date('2026-03-10T10:17:30Z');
  assert.equal(nextRun(parseSchedule('interval', '1h30m'), from).toISOString(), '2026-03-10T11:47:30.000Z');
  assert.equal(nextRun(parseSchedule('cron', '0 3 * * *'), from).toISOString(), '2026-03-11T03:00:00.000Z');
  assert.equal(nextRun(parseSchedule('cron', '*/15 * * * *'), from).toISOString(), '2026-03-10T10:30:00.000Z');
  assert.equal(nextRun(parseSchedule('cron', '30 9 * * 1-5'), new Date('2026-03-13T10:00:00Z')).toISOString(), '2026-03-16T09:30:00.000Z');
  assert.equal(nextRun(parseSchedule('cron', '0 0 1 1 *'), from).toISOString(), '2027-01-01T00:00:00.000Z');
  assert.throws(() => parseSchedule('cron', '* * *'), /expected 5 cron fields/);
  assert.throws(() => parseSchedule('cron', '0 0 31 2 *'), /never matches/);
});

test("the example's postgres destination works as its comment says; leftover pipedrive keys say they are pipedrive's", () => {
  const file = path.join(repoRoot, 'examples/crm-sync.yaml');
  const text = fs.readFileSync(file, 'utf8');
  // The commented postgres destination, uncommented in place of the pipedrive one.
  const block = /^# destination:\n(?:#   .*\n)+/m.exec(text)?.[0];
  assert.ok(block, 'the example shows the postgres destination in a comment');
  const postgres = block.replace(/^# /gm, '');
  const withPostgres = text.replace(/^destination:\n(?:(?: {2}.*|\s*)\n)*/m, postgres);
  assert.notEqual(withPostgres, text);
  const dir = tmpDir();
  fs.writeFileSync(path.join(dir, 'crm.yaml'), withPostgres);
  assert.deepEqual(loadCrmConfig(path.join(dir, 'crm.yaml')).destination, { type: 'postgres' });
  // Only the word changed: each pipedrive key is refused as such (not as a typo).
  fs.writeFileSync(path.join(dir, 'word.yaml'), text.replace(/^( {2}type:) pipedrive\b/m, '$1 postgres'));
  assert.throws(() => loadCrmConfig(path.join(dir, 'word.yaml')), (err: Error) => {
    for (const k of ['person_key_field', 'deal_key_field', 'concurrency', 'rate_limit', 'daily_request_budget', 'retry', 'timeout_ms']) {
      assert.ok(err.message.includes(`destination.${k}: only for the pipedrive destination`), `${k} in:\n${err.message}`);
    }
    assert.doesNotMatch(err.message, /unknown key/);
    return true;
  });
  assert.match(problems({ sources, destination: { type: 'postgres', base_url: 'http://x/v1', colour: 'red' } }), /destination.base_url: only for the pipedrive destination[\s\S]*destination.colour: unknown key \(allowed: type\)/);
});

test("a source's identity and the fingerprint: the query counts (another ?date= is another source), the password does not", () => {
  const at = (customers: string) =>
    validateCrmConfig({ sources: { customers, orders: 'https://h.example/o.csv', payments: '/data/p.csv' }, destination: { type: 'postgres' } });
  const url = (userinfo: string, query: string) => `https://${userinfo}exports.example/raw_customers.csv${query}`;
  const base = url('admin:s3cret@', '?date=2024-01-01&access_token=TOKEN1');
  const fingerprint = (u: string) => configHash(at(u));
  // Another query value: shown alike, yet another source and another fingerprint.
  for (const other of [url('admin:s3cret@', '?date=2024-02-01&access_token=TOKEN1'), url('admin:s3cret@', '?date=2024-01-01&access_token=TOKEN2'), url('admin:s3cret@', '?account=a'), url('admin:s3cret@', '')]) {
    assert.notEqual(sourceIdentity(other), sourceIdentity(base), other);
    assert.notEqual(fingerprint(other), fingerprint(base), other);
  }
  assert.equal(shownLocation(url('admin:s3cret@', '?date=2024-02-01&access_token=TOKEN1')), shownLocation(base));
  assert.notEqual(sourceIdentity(url('', '?account=b')), sourceIdentity(url('', '?account=a')));
  // Another password, or another token given as the user alone: the same source and fingerprint.
  for (const same of [url('admin:rotated@', '?date=2024-01-01&access_token=TOKEN1'), url('admin:%40x@', '?date=2024-01-01&access_token=TOKEN1')]) {
    assert.equal(sourceIdentity(same), sourceIdentity(base), same);
    assert.equal(fingerprint(same), fingerprint(base), same);
  }
  assert.equal(sourceIdentity(url('TOKEN9@', '')), sourceIdentity(url('TOKEN8@', '')));
  assert.equal(fingerprint(url('TOKEN9@', '')), fingerprint(url('TOKEN8@', '')));
  // The user of user:password says which account (shown, too): another one is another source.
  assert.notEqual(sourceIdentity(url('other:s3cret@', '?date=2024-01-01&access_token=TOKEN1')), sourceIdentity(base));
  // A digest: neither the password nor a query value in it; a local path is hashed as given.
  assert.match(sourceIdentity(base), /^[0-9a-f]{64}$/);
  assert.notEqual(sourceIdentity('/data/a.csv'), sourceIdentity('/data/b.csv'));
});
