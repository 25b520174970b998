/**
 * Every connection opens within the connect timeout and carries keepalives on both ends
 * (src/db/connection.ts). What a lost machine does cannot be made here (a userspace proxy
 * keeps its own TCP sessions alive); what is checked is that the settings are in effect:
 * by SHOW on the connections, and by the kernel's keepalive timers of both ends of each
 * socket (/proc/net/tcp), for the pool, a merge's and a sync's lock connections, and a real
 * `sluice worker`'s connections (its pool, pg-boss's, its LISTEN).
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import { inspect } from 'node:util';
import { after, before, test, type TestContext } from 'node:test';
import pg from 'pg';
import { CONNECTION_DEFAULTS, newClient } from '../../src/db/connection.ts';
import { openDb, type Client } from '../../src/db/pool.ts';
import { ConnectTimeoutError, errorCode, isDatabaseUnavailable } from '../../src/db/unavailable.ts';
import { MergeSession } from '../../src/load/merge.ts';
import { getPipeline } from '../../src/pipelines/index.ts';
import { SyncOwner } from '../../src/pipelines/events/sync-owner.ts';
import { testDb, type TestDb } from '../helpers/db.ts';
import { killAll, startSluice, until } from '../helpers/processes.ts';
import { startTcpProxy } from '../helpers/tcp-proxy.ts';
import { exitedWithin } from '../cli/exit.ts';

let db: TestDb;
before(async () => {
  db = await testDb();
});
after(async () => {
  await killAll();
  await db.close();
});

/** The server-side keepalive settings of the session `q` runs on. */
async function keepalives(q: Pick<pg.ClientBase, 'query'>) {
  const { rows } = await q.query<Record<string, string>>(
    `SELECT current_setting('tcp_keepalives_idle') AS idle, current_setting('tcp_keepalives_interval') AS interval,
            current_setting('tcp_keepalives_count') AS count, current_setting('client_connection_check_interval') AS "check"`,
  );
  return rows[0]!;
}

const DEFAULTS = { idle: '30', interval: '10', count: '3', check: '10s' };

/**
 * The kernel's keepalive timer of the local TCP socket from port `local` to port `remote`,
 * in seconds (/proc/net/tcp: timer 02 is keepalive, its expiry in 1/100 s); undefined
 * when the socket is not found or another timer (or none) is armed.
 */
function keepaliveTimer(local: number, remote: number): number | undefined {
  const port = (p: number) => `:${p.toString(16).toUpperCase().padStart(4, '0')}`;
  for (const file of ['/proc/net/tcp', '/proc/net/tcp6']) {
    if (!fs.existsSync(file)) continue;
    for (const line of fs.readFileSync(file, 'utf8').split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      if (!f[1]?.endsWith(port(local)) || !f[2]?.endsWith(port(remote))) continue;
      const [timer, when] = f[5]!.split(':');
      return timer === '02' ? parseInt(when!, 16) / 100 : undefined;
    }
  }
  return undefined;
}

/** /proc/net/tcp shows both ends' sockets only when the database runs here (the embedded one does). */
const local = () => fs.existsSync('/proc/net/tcp') && ['127.0.0.1', 'localhost', '[::1]'].includes(new URL(db.url).hostname);

/**
 * Both ends of the connection from client port `clientPort` have a keepalive timer armed
 * within `idle` seconds (the OS's default would be 7,200). Skipped (said so) when the
 * database is not on this machine.
 */
async function bothEndsKeepAlive(t: TestContext, serverPort: number, clientPort: number, idle: number): Promise<void> {
  if (!local()) return t.diagnostic('the database is not on this machine: keepalive timers not checked');
  const timers = () => ({ server: keepaliveTimer(serverPort, clientPort), client: keepaliveTimer(clientPort, serverPort) });
  try {
    await until(async () => {
      const { server, client } = timers();
      return server !== undefined && server <= idle && client !== undefined && client <= idle;
    }, 'keepalive timers', 10_000);
  } catch {
    assert.fail(`keepalive timers of at most ${idle} s on both ends of the connection from port ${clientPort}, got ${JSON.stringify(timers())} (s)`);
  }
}

const serverPort = () => Number(new URL(db.url).port);

async function clientPort(client: Client | pg.Client): Promise<number> {
  const { rows } = await client.query<{ port: number }>('SELECT inet_client_port() AS port');
  return rows[0]!.port;
}

