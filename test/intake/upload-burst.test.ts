/**
 * Uploads can no longer take the server down. Before, each upload held one pool connection
 * (its owner lock) and asked the same pool for more (the import row, the staging table, a
 * connection per part): 25 concurrent uploads against the default pool of 20 deadlocked
 * `serve` for good (/healthz, GET /imports and every new upload hung; SIGTERM did not stop
 * it), and 20 uploads whose clients stalled mid-file did the same. Now an upload does all its
 * work on one connection, uploads beyond maxUploads get 503 with Retry-After before their body
 * is read, a body silent for the idle timeout is cut (leaving nothing), and SIGTERM stops the
 * server within its grace period whatever its uploads do.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Readable } from 'node:stream';
import pg from 'pg';
import { after, before, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { buildServer } from '../../src/http/server.ts';
import { acceptUpload, maxUploads } from '../../src/intake/accept.ts';
import { lockImportOwner, ownerAlive, unlockImportOwner } from '../../src/db/sql/imports.ts';
import { SluiceError } from '../../src/core/errors.ts';
import { cancelImport } from '../../src/intake/cancel.ts';
import { failImport } from '../../src/intake/fail.ts';
import { startWorkers, type RunningWorkers } from '../../src/intake/worker.ts';
import { testDb, type TestDb } from '../helpers/db.ts';
import { killAll, startSluice, withDeadline, type Proc } from '../helpers/processes.ts';
import { exitedWithin } from '../cli/exit.ts';
import { leadsCsv, leftovers, startIntake, statusOverHttp, waitFor, waitForImportEnd, waitForImportRemoved, waitForStoredParts, type Intake } from './http-helpers.ts';

let db: TestDb;
const savedWorkers = process.env.SLUICE_WORKERS;
before(async () => {
  db = await testDb();
});
after(async () => {
  if (savedWorkers === undefined) delete process.env.SLUICE_WORKERS;
  else process.env.SLUICE_WORKERS = savedWorkers;
  await killAll();
  await db.close();
});

interface Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/**
 * A raw-body upload on a connection of its own: `first` sent now, the rest when `end` is
 * called (or never). `answer` resolves with the response (undefined if the connection
 * closed without one), `closed` once the connection is gone.
 */
function openUpload(base: string, query: string, first: string) {
  const req = http.request(`${base}/imports?${query}`, { method: 'POST', agent: false, headers: { 'content-type': 'text/csv' } });
  let answered: Answer | undefined;
  const answer = new Promise<Answer | undefined>((resolve) => {
    req.on('response', (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => {
        answered = { status: res.statusCode!, headers: res.headers, body };
        resolve(answered);
      });
      res.on('error', () => resolve(undefined));
    });
    req.on('error', () => resolve(undefined));
    req.on('close', () => setImmediate(() => resolve(answered)));
  });
  const closed = new Promise<void>((resolve) => req.on('close', () => resolve()));
  req.write(first);
  return {
    answer,
    closed,
    get answered() {
      return answered;
    },
    end: (rest: string) => req.end(rest),
    destroy: () => req.destroy(),
  };
}

/** A whole upload, answered (the request fails the test if it gets no answer within `ms`). */
async function upload(base: string, query: string, csv: string, ms = 60_000): Promise<Answer> {
  const up = openUpload(base, query, csv);
  up.end('');
  const a = await withDeadline(up.answer, ms, `an answer to the upload ${query}`);
  assert.ok(a, `the upload ${query} got no answer (connection closed)`);
  return a;
}

/** GET `path`, answered within 10 s (the reported defect: it hung for ever). */
async function getPromptly(base: string, path: string): Promise<number> {
  const res = await fetch(`${base}${path}`, { signal: AbortSignal.timeout(10_000) });
  await res.arrayBuffer();
  return res.status;
}

/** A 503 of a server taking as many uploads as it can: Retry-After and a clear message. */
function assertBusy(a: Answer, cap: number) {
  assert.equal(a.status, 503, a.body);
  assert.equal(a.headers['retry-after'], '5');
  assert.equal(a.headers.connection, 'close', 'the unread body is not drained');
  const { error } = JSON.parse(a.body) as { error: { code: string; message: string } };
  assert.equal(error.code, 'unavailable');
  const n = cap === 1 ? '1 upload is' : `${cap} uploads are`;
  assert.equal(error.message, `${n} in progress on this server, the most it takes at once; retry shortly`);
}

