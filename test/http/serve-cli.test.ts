/**
 * `sluice serve` as a process: a port that is taken makes it fail (exit 1, the reason
 * printed) instead of running on with its workers and no server; a port that is not a
 * whole number, or a setting with a bad value, is refused before anything starts (exit 2);
 * a configuration error met once the pool and the queue are open closes them and exits.
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, test } from 'node:test';
import { testDb, type TestDb } from '../helpers/db.ts';
import { killAll, startSluice, until } from '../helpers/processes.ts';
import { NO_DATABASE, exitedWithin } from '../cli/exit.ts';
import { buildServer } from '../../src/http/server.ts';

/**
 * For a process that has opened the database: well under pg's 10 s idle timeout, after
 * which a pool left open would let the process exit by itself, late.
 */
const PROMPTLY_MS = 8_000;

let db: TestDb;
before(async () => {
  db = await testDb();
});
after(async () => {
  await killAll();
  await db.close();
});

test('a taken port: serve stops its workers and exits 1 with the reason', async () => {
  const taken = net.createServer();
  await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve));
  try {
    const port = (taken.address() as net.AddressInfo).port;
    const p = startSluice(['serve', '--port', String(port)], { DATABASE_URL: db.url, SLUICE_WORKERS: '1' });
    assert.equal(await exitedWithin(p, PROMPTLY_MS), 1, p.output());
    assert.match(p.output(), /EADDRINUSE/);
  } finally {
    taken.close();
  }
});

test('a port that is not a whole number 0-65535 is refused (exit 2)', async () => {
  for (const port of ['', '0x10', '1.0', '65536']) {
    const p = startSluice(['serve', '--port', port], { DATABASE_URL: db.url });
    assert.equal(await exitedWithin(p, 30_000), 2, `${JSON.stringify(port)}: ${p.output()}`);
    assert.match(p.output(), /invalid port/);
  }
});

test('a host that is not a loopback address, without a token, is refused before the database is opened (exit 2)', async () => {
  // Names that only look like loopback: a DNS name anyone can point at 0.0.0.0 or anywhere.
  const cases: Array<[string[], Record<string, string>]> = [
    [['--host', '127.attacker.test'], {}],
    [['--host', 'localhost.evil.com'], {}],
    [['--host', '0.0.0.0'], {}],
    [[], { SLUICE_HOST: '127.0.0.1.nip.io' }],
  ];
  for (const [args, env] of cases) {
    const p = startSluice(['serve', '--port', '0', ...args], { DATABASE_URL: NO_DATABASE, SLUICE_API_TOKEN: '', ...env });
    assert.equal(await exitedWithin(p, 30_000), 2, `${JSON.stringify([args, env])}: ${p.output()}`);
    assert.match(p.output(), /refusing to listen on \S+ without SLUICE_API_TOKEN: only a loopback address \(127\.0\.0\.1, ::1 or localhost\) may run open/);
    assert.doesNotMatch(p.output(), /ECONNREFUSED|listening/);
  }
});

test('--host localhost without a token: listens on loopback only, and says where', async () => {
  const p = startSluice(['serve', '--port', '0', '--host', 'localhost'], { DATABASE_URL: db.url, SLUICE_WORKERS: '0', SLUICE_API_TOKEN: '' });
  await p.waitFor(/listening on/);
  const line = /sluice: listening on (.*)\n/.exec(p.output())![1]!;
  // Each address bound (127.0.0.1, and ::1 where the machine has it), not the name asked for.
  assert.match(line, /^http:\/\/(127\.0\.0\.1|\[::1\]):\d+( and http:\/\/(127\.0\.0\.1|\[::1\]):\d+)?$/, line);
  const res = await fetch(`${line.split(' ')[0]}/healthz`);
  assert.equal(res.status, 200);
  await p.kill('SIGTERM');
});

