/**
 * Retention of finished imports (src/intake/retention.ts): what a sweep deletes and what it
 * never does, one sweeper at a time across connections, the service's switch and its stop,
 * and the settings refused up front.
 */
import assert from 'node:assert/strict';
import { after, afterEach, before, test } from 'node:test';
import { checkSettings } from '../../src/config.ts';
import type { Client } from '../../src/db/pool.ts';
import { tryRetentionLock } from '../../src/db/sql/imports.ts';
import type { AppContext } from '../../src/http/context.ts';
import { importsRetentionService, sweepImports } from '../../src/intake/retention.ts';
import { testDb, type TestDb } from '../helpers/db.ts';
import { waitFor } from './http-helpers.ts';

let db: TestDb;
before(async () => {
  db = await testDb();
});
after(async () => db?.close());

const SETTINGS = ['SLUICE_IMPORTS_RETENTION_DAYS', 'SLUICE_IMPORTS_RETENTION_MS'] as const;
afterEach(async () => {
  for (const name of SETTINGS) delete process.env[name];
  // Each test builds its own imports.
  await db.pool.query('DELETE FROM imports');
});

type Status = 'queued' | 'running' | 'completed' | 'failed' | 'cancelled';

/**
 * An import row as the engine leaves it, ended `daysAgo` days ago (by Postgres's clock), with
 * `rejects` reject rows and `parts` part rows. A queued or running one gets an old finished_at
 * too when `daysAgo` is given: its status alone must keep it.
 */
async function addImport(status: Status, daysAgo: number | null, rejects = 0, parts = 0): Promise<string> {
  const { rows } = await db.pool.query<{ id: string }>(
    `INSERT INTO imports (pipeline, source, status, created_at, finished_at)
     VALUES ('leads', 'http', $1, now() - make_interval(days => coalesce($2::int, 0) + 1), now() - make_interval(days => $2::int))
     RETURNING id`,
    [status, daysAgo],
  );
  const id = rows[0]!.id;
  await db.pool.query(
    `INSERT INTO import_rejects (import_id, line, reason, raw) SELECT $1, g, 'bad email', 'x,' || g FROM generate_series(1, $2::int) g`,
    [id, rejects],
  );
  await db.pool.query(
    `INSERT INTO import_parts (import_id, n, first_line, last_line, bytes, status) SELECT $1, g, g, g, 10, 'completed' FROM generate_series(0, $2::int - 1) g`,
    [id, parts],
  );
  return id;
}

/** Every import left, each with its counts of rejects and parts, by id. */
async function left(): Promise<Record<string, { rejects: number; parts: number }>> {
  const { rows } = await db.pool.query<{ id: string; rejects: number; parts: number }>(
    `SELECT i.id, (SELECT count(*) FROM import_rejects r WHERE r.import_id = i.id)::int AS rejects,
            (SELECT count(*) FROM import_parts p WHERE p.import_id = i.id)::int AS parts
       FROM imports i`,
  );
  return Object.fromEntries(rows.map((r) => [r.id, { rejects: r.rejects, parts: r.parts }]));
}

async function count(table: 'imports' | 'import_rejects' | 'import_parts'): Promise<number> {
  return (await db.pool.query<{ n: number }>(`SELECT count(*)::int AS n FROM ${table}`)).rows[0]!.n;
}