/** The answer to an upload cut by the idle timeout, when the client is still there to get one. */
function assertIdleCut(a: Answer, idleMs: number) {
  assert.equal(a.status, 400, a.body);
  const { error } = JSON.parse(a.body) as { error: { code: string; message: string } };
  assert.equal(error.code, 'invalid_input');
  assert.equal(error.message, `the file stopped arriving before its end: no byte for ${idleMs / 1000} s, the upload was cut`);
}

/** A multipart form (pipeline, then the file form.csv) whose file sends `first` and then nothing. */
function stalledForm(base: string, first: string) {
  const boundary = 'sluice-stalled-form';
  const req = http.request(`${base}/imports`, { method: 'POST', agent: false, headers: { 'content-type': `multipart/form-data; boundary=${boundary}` } });
  const answer = new Promise<Answer | undefined>((resolve) => {
    req.on('response', (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body }));
      res.on('error', () => resolve(undefined));
    });
    req.on('error', () => resolve(undefined));
  });
  const closed = new Promise<void>((resolve) => req.on('close', () => resolve()));
  req.write(
    `--${boundary}\r\nContent-Disposition: form-data; name="pipeline"\r\n\r\nleads\r\n` +
    `--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="form.csv"\r\nContent-Type: text/csv\r\n\r\n${first}`,
  );
  return { answer, closed };
}

const unfinished = async (where = 'true', params: unknown[] = []) =>
  (await db.pool.query<{ n: number }>(`SELECT count(*)::int AS n FROM imports WHERE status IN ('queued', 'running') AND ${where}`, params)).rows[0]!.n;

/** The 200-row leads CSV of the report, its emails from `prefix`. */
const csv200 = (prefix: string) => leadsCsv(200, 0, prefix);

let serve: Proc | undefined;
let serveBase = '';
/** `sluice serve` with a pool of 10 and one worker: maxUploads = max(1, 10 - (1 + 3) - 4) = 2. */
const SERVE_POOL = 10;
const SERVE_CAP = 2;

test('more concurrent uploads than the pool has connections: each answered (202, or 503 with Retry-After), the server stays up, every 202 completes', async () => {
  serve = startSluice(['serve', '--port', '0'], { DATABASE_URL: db.url, SLUICE_DB_POOL: String(SERVE_POOL), SLUICE_WORKERS: '1' });
  await serve.waitFor(/listening on http:\/\/127\.0\.0\.1:\d+/);
  serveBase = /listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(serve.output())![1]!;

  // 12 uploads (more than the pool's 10 connections) that send their first rows and then
  // wait: the first SERVE_CAP are taken and hold a connection each, the others are refused
  // at once, without their body.
  const held = Array.from({ length: 12 }, (_, i) => {
    const text = csv200(`held${i}-`);
    const cut = text.indexOf(`held${i}-100@`);
    return { up: openUpload(serveBase, 'pipeline=leads', text.slice(0, cut)), rest: text.slice(cut) };
  });
  const refused = await waitFor('all but the uploads taken to be refused', async () => {
    const answered = held.filter((h) => h.up.answered);
    return answered.length >= held.length - SERVE_CAP ? answered : undefined;
  }, 30_000, 50);
  assert.equal(refused.length, held.length - SERVE_CAP);
  for (const h of refused) assertBusy(h.up.answered!, SERVE_CAP);
  const taken = held.filter((h) => !h.up.answered);
  // The taken uploads hold their connections: the server answers all the same.
  assert.equal(await getPromptly(serveBase, '/healthz'), 200);
  assert.equal(await getPromptly(serveBase, '/imports'), 200);
  for (const h of refused) h.up.destroy();
  for (const h of taken) h.up.end(h.rest);
  const accepted: string[] = [];
  for (const h of taken) {
    const a = await withDeadline(h.up.answer, 60_000, 'an answer to a taken upload');
    assert.equal(a?.status, 202, a?.body);
    accepted.push((JSON.parse(a.body) as { id: string }).id);
  }

  // The reported burst: 25 uploads at once, each answered; /healthz answers meanwhile.
  const burst = Array.from({ length: 25 }, (_, i) => upload(serveBase, 'pipeline=leads', csv200(`burst${i}-`)));
  assert.equal(await getPromptly(serveBase, '/healthz'), 200);
  const answers = await Promise.all(burst);
  for (const a of answers) {
    if (a.status === 503) assertBusy(a, SERVE_CAP);
    else {
      assert.equal(a.status, 202, a.body);
      accepted.push((JSON.parse(a.body) as { id: string }).id);
    }
  }
  assert.ok(accepted.length > SERVE_CAP, `only ${accepted.length} uploads accepted`);

  // Every accepted import completes with its 200 rows; nothing else was created.
  for (const id of accepted) {
    const s = await waitForImportEnd(id, statusOverHttp(serveBase));
    assert.equal(s.status, 'completed', JSON.stringify(s));
    assert.equal(s.rows.read, 200);
    assert.equal(s.rows.inserted, 200);
  }
  const { rows } = await db.pool.query<{ n: number }>('SELECT count(*)::int AS n FROM imports');
  assert.equal(rows[0]!.n, accepted.length, 'a refused upload left an import behind');
  assert.equal(await unfinished(), 0);
  assert.equal(await getPromptly(serveBase, '/healthz'), 200);
});

