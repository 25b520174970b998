/**
 * `POST /imports {"pipeline","url"}`: the server fetches the file, so the client's connection
 * carries none of it. Before, nothing stopped the fetch when the client left: the import went
 * on for as long as the remote server sent (it kept `serve` from stopping for 86 s after
 * SIGTERM, well past its 10 s grace), and was stored whole for a client that got no answer
 * and would retry (importing the file twice). Now the fetch is aborted as soon as the
 * client's connection closes before the answer, whether the client hung up or the server cut
 * it at the end of close()'s grace period, and the upload fails as any upload whose client
 * hung up: no import, part, job or staging table is left.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { buildServer } from '../../src/http/server.ts';
import { ownerAlive } from '../../src/db/sql/imports.ts';
import { testDb, type TestDb } from '../helpers/db.ts';
import { leadsCsv, leftovers, startIntake, waitForImportRemoved, waitForStoredParts, type Intake } from './http-helpers.ts';
import { withDeadline } from '../helpers/processes.ts';

let db: TestDb;
let intake: Intake;
let remote: http.Server;
let remoteBase: string;
const savedAllow = process.env.SLUICE_FETCH_ALLOW_PRIVATE;

/** What the remote server saw of each file it was asked for: the request came, its response closed. */
const fetches = new Map<string, { closed: Promise<void>; isClosed: () => boolean }>();

before(async () => {
  process.env.SLUICE_FETCH_ALLOW_PRIVATE = '1'; // the remote server is on 127.0.0.1
  db = await testDb();
  intake = await startIntake(db); // no workers: what the upload stored stays as it is
  // /<name>.csv: a leads CSV, its first 2,100 rows at once (more than the 64 KiB read before
  // the first part), then 40 rows every 20 ms (about 70 KB/s, far above the minimum rate of
  // 64 KiB per 30 s) for as long as the response is open: a big file on a slow link.
  remote = http.createServer((req, res) => {
    const name = /^\/([a-z-]+)\.csv$/.exec(req.url ?? '')?.[1];
    if (!name) return void res.writeHead(404).end();
    let isClosed = false;
    const closed = new Promise<void>((resolve) => res.on('close', () => {
      isClosed = true;
      resolve();
    }));
    fetches.set(name, { closed, isClosed: () => isClosed });
    res.writeHead(200, { 'content-type': 'text/csv' });
    res.write(leadsCsv(2100, 0, name));
    let next = 2100;
    const timer = setInterval(() => {
      const rows: string[] = [];
      for (const end = next + 40; next < end; next++) rows.push(`${name}${next}@example.com,Lead ${next},Recife,PE\n`);
      res.write(rows.join(''));
    }, 20);
    res.on('close', () => clearInterval(timer));
  });
  await new Promise<void>((resolve) => remote.listen(0, '127.0.0.1', resolve));
  remoteBase = `http://127.0.0.1:${(remote.address() as AddressInfo).port}`;
});

after(async () => {
  if (savedAllow === undefined) delete process.env.SLUICE_FETCH_ALLOW_PRIVATE;
  else process.env.SLUICE_FETCH_ALLOW_PRIVATE = savedAllow;
  remote?.closeAllConnections();
  await new Promise((resolve) => remote?.close(resolve));
  await intake?.stop();
  await db?.close();
});

/**
 * The JSON url import of `${name}.csv`, on a connection of its own: `answer` is the
 * response's status (undefined when the connection closed without one), `closed` resolves
 * once the connection is gone, `destroy` hangs up.
 */
function postUrlImport(base: string, name: string) {
  const req = http.request(`${base}/imports`, { method: 'POST', agent: false, headers: { 'content-type': 'application/json' } });
  let status: number | undefined;
  req.on('response', (res) => {
    status = res.statusCode;
    res.resume();
  });
  req.on('error', () => {});
  const closed = new Promise<void>((resolve) => req.on('close', () => resolve()));
  req.end(JSON.stringify({ pipeline: 'leads', url: `${remoteBase}/${name}.csv` }));
  return { closed, answer: () => status, destroy: () => req.destroy() };
}

/** The import of `${name}.csv` once it has stored a part (and so its part and merge jobs). */
async function importUnderWay(name: string): Promise<string> {
  const id = await waitForStoredParts(`the import of ${name}.csv to store a part`, db.pool, { fileName: `${name}.csv`, atLeast: 1 }, 30_000, 20);
  assert.ok((await jobsOf(id)) >= 2, 'its part and merge jobs were sent');
  assert.equal(fetches.get(name)?.isClosed(), false, 'the file is still being fetched');
  return id;
}

const jobsOf = async (id: string) =>
  (await db.pool.query<{ n: number }>(`SELECT count(*)::int AS n FROM pgboss.job WHERE data->>'importId' = $1`, [id])).rows[0]!.n;

/** Nothing of the import stays: no row, part, job, staging table or stored bytes; its upload's connection is back, unlocked. */
async function assertNothingLeft(id: string): Promise<void> {
  await waitForImportRemoved(db.pool, id, 30_000, 20);
  assert.equal((await db.pool.query('SELECT 1 FROM import_parts WHERE import_id = $1', [id])).rows.length, 0);
  assert.equal(await jobsOf(id), 0, 'the import\'s jobs were left in the queue');
  assert.deepEqual(await leftovers(db, id), { tables: 0, bytes: 0 });
  assert.equal(await ownerAlive(db.pool, id), false, 'the upload still holds its connection and owner lock');
}

test('the client hangs up while the server fetches its file: the fetch is stopped and the import leaves nothing', async () => {
  let app: FastifyInstance | undefined;
  try {
    app = await buildServer(intake.ctx, { imports: { partRows: 500 } });
    await app.listen({ port: 0, host: '127.0.0.1' });
    const base = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
    const client = postUrlImport(base, 'gone');
    const id = await importUnderWay('gone');
    client.destroy();
    // Before, the remote file was read to its end (never, here) and the import stored whole.
    await withDeadline(fetches.get('gone')!.closed, 10_000, 'the remote fetch to be stopped');
    await assertNothingLeft(id);
    // The server is none the worse.
    assert.equal((await fetch(`${base}/healthz`, { signal: AbortSignal.timeout(10_000) })).status, 200);
  } finally {
    await app?.close();
  }
});

test('close() while a URL import is fetched for a client still waiting: cut after the grace period, the fetch stopped, nothing left', async () => {
  const graceMs = 1000;
  const app = await buildServer(intake.ctx, { imports: { partRows: 500 }, closeGraceMs: graceMs });
  await app.listen({ port: 0, host: '127.0.0.1' });
  const client = postUrlImport(`http://127.0.0.1:${(app.server.address() as AddressInfo).port}`, 'shutdown');
  const id = await importUnderWay('shutdown');
  const started = performance.now();
  // The grace, then the cut; a margin for a loaded machine (before, the fetch went on for as long as the remote server sent).
  await withDeadline(app.close(), graceMs + 10_000, 'close() to end');
  const took = performance.now() - started;
  assert.ok(took >= graceMs - 100, `closed after ${Math.round(took)} ms: the import had a grace period of ${graceMs} ms`);
  await withDeadline(fetches.get('shutdown')!.closed, 10_000, 'the remote fetch to be stopped');
  await withDeadline(client.closed, 10_000, 'the client\'s connection to be cut');
  assert.equal(client.answer(), undefined, 'the client got no answer: nothing was accepted');
  // What `serve` does next (pool.end()) waits for the upload's connection: back, and nothing stays.
  await assertNothingLeft(id);
});