test('a connect that gets no answer fails after the connect timeout, as the database unavailable, without the password; its slot is freed', async () => {
  const proxy = await startTcpProxy(db.url);
  // Accepts the connection and passes nothing: packets dropped by a partition.
  proxy.stall();
  const pool = await openDb({ url: proxy.url, max: 1, migrate: false, connection: { connectTimeoutMs: 300 } });
  const password = decodeURIComponent(new URL(db.url).password);
  try {
    const t0 = performance.now();
    // A pool of one: the second query waits for the slot the first's connect holds, which
    // the timeout frees; it then gets its own connect and timeout.
    const results = await Promise.allSettled([pool.query('SELECT 1'), pool.query('SELECT 1')]);
    const elapsed = performance.now() - t0;
    for (const r of results) {
      assert.equal(r.status, 'rejected');
      const err = (r as PromiseRejectedResult).reason as Error;
      assert.ok(err instanceof ConnectTimeoutError, inspect(err));
      assert.match(err.message, new RegExp(`^could not connect to database "${db.name}" at 127\\.0\\.0\\.1:${new URL(proxy.url).port}: no answer within 300 ms \\(SLUICE_DB_CONNECT_TIMEOUT_MS\\)$`));
      assert.equal(errorCode(err), '08001');
      assert.ok(isDatabaseUnavailable(err), 'retried and answered 503 like a refused connection');
      assert.ok(password.length > 0 && !inspect(err).includes(password), 'no password in the error, its cause or its stack');
    }
    assert.ok(elapsed >= 590 && elapsed < 10_000, `two timeouts in turn: ${elapsed} ms`);
    assert.equal(pool.totalCount, 0, 'no connection left behind');

    // A connection of its own (LISTEN) times out the same way.
    const listen = newClient({ connectionString: proxy.url }, { ...CONNECTION_DEFAULTS, connectTimeoutMs: 300 });
    await assert.rejects(listen.connect(), ConnectTimeoutError);

    // The network back: the same pool connects, with its keepalives.
    proxy.flow();
    assert.deepEqual(await keepalives(pool), DEFAULTS);
  } finally {
    await pool.end();
    await proxy.close();
  }
});

test('every pool connection runs with the server keepalives: the defaults, the given ones, or none at idle 0', async (t) => {
  const clients = await Promise.all([db.pool.connect(), db.pool.connect(), db.pool.connect()]);
  try {
    for (const c of clients) assert.deepEqual(await keepalives(c), DEFAULTS);
    await bothEndsKeepAlive(t, serverPort(), await clientPort(clients[0]!), 30);
  } finally {
    for (const c of clients) c.release();
  }

  const custom = await openDb({ url: db.url, max: 1, migrate: false, connection: { keepaliveIdleS: 45, keepaliveIntervalS: 5, keepaliveCount: 4 } });
  try {
    assert.deepEqual(await keepalives(custom), { idle: '45', interval: '5', count: '4', check: '5s' });
  } finally {
    await custom.end();
  }

  // Idle 0: Sluice sets nothing, the session has what a plain pg connection has (the OS's).
  const plain = new pg.Client({ connectionString: db.url });
  await plain.connect();
  const off = await openDb({ url: db.url, max: 1, migrate: false, connection: { keepaliveIdleS: 0 } });
  try {
    const theirs = await keepalives(plain);
    assert.notEqual(theirs.idle, '30');
    assert.deepEqual(await keepalives(off), theirs);
  } finally {
    await off.end();
    await plain.end();
  }
});

test("the lock-holding connections run with them: a merge's (in its transaction, holding the target's lock) and a sync owner's", async (t) => {
  // The merge's connection as src/intake/merge-job.ts takes it: a checkout of the pool.
  const client = await db.pool.connect();
  const session = new MergeSession(client, getPipeline('leads'));
  try {
    assert.equal(await session.begin(), true);
    const { rows } = await client.query<{ n: number }>(`SELECT count(*)::int AS n FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted`);
    assert.equal(rows[0]!.n, 1, 'the target lock is held');
    assert.deepEqual(await keepalives(client), DEFAULTS);
    await bothEndsKeepAlive(t, serverPort(), await clientPort(client), 30);
    await session.rollback();
  } finally {
    client.release();
  }

  const owner = await SyncOwner.start(db.pool, 'http://provider.invalid/feed.xml', 'test');
  try {
    const c = await owner.connection();
    assert.deepEqual(await keepalives(c), DEFAULTS);
    await bothEndsKeepAlive(t, serverPort(), await clientPort(c), 30);
  } finally {
    await owner.release();
  }
});