test('SIGTERM with a stalled upload in flight: serve destroys its connection after the grace period and exits', async () => {
  assert.ok(serve, 'the server of the previous test');
  const text = csv200('stop-');
  const up = openUpload(serveBase, 'pipeline=leads&file_name=stop.csv', text.slice(0, text.length / 2));
  await waitFor('the stalled upload to hold its import', async () => ((await unfinished(`file_name = 'stop.csv'`)) === 1 ? true : undefined));
  const started = Date.now();
  serve.child.kill('SIGTERM');
  // serve's grace period (10 s), then its services' stop (up to 10 s more), with a margin for a loaded machine.
  assert.equal(await exitedWithin(serve, 25_000), 0, serve.output());
  const took = Date.now() - started;
  assert.ok(took >= 9_000, `stopped after ${took} ms: the upload had a grace period of 10 s`);
  await withDeadline(up.closed, 5_000, 'the stalled upload to be cut');
  // Cut, it left nothing: the import and its staging went before the pool closed.
  assert.equal(await unfinished(), 0);
  const { rows } = await db.pool.query(`SELECT 1 FROM imports WHERE file_name = 'stop.csv'`);
  assert.equal(rows.length, 0);
});

test('a body that stalls mid-file (raw or multipart) is cut after the idle timeout and leaves nothing; it held the only upload slot meanwhile', async () => {
  // Uploads on a pool of 9 beside one worker: maxUploads = max(1, 9 - (1 + 3) - 4) = 1.
  process.env.SLUICE_WORKERS = '1';
  const small = await testDb({ max: 9 });
  let intake: Intake | undefined;
  let app: FastifyInstance | undefined;
  let workers: RunningWorkers | undefined;
  try {
    assert.equal(maxUploads(small.pool), 1);
    intake = await startIntake(small); // no workers yet: the stored parts stay as they are
    // Long enough that a loaded machine's slow part stores and timers never pass for a stall.
    const idleMs = 5000;
    app = await buildServer(intake.ctx, { imports: { uploadIdleTimeoutMs: idleMs, partRows: 500 } });
    await app.listen({ port: 0, host: '127.0.0.1' });
    const base = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;

    // 2,000 rows of 3,000 (more than the 64 KiB read before the first part): parts 0-2 are
    // stored, then the client sends nothing more.
    const text = leadsCsv(3000, 0, 'stall');
    const cut = text.indexOf('stall2000@');
    const up = openUpload(base, 'pipeline=leads&file_name=stalled.csv', text.slice(0, cut));
    const id = await waitForStoredParts('three parts of the stalled upload stored', small.pool, { fileName: 'stalled.csv', atLeast: 3 }, 30_000, 20);
    const stalledAt = Date.now();
    assert.ok((await leftovers(small, id)).bytes > 0, 'the stored parts keep their bytes while the upload goes on');

    // It holds the only upload slot: another upload is refused meanwhile, before its body.
    assertBusy(await upload(base, 'pipeline=leads', csv200('refused-')), 1);

    // Cut after the idle timeout: its connection closed (a raw body's request is destroyed:
    // no answer to a client that stopped sending).
    await withDeadline(up.closed, idleMs + 10_000, 'the stalled upload to be cut');
    const took = Date.now() - stalledAt;
    assert.ok(took >= idleMs - 200, `cut after ${took} ms, before the idle timeout of ${idleMs} ms`);
    assert.equal(up.answered, undefined, 'a raw body cut for idleness gets no answer (its request is destroyed)');

    // Nothing of it stays: no import, no part, no staging table, no bytes.
    await waitForImportRemoved(small.pool, id, 10_000, 20);
    assert.deepEqual(await leftovers(small, id), { tables: 0, bytes: 0 });
    const { rows: parts } = await small.pool.query('SELECT 1 FROM import_parts WHERE import_id = $1', [id]);
    assert.equal(parts.length, 0);

    // A multipart file that stalls the same way: cut (answered 400), nothing left.
    const form = stalledForm(base, leadsCsv(2000, 0, 'form'));
    const formId = await waitFor('the stalled form to hold its import', async () => {
      const { rows } = await small.pool.query<{ id: string }>(`SELECT id FROM imports WHERE file_name = 'form.csv'`);
      return rows[0]?.id;
    }, 30_000, 20);
    const answer = await withDeadline(form.answer, idleMs + 10_000, 'the stalled form to be cut');
    assert.ok(answer, 'no answer to the stalled form');
    assertIdleCut(answer, idleMs);
    await withDeadline(form.closed, 10_000, 'the stalled form\'s connection to close');
    assert.equal((await small.pool.query('SELECT 1 FROM imports WHERE id = $1', [formId])).rows.length, 0);
    assert.deepEqual(await leftovers(small, formId), { tables: 0, bytes: 0 });

    // Its slot (and connection) is free again: the next upload is taken and completes.
    workers = await startWorkers(intake.ctx, { concurrency: 1 });
    const a = await upload(base, 'pipeline=leads', csv200('after-'));
    assert.equal(a.status, 202, a.body);
    const next = (JSON.parse(a.body) as { id: string }).id;
    const s = await waitForImportEnd(next, statusOverHttp(base));
    assert.equal(s.status, 'completed', JSON.stringify(s));
    assert.equal(s.rows.inserted, 200);
    const { rows } = await small.pool.query<{ n: number }>(`SELECT count(*)::int AS n FROM imports WHERE status IN ('queued', 'running')`);
    assert.equal(rows[0]!.n, 0);
  } finally {
    await app?.close();
    await workers?.stop();
    await intake?.stop();
    await small.close();
  }
});