test('a setting with a bad value is refused before the database is opened (exit 2)', async () => {
  const cases: Array<[Record<string, string>, RegExp]> = [
    [{ SLUICE_WORKERS: 'abc' }, /SLUICE_WORKERS must be a whole number of at least 0, got "abc"/],
    // Accepted until session 9: -1 started no workers, 0 bytes refused only once the database was open.
    [{ SLUICE_WORKERS: '-1' }, /SLUICE_WORKERS must be a whole number of at least 0, got "-1"/],
    [{ SLUICE_WORKERS: '1.5' }, /SLUICE_WORKERS must be a whole number of at least 0, got "1.5"/],
    // Number() reads ' ' as 0 (no workers, silently) and '0x10' as 16.
    [{ SLUICE_WORKERS: ' ' }, /SLUICE_WORKERS must be a whole number of at least 0, got " "/],
    [{ SLUICE_DB_POOL: '0x10' }, /SLUICE_DB_POOL must be a whole number of at least 1, got "0x10"/],
    [{ SLUICE_MAX_UPLOAD_BYTES: '0' }, /SLUICE_MAX_UPLOAD_BYTES must be a whole number of at least 1, got "0"/],
    [{ SLUICE_VISITS_MAINTENANCE: 'yes' }, /SLUICE_VISITS_MAINTENANCE must be 0 or 1, got "yes"/],
    [{ SLUICE_VISITS_TIMEOUT_MS: 'x' }, /SLUICE_VISITS_TIMEOUT_MS must be a whole number from 1 to 2147483647, got "x"/],
    [{ SLUICE_MAX_UPLOAD_BYTES: 'lots' }, /SLUICE_MAX_UPLOAD_BYTES must be a whole number of at least 1, got "lots"/],
    // A pool the intake could run out of: a merge waiting for ever for its third connection.
    [{ SLUICE_WORKERS: '4', SLUICE_DB_POOL: '11' }, /SLUICE_DB_POOL must be at least 12 with SLUICE_WORKERS=4 \(a connection per part worker and up to three for a merge, four for other requests, one for an upload\), got 11/],
    [{ SLUICE_WORKERS: '0', SLUICE_DB_POOL: '4' }, /SLUICE_DB_POOL must be at least 5 with SLUICE_WORKERS=0 /],
    [{ SLUICE_PROVIDER_RETRIES: 'some' }, /SLUICE_PROVIDER_RETRIES must be a number/],
    [{ SLUICE_LOG_LEVEL: 'loud' }, /SLUICE_LOG_LEVEL must be fatal, error, warn, info, debug, trace or silent, got "loud"/],
    [{ SLUICE_SEARCH_CACHE: 'bogus' }, /SLUICE_SEARCH_CACHE must be strict, notify or off, got "bogus"/],
    // Read as off without a word until session 10 (only 1 allows private addresses).
    [{ SLUICE_FETCH_ALLOW_PRIVATE: 'yes' }, /SLUICE_FETCH_ALLOW_PRIVATE must be 0 or 1, got "yes"/],
    // A name that does not resolve failed at listen (exit 1), after the pool, queue and workers started.
    [{ SLUICE_API_TOKEN: 'x', SLUICE_HOST: 'bogus.invalid' }, /cannot listen on bogus\.invalid: the name does not resolve \(E[A-Z_]+\)/],
    // Every bad value at once, not one per attempt.
    [{ SLUICE_WORKERS: 'abc', SLUICE_DB_POOL: 'big' }, /SLUICE_DB_POOL must be a whole number of at least 1.*; SLUICE_WORKERS must be a whole number of at least 0/],
  ];
  for (const [env, message] of cases) {
    // Opening the pool before the check would fail on this URL with ECONNREFUSED (exit 1).
    const p = startSluice(['serve', '--port', '0'], { DATABASE_URL: NO_DATABASE, ...env });
    assert.equal(await exitedWithin(p, 30_000), 2, `${JSON.stringify(env)}: ${p.output()}`);
    assert.match(p.output(), message);
    assert.doesNotMatch(p.output(), /ECONNREFUSED|listening/);
  }
});