/** A connection of the pool inside a transaction, for holding locks; `end` commits and releases it (once). */
async function holder(): Promise<{ client: Client; pid: number; end(): Promise<void> }> {
  const client = await db.pool.connect();
  await client.query('BEGIN');
  const pid = (await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid;
  let ended = false;
  return {
    client,
    pid,
    async end() {
      if (ended) return;
      ended = true;
      await client.query('COMMIT');
      client.release();
    },
  };
}

/** Resolves once a backend waits for a lock `pid` holds. */
function blockedBy(pid: number): Promise<true> {
  return waitFor(`a backend waiting for a lock held by ${pid}`, async () => {
    const { rowCount } = await db.pool.query('SELECT 1 FROM pg_stat_activity WHERE $1 = ANY (pg_blocking_pids(pid))', [pid]);
    return rowCount ? true : undefined;
  }, 10_000, 20);
}

test('a sweep deletes the imports ended more than N days ago with their rejects and parts, never a queued or running one', async () => {
  const completed = await addImport('completed', 40, 5, 2);
  const failed = await addImport('failed', 31, 3, 1);
  const cancelled = await addImport('cancelled', 400, 0, 3);
  const running = await addImport('running', 400, 2, 2);
  const queued = await addImport('queued', 400, 0, 1);
  const runningNeverEnded = await addImport('running', null, 1, 1);
  const recent = await addImport('completed', 29, 4, 1);
  const recentFailed = await addImport('failed', 0, 1, 0);

  // Batches of 2 imports or 3 rejects: the 8 rejects and 3 imports take several transactions.
  const r = await sweepImports(db.pool, 30, { importsPerBatch: 2, rejectsPerBatch: 3 });
  assert.deepEqual({ skipped: r.skipped, imports: r.imports, rejects: r.rejects, error: r.error }, { skipped: false, imports: 3, rejects: 8, error: undefined });
  assert.deepEqual(await left(), {
    [running]: { rejects: 2, parts: 2 },
    [queued]: { rejects: 0, parts: 1 },
    [runningNeverEnded]: { rejects: 1, parts: 1 },
    [recent]: { rejects: 4, parts: 1 },
    [recentFailed]: { rejects: 1, parts: 0 },
  });
  for (const id of [completed, failed, cancelled]) {
    assert.equal((await db.pool.query('SELECT 1 FROM import_rejects WHERE import_id = $1 UNION ALL SELECT 1 FROM import_parts WHERE import_id = $1', [id])).rowCount, 0);
  }
  // The cutoff is Postgres's now() less 30 days, read at the sweep's start.
  const { rows } = await db.pool.query<{ ok: boolean }>(
    `SELECT $1::timestamptz BETWEEN now() - interval '30 days' - interval '1 minute' AND now() - interval '30 days' AS ok`,
    [r.cutoff],
  );
  assert.ok(rows[0]!.ok, r.cutoff);

  const again = await sweepImports(db.pool, 30);
  assert.deepEqual({ skipped: again.skipped, imports: again.imports, rejects: again.rejects }, { skipped: false, imports: 0, rejects: 0 });
  assert.equal(await count('imports'), 5);
});

test('an import with more rejects than a batch takes is deleted over several transactions, its rejects counted once', async () => {
  const big = await addImport('completed', 10, 1000, 4);
  const kept = await addImport('completed', 1, 10, 1);
  const r = await sweepImports(db.pool, 2, { rejectsPerBatch: 300 });
  assert.deepEqual({ imports: r.imports, rejects: r.rejects, error: r.error }, { imports: 1, rejects: 1000, error: undefined });
  assert.deepEqual(Object.keys(await left()), [kept]);
  assert.equal((await db.pool.query('SELECT 1 FROM import_parts WHERE import_id = $1', [big])).rowCount, 0);
});

test('while another connection holds the retention lock a sweep skips its round; once it is let go, the next sweep deletes', async () => {
  await addImport('completed', 50, 3, 1);
  const other = await holder();
  try {
    assert.equal(await tryRetentionLock(other.client), true);
    const r = await sweepImports(db.pool, 30);
    assert.deepEqual({ skipped: r.skipped, imports: r.imports, rejects: r.rejects }, { skipped: true, imports: 0, rejects: 0 });
    assert.equal(await count('imports'), 1);
    assert.equal(await count('import_rejects'), 3);
  } finally {
    await other.end();
  }
  const r = await sweepImports(db.pool, 30);
  assert.deepEqual({ skipped: r.skipped, imports: r.imports, rejects: r.rejects }, { skipped: false, imports: 1, rejects: 3 });
});

test('two sweeps at once: the second skips while the first, held up mid-batch, holds the lock', async () => {
  const doomed = await addImport('completed', 50, 3, 1);
  await addImport('cancelled', 60, 0, 0);
  // A row lock on one of the imports holds the first sweep inside its batch (its DELETE waits).
  const rowLock = await holder();
  let first: Promise<Awaited<ReturnType<typeof sweepImports>>> | undefined;
  try {
    await rowLock.client.query('SELECT 1 FROM imports WHERE id = $1 FOR UPDATE', [doomed]);
    first = sweepImports(db.pool, 30);
    await blockedBy(rowLock.pid);
    const second = await sweepImports(db.pool, 30);
    assert.deepEqual({ skipped: second.skipped, imports: second.imports, rejects: second.rejects }, { skipped: true, imports: 0, rejects: 0 });
    assert.equal(await count('imports'), 2, 'the skipped sweep deleted nothing');
  } finally {
    await rowLock.end();
  }
  const r = await first;
  assert.deepEqual({ skipped: r.skipped, imports: r.imports, rejects: r.rejects, error: r.error }, { skipped: false, imports: 2, rejects: 3, error: undefined });
  assert.deepEqual(await left(), {});
});

test('the service: none when SLUICE_IMPORTS_RETENTION_DAYS is unset or 0', async () => {
  const ctx: AppContext = { pool: db.pool };
  assert.equal(await importsRetentionService.start(ctx, undefined as never), undefined);
  process.env.SLUICE_IMPORTS_RETENTION_DAYS = '0';
  assert.equal(await importsRetentionService.start(ctx, undefined as never), undefined);
});

test('the service sweeps at start, writes one line on stderr for what it deleted, and its stop waits for the sweep in progress', async () => {
  const doomed = await addImport('failed', 8, 2, 1);
  await addImport('completed', 9, 5, 0);
  const kept = await addImport('completed', 6, 1, 1);
  process.env.SLUICE_IMPORTS_RETENTION_DAYS = '7';
  process.env.SLUICE_IMPORTS_RETENTION_MS = '3600000';
  const lines: string[] = [];
  const write = process.stderr.write.bind(process.stderr);
  // A spy on stderr: the line is the service's only output.
  process.stderr.write = ((chunk: string | Uint8Array, ...rest: never[]) => {
    if (String(chunk).startsWith('sluice: retention:')) lines.push(String(chunk));
    return write(chunk, ...rest);
  }) as typeof process.stderr.write;
  const rowLock = await holder();
  try {
    await rowLock.client.query('SELECT 1 FROM imports WHERE id = $1 FOR UPDATE', [doomed]);
    const service = await importsRetentionService.start({ pool: db.pool }, undefined as never);
    assert.ok(service, 'started');
    await blockedBy(rowLock.pid);
    let stopped = false;
    const stopping = service.stop().then(() => (stopped = true));
    // A round trip later the batch is still held up, and stop has not returned: it waits.
    await blockedBy(rowLock.pid);
    assert.equal(stopped, false);
    await rowLock.end();
    await stopping;
  } finally {
    process.stderr.write = write;
    await rowLock.end();
  }
  assert.deepEqual(Object.keys(await left()), [kept]);
  assert.equal(lines.length, 1, lines.join(''));
  assert.match(lines[0]!, /^sluice: retention: deleted 2 imports finished before \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \(7 rejected rows\)\n$/);
});

test('bad retention settings are refused by checkSettings(serve) with the settings error', () => {
  const cases: Array<[string, string, RegExp]> = [
    ['SLUICE_IMPORTS_RETENTION_DAYS', '-1', /SLUICE_IMPORTS_RETENTION_DAYS must be a whole number from 0 to 36500, got "-1"/],
    ['SLUICE_IMPORTS_RETENTION_DAYS', 'abc', /SLUICE_IMPORTS_RETENTION_DAYS must be a whole number from 0 to 36500, got "abc"/],
    ['SLUICE_IMPORTS_RETENTION_DAYS', '36501', /SLUICE_IMPORTS_RETENTION_DAYS must be a whole number from 0 to 36500, got "36501"/],
    ['SLUICE_IMPORTS_RETENTION_DAYS', '1.5', /SLUICE_IMPORTS_RETENTION_DAYS must be a whole number from 0 to 36500, got "1.5"/],
    ['SLUICE_IMPORTS_RETENTION_MS', '999', /SLUICE_IMPORTS_RETENTION_MS must be a whole number from 1000 to 2147483647, got "999"/],
    ['SLUICE_IMPORTS_RETENTION_MS', String(2 ** 31), /SLUICE_IMPORTS_RETENTION_MS must be a whole number from 1000 to 2147483647/],
  ];
  for (const [name, value, message] of cases) {
    process.env[name] = value;
    assert.throws(() => checkSettings('serve'), (err: Error & { code?: string }) => err.code === 'invalid_input' && message.test(err.message), `${name}=${value}`);
    // Read by serve only.
    assert.doesNotThrow(() => checkSettings('worker'));
    delete process.env[name];
  }
  for (const value of ['0', '1', '36500']) {
    process.env.SLUICE_IMPORTS_RETENTION_DAYS = value;
    assert.doesNotThrow(() => checkSettings('serve'), value);
  }
  process.env.SLUICE_IMPORTS_RETENTION_MS = '1000';
  assert.doesNotThrow(() => checkSettings('serve'));
});