test('an upload does all its work on one connection: it completes on a pool of one', async () => {
  // Before, the upload held its owner connection and waited for a second one for the import
  // row: on a pool of one it waited for ever (the burst's deadlock, with a single upload).
  const one = await testDb({ max: 1 });
  let intake: Intake | undefined;
  try {
    intake = await startIntake(one); // the queue has its own connections
    const body = Readable.from([Buffer.from(leadsCsv(300, 2, 'one'))]);
    const { id } = await withDeadline(
      acceptUpload(intake.ctx, { pipeline: 'leads', fileName: 'one.csv', source: 'test' }, body, { partRows: 100 }),
      30_000, 'the upload to be accepted on a pool of one connection',
    );
    const { rows } = await one.pool.query<{ status: string; parts_total: number; stored: number }>(
      `SELECT status, parts_total, (SELECT count(*)::int FROM import_parts WHERE import_id = $1) AS stored FROM imports WHERE id = $1`,
      [id],
    );
    assert.deepEqual(rows[0], { status: 'queued', parts_total: 4, stored: 4 });
    // Its connection went back to the pool unlocked: the owner lock is free. Seen from
    // another session (advisory locks are re-entrant within one: the pool's own connection
    // would get it even while holding it), as a server's reaper sees it (ownerAlive).
    const other = new pg.Client({ connectionString: one.url });
    await other.connect();
    try {
      const free = async () =>
        (await other.query<{ ok: boolean }>(`SELECT pg_try_advisory_xact_lock(hashtext('sluice:import:' || $1::text)) AS ok`, [id])).rows[0]!.ok;
      assert.equal(await free(), true, 'the upload\'s connection went back to the pool still holding the owner lock');
      // The check tells a held lock: taken on the pool's connection, seen held from the other.
      const held = await one.pool.connect();
      try {
        await lockImportOwner(held, id);
        assert.equal(await free(), false);
        await unlockImportOwner(held, id);
      } finally {
        held.release();
      }
      assert.equal(await free(), true);
    } finally {
      await other.end();
    }
  } finally {
    await intake?.stop();
    await one.close();
  }
});

/**
 * An upload body that sends `first`, waits for `more` (a condition of the test, not a timer),
 * sends `second`, then fails as a request does when its client hangs up. Its chunks are
 * handed over only when the upload asks for them (no read-ahead): once it asks after
 * `second`, the part `second` completed is stored or in flight.
 */
function hangingUpBody(first: string, more: Promise<void>, second: string): Readable {
  async function* chunks(): AsyncGenerator<Buffer> {
    yield Buffer.from(first);
    await more;
    yield Buffer.from(second);
    throw Object.assign(new Error('aborted'), { code: 'ECONNRESET' });
  }
  return Object.assign(new Readable({ read() {} }), { [Symbol.asyncIterator]: chunks });
}