test("a `sluice worker`'s connections (its pool, the queue's, its LISTEN) have keepalives on both ends as SLUICE_DB_KEEPALIVE_IDLE_S says", async (t) => {
  if (!local()) return t.skip('the database is not on this machine: its sockets cannot be seen');
  const p = startSluice(['worker', '--concurrency', '1'], { DATABASE_URL: db.url, SLUICE_DB_KEEPALIVE_IDLE_S: '20', SLUICE_WORKER_WARMUP: '0' });
  await p.waitFor(/sluice worker: ready/);
  const names = ['sluice-worker', 'sluice-jobs', 'sluice-listen'];
  const { rows } = await until(async () => {
    const r = await db.pool.query<{ name: string; port: number }>(
      `SELECT application_name AS name, client_port AS port FROM pg_stat_activity WHERE datname = $1 AND application_name = ANY($2)`,
      [db.name, names],
    );
    return names.every((n) => r.rows.some((x) => x.name === n)) && r;
  }, "the worker's connections of each kind");
  for (const { port } of rows) await bothEndsKeepAlive(t, serverPort(), port, 20);
  await p.kill();
});

test('bad connection settings are refused before the database is opened (exit 2)', async () => {
  const p = startSluice(['worker'], { DATABASE_URL: db.url, SLUICE_DB_CONNECT_TIMEOUT_MS: '50', SLUICE_DB_KEEPALIVE_COUNT: '128' });
  assert.equal(await exitedWithin(p, 30_000), 2, p.output());
  assert.match(p.output(), /SLUICE_DB_CONNECT_TIMEOUT_MS must be a whole number from 100 to 2147483647, got "50"; SLUICE_DB_KEEPALIVE_COUNT must be a whole number from 1 to 127, got "128"/);
});

test('a command whose database does not answer stops after SLUICE_DB_CONNECT_TIMEOUT_MS, saying so (exit 1)', async () => {
  const proxy = await startTcpProxy(db.url);
  proxy.stall();
  try {
    const p = startSluice(['rejects', '1'], { DATABASE_URL: proxy.url, SLUICE_DB_CONNECT_TIMEOUT_MS: '500' });
    assert.equal(await exitedWithin(p, 30_000), 1, p.output());
    assert.match(p.output(), /^sluice: could not connect to database "sluice_test_\w+" at 127\.0\.0\.1:\d+: no answer within 500 ms \(SLUICE_DB_CONNECT_TIMEOUT_MS\)$/m);
  } finally {
    await proxy.close();
  }
});

test('a peer lost right after start-up (during the keepalive SET) fails the connect, not the process', async () => {
  // Passes start-up and authentication, then drops everything the client sends from its
  // first query on: the SET hangs until the connect timeout destroys the socket.
  const server = net.createServer((c) => {
    const target = new URL(db.url);
    const up = net.connect(Number(target.port), target.hostname);
    let startup = true;
    let dropping = false;
    c.on('data', (d: Buffer) => {
      if (!startup && d[0] === 0x51) dropping = true; // 'Q': a simple query
      startup = false;
      if (!dropping) up.write(d);
    });
    up.on('data', (d: Buffer) => c.write(d));
    c.on('error', () => {});
    up.on('error', () => {});
    c.on('close', () => up.destroy());
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const url = new URL(db.url);
  url.hostname = '127.0.0.1';
  url.port = String((server.address() as net.AddressInfo).port);
  const pool = await openDb({ url: url.toString(), max: 1, migrate: false, connection: { connectTimeoutMs: 400 } });
  try {
    await assert.rejects(pool.query('SELECT 1'), ConnectTimeoutError);
    const own = newClient({ connectionString: url.toString() }, { ...CONNECTION_DEFAULTS, connectTimeoutMs: 400 });
    await assert.rejects(own.connect(), ConnectTimeoutError);
    assert.equal(pool.totalCount, 0, 'no connection left behind');
  } finally {
    await pool.end();
    await new Promise((r) => server.close(r));
  }
});