test('the reported case: SLUICE_WORKERS=abc with the database up exits 2 at once', async () => {
  const p = startSluice(['serve', '--port', '0'], { DATABASE_URL: db.url, SLUICE_WORKERS: 'abc' });
  assert.equal(await exitedWithin(p, PROMPTLY_MS), 2, p.output());
  assert.match(p.output(), /SLUICE_WORKERS must be a whole number of at least 0, got "abc"/);
});

test('a configuration error met after the pool and the queue are open: serve closes them and exits 2', async () => {
  // The CRM config file is read by the last background service, after the intake started
  // the queue and its workers: serve used to hang here, its pool and queue still open.
  const p = startSluice(['serve', '--port', '0'], { DATABASE_URL: db.url, SLUICE_WORKERS: '1', SLUICE_CRM_CONFIG: '/nonexistent/crm.json' });
  assert.equal(await exitedWithin(p, PROMPTLY_MS), 2, p.output());
  assert.match(p.output(), /cannot read config \/nonexistent\/crm\.json/);
  assert.doesNotMatch(p.output(), /listening/);
});

test('SIGTERM and SIGINT: serve and worker stop what they opened and exit 0', async () => {
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    const serve = startSluice(['serve', '--port', '0'], { DATABASE_URL: db.url, SLUICE_WORKERS: '1' });
    const worker = startSluice(['worker', '--concurrency', '1'], { DATABASE_URL: db.url });
    await serve.waitFor(/listening on/);
    await worker.waitFor(/ready/);
    assert.ok((await theirConnections()) > 0, 'the queue, its listener and the worker pool are open');
    serve.child.kill(signal);
    worker.child.kill(signal);
    assert.equal(await exitedWithin(serve, PROMPTLY_MS), 0, `serve, ${signal}: ${serve.output()}`);
    assert.equal(await exitedWithin(worker, PROMPTLY_MS), 0, `worker, ${signal}: ${worker.output()}`);
    // What they opened is closed (their backends leave pg_stat_activity a moment after).
    await until(async () => (await theirConnections()) === 0, `${signal}: the processes' connections to close`, 5_000);
  }
});

/** Backends of this database opened by serve's and a worker's queue, listener and worker pool (named; serve's own pool is named like the test's). */
async function theirConnections(): Promise<number> {
  const { rows } = await db.pool.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND application_name IN ('sluice-jobs', 'sluice-listen', 'sluice-worker')`,
  );
  return rows[0]!.n;
}

test('SLUICE_LOG_LEVEL=trace: the API token of a multipart upload is not in the log', async () => {
  // @fastify/multipart logs its busboy options at trace level, the request's headers with them.
  const token = 'tok-never-logged-5d1e';
  const p = startSluice(['serve', '--port', '0'], { DATABASE_URL: db.url, SLUICE_WORKERS: '0', SLUICE_API_TOKEN: token, SLUICE_LOG_LEVEL: 'trace' });
  await p.waitFor(/listening on/);
  const base = /listening on (http:\/\/\S+)/.exec(p.output())![1]!;
  const form = new FormData();
  form.append('pipeline', 'leads');
  form.append('file', new Blob(['Email,Name\na@example.com,A\n']), 'leads.csv');
  const res = await fetch(`${base}/imports`, { method: 'POST', body: form, headers: { authorization: `Bearer ${token}` } });
  assert.equal(res.status, 202, await res.text());
  await p.waitFor(/busboyOptions/);
  await p.kill();
  assert.doesNotMatch(p.output(), new RegExp(token));
  assert.match(p.output(), /"authorization":"\[Redacted\]"/);
});

test('SLUICE_LOG_LEVEL set but empty is the default level (warn), as every other empty setting is unset', async () => {
  process.env.SLUICE_LOG_LEVEL = '';
  try {
    const app = await buildServer({ pool: db.pool }, { logger: true });
    // It was `info`: pino took the empty string for its default, a log line per request.
    assert.equal(app.log.level, 'warn');
    await app.close();
  } finally {
    delete process.env.SLUICE_LOG_LEVEL;
  }
});