const importRow = async (pool: TestDb['pool'], id: string) =>
  (await pool.query<{ status: string; error: string | null; parts: number }>(
    `SELECT status, error, (SELECT count(*)::int FROM import_parts WHERE import_id = $1) AS parts FROM imports WHERE id = $1`,
    [id],
  )).rows[0];

for (const end of ['cancelled', 'failed'] as const) {
  test(`${end} while its file arrives, with a part in flight when the body fails: the import stays ${end}, with its row`, async () => {
    // Before, the body's error won: the upload's cleanup marked the import cancelled over
    // "failed" and deleted its row, its end (in the part in flight) swallowed.
    const own = await testDb();
    let intake: Intake | undefined;
    try {
      intake = await startIntake(own); // no workers: the stored parts stay as they are
      const prefix = `inflight-${end}-`;
      const csv = leadsCsv(2200, 0, prefix);
      const at = (n: number) => csv.indexOf(`${prefix}${n}@`);
      let proceed!: () => void;
      const more = new Promise<void>((resolve) => (proceed = resolve));
      // 2,050 rows (more than the 64 KiB read before the first part): parts 0-19 of 100 rows
      // and 50 rows pending; then 100 rows, which complete part 20 (only): in flight when the
      // body fails.
      const body = hangingUpBody(csv.slice(0, at(2050)), more, csv.slice(at(2050), at(2150)));
      const accepted = acceptUpload(intake.ctx, { pipeline: 'leads', fileName: `${prefix}.csv`, source: 'test' }, body, { partRows: 100 });
      accepted.catch(() => {}); // awaited below
      const id = await waitForStoredParts('parts 0-19 stored', own.pool, { fileName: `${prefix}.csv`, atLeast: 20 }, 30_000, 20);
      const error = 'part 7: invalid file: line 701 is not valid utf-8 (a worker failed it)';
      if (end === 'cancelled') await cancelImport(intake.ctx, id);
      else assert.equal(await failImport(own.pool, id, error), true);
      proceed();
      if (end === 'cancelled') {
        // 409, as when the end is seen by the next part.
        await assert.rejects(withDeadline(accepted, 30_000, 'the upload to end'), (err: Error) => {
          assert.ok(err instanceof SluiceError && err.code === 'conflict', `${err.name}: ${err.message}`);
          assert.equal(err.message, `import ${id} was cancelled while its file was being uploaded: the rest of the file was not read`);
          return true;
        });
      } else {
        // Accepted as before: its status tells why.
        assert.deepEqual(await withDeadline(accepted, 30_000, 'the upload to end'), { id });
      }
      assert.deepEqual(await importRow(own.pool, id), { status: end, error: end === 'failed' ? error : null, parts: 20 });
      assert.deepEqual(await leftovers(own, id), { tables: 0, bytes: 0 });
    } finally {
      await intake?.stop();
      await own.close();
    }
  });
}

test('cancelled while its file arrives, then its client hangs up (no part in flight): the import stays cancelled, with its row', async () => {
  const own = await testDb();
  let intake: Intake | undefined;
  let app: FastifyInstance | undefined;
  try {
    intake = await startIntake(own);
    app = await buildServer(intake.ctx, { imports: { partRows: 100 } });
    await app.listen({ port: 0, host: '127.0.0.1' });
    const base = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
    const text = leadsCsv(3000, 0, 'hangup');
    const up = openUpload(base, 'pipeline=leads&file_name=hangup.csv', text.slice(0, text.indexOf('hangup2050@')));
    const id = await waitForStoredParts('parts 0-19 stored', own.pool, { fileName: 'hangup.csv', atLeast: 20 }, 30_000, 20);
    const cancelled = await fetch(`${base}/imports/${id}/cancel`, { method: 'POST' });
    assert.equal(cancelled.status, 200, await cancelled.text());
    up.destroy();
    // The upload is over once its owner lock is free (seen from another session than its own).
    await waitFor('the upload to end', async () => ((await ownerAlive(own.pool, id)) ? undefined : true), 30_000, 20);
    assert.deepEqual(await importRow(own.pool, id), { status: 'cancelled', error: null, parts: 20 });
    assert.deepEqual(await leftovers(own, id), { tables: 0, bytes: 0 });
  } finally {
    await app?.close();
    await intake?.stop();
    await own.close();
  }
});
