/**
 * Overlapping syncs: a sync whose fetch started earlier but commits later never puts its
 * older values over those of a fetch that started after it (migrations/0048_fetch_order.sql).
 * The provider is a local server that holds each request until the test answers it, so the
 * order of fetch starts and of merges is driven step by step, without sleeps.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import pg from 'pg';
import { migrate, migrationsDir } from '../../src/db/migrate.ts';
import { openDb, withDatabase } from '../../src/db/pool.ts';
import { getSync } from '../../src/db/sql/events.ts';
import { buildServer } from '../../src/http/server.ts';
import { syncEvents, type SyncResult } from '../../src/pipelines/events/sync.ts';
import { testDb, type TestDb } from '../helpers/db.ts';
import { feedXml, type BaseSpec } from './feeds.ts';

/** A provider that hands each incoming request to the test, which answers it when it wants. */
interface HeldProvider {
  url: string;
  /** The next request to arrive (already arrived, or when it does). */
  request(): Promise<http.ServerResponse>;
  close(): Promise<void>;
}

async function heldProvider(): Promise<HeldProvider> {
  const arrived: http.ServerResponse[] = [];
  const waiting: Array<(res: http.ServerResponse) => void> = [];
  const server = http.createServer((_req, res) => {
    const w = waiting.shift();
    if (w) w(res);
    else arrived.push(res);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  return {
    url: `http://127.0.0.1:${port}/feed`,
    request: () => {
      const res = arrived.shift();
      return res ? Promise.resolve(res) : new Promise((resolve) => waiting.push(resolve));
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

function answer(res: http.ServerResponse, bases: BaseSpec[]): void {
  res.writeHead(200, { 'content-type': 'application/xml; charset=utf-8' }).end(feedXml(bases));
}

const base = (id: string, title: string, events: Array<[string, string]>, sellMode = 'online'): BaseSpec => ({
  base_event_id: id,
  sell_mode: sellMode,
  title,
  events: events.map(([eventId, price]) => ({ event_id: eventId, start: '2021-06-30T21:00:00', end: '2021-06-30T22:00:00', zones: [{ zone_id: '1', price }] })),
});

let db: TestDb;
let app: FastifyInstance;
let provider: HeldProvider;
before(async () => {
  db = await testDb();
  app = await buildServer({ pool: db.pool });
  provider = await heldProvider();
});
after(async () => {
  await app.close();
  await provider.close();
  await db.close();
});

/** Starts a sync and returns once its request has reached the provider (its fetch has begun). */
async function startSync(): Promise<{ result: Promise<SyncResult>; res: http.ServerResponse }> {
  const result = syncEvents(db.pool, { url: provider.url, trigger: 'test', retries: 0, idleTimeoutMs: 120_000, timeoutMs: 120_000 });
  return { result, res: await provider.request() };
}

/** Stored events: `base:event` -> [title, min_price]. */
async function stored(): Promise<Record<string, [string, number]>> {
  const { rows } = await db.pool.query<{ k: string; title: string; p: string }>(
    `SELECT base_event_id || ':' || event_id AS k, title, min_price AS p FROM provider_events ORDER BY 1`,
  );
  return Object.fromEntries(rows.map((r) => [r.k, [r.title, Number(r.p)]]));
}

async function searchPrices(): Promise<Array<[string, number]>> {
  const res = await app.inject({ method: 'GET', url: '/search' });
  assert.equal(res.statusCode, 200, res.body);
  return (res.json() as { data: { events: Array<{ title: string; min_price: number }> } }).data.events.map((e) => [e.title, e.min_price]);
}

test('a fetch started earlier and merged later keeps the newer values, and still adds the events only it saw', async () => {
  const first = await startSync();
  answer(first.res, [base('1', 'Concert', [['10', '10']])]);
  assert.equal((await first.result).status, 'completed');

  // A's request is sent first and held; B's is sent after it, answered, and B commits.
  const a = await startSync();
  const b = await startSync();
  answer(b.res, [base('1', 'Concert (moved)', [['10', '30'], ['12', '12']])]);
  const rb = await b.result;
  assert.equal(rb.status, 'completed');
  assert.deepEqual([rb.eventsSeen, rb.eventsNew, rb.eventsChanged, rb.eventsSuperseded], [2, 1, 2, 0]);
  assert.deepEqual(await stored(), { '1:10': ['Concert (moved)', 30], '1:12': ['Concert (moved)', 12] });
  const versionAfterB = rb.version;
  assert.ok(versionAfterB);

  // A now gets its (older) answer: 1:10 at its older price and the base event's older title,
  // plus an event of base 1 and a base event that B did not list.
  answer(a.res, [base('1', 'Concert', [['10', '20'], ['11', '11']]), base('2', 'Other', [['20', '5']])]);
  const ra = await a.result;
  assert.equal(ra.status, 'completed');
  // New: 1:11 and 2:20. Left alone: 1:10 (B started its fetch later and wrote it).
  assert.deepEqual([ra.eventsSeen, ra.eventsNew, ra.eventsChanged, ra.eventsSuperseded], [3, 2, 2, 1]);
  assert.deepEqual(await stored(), {
    '1:10': ['Concert (moved)', 30],
    // Inserted with the base event's title as stored (B's, the newer one).
    '1:11': ['Concert (moved)', 11],
    '1:12': ['Concert (moved)', 12],
    '2:20': ['Other', 5],
  });
  assert.equal(ra.version, versionAfterB + 1, 'A added events: the feed version moves on');
  // One start and end for all: /search orders them by id.
  assert.deepEqual((await searchPrices()).sort(), [
    ['Concert (moved)', 11],
    ['Concert (moved)', 12],
    ['Concert (moved)', 30],
    ['Other', 5],
  ]);
  const record = await getSync(db.pool, ra.syncId);
  assert.deepEqual([record?.events_new, record?.events_changed, record?.events_superseded], [2, 2, 1]);
});

test('a fetch started earlier that only repeats what a later one wrote changes nothing and keeps the version', async () => {
  const a = await startSync();
  const b = await startSync();
  answer(b.res, [base('1', 'Concert (moved again)', [['10', '40']])]);
  const rb = await b.result;
  assert.deepEqual([rb.eventsNew, rb.eventsChanged], [0, 3]); // 1:10's price; the title reaches 1:11 and 1:12
  answer(a.res, [base('1', 'Concert (moved)', [['10', '30'], ['12', '12']])]);
  const ra = await a.result;
  assert.equal(ra.status, 'completed');
  // Both of its events were stored: B, which started later, was merged first.
  assert.deepEqual([ra.eventsNew, ra.eventsChanged, ra.eventsSuperseded], [0, 0, 2]);
  assert.equal(ra.version, undefined, 'nothing changed: no new feed version, the search cache stays valid');
  const s = await stored();
  assert.deepEqual([s['1:10'], s['1:12']], [['Concert (moved again)', 40], ['Concert (moved again)', 12]]);
});

test('a later fetch that found the stored values unchanged still wins over an older fetch merged after it', async () => {
  // A value that went and came back (tickets returned: sold out, then not): the later fetch B
  // confirms what is stored and writes nothing; A, older, must not put its stale values back.
  const a = await startSync();
  const b = await startSync();
  answer(b.res, [base('1', 'Concert (moved again)', [['10', '40']])]);
  const rb = await b.result;
  assert.deepEqual([rb.eventsChanged, rb.eventsSuperseded], [0, 0]);
  answer(a.res, [base('1', 'Concert CANCELLED', [['10', '99']])]);
  const ra = await a.result;
  assert.equal(ra.status, 'completed');
  assert.deepEqual([ra.eventsChanged, ra.eventsSuperseded], [0, 1]);
  assert.equal(ra.version, undefined);
  assert.deepEqual((await stored())['1:10'], ['Concert (moved again)', 40]);
  const { rows } = await db.pool.query(`SELECT title FROM provider_base_events WHERE base_event_id = '1'`);
  assert.deepEqual(rows, [{ title: 'Concert (moved again)' }]);
});

test('overlapping syncs merged in the order their fetches started: the later fetch wins, as before', async () => {
  const a = await startSync();
  const b = await startSync();
  answer(a.res, [base('1', 'Concert', [['10', '50']])]);
  const ra = await a.result;
  assert.deepEqual([ra.eventsChanged, ra.eventsSuperseded], [3, 0]); // 1:10 (price, title); the title reaches 1:11 and 1:12
  answer(b.res, [base('1', 'Concert', [['10', '60']])]);
  const rb = await b.result;
  assert.deepEqual([rb.eventsChanged, rb.eventsSuperseded], [1, 0]);
  assert.deepEqual((await stored())['1:10'], ['Concert', 60]);
});

test('migrations 0048-0049 on a database holding events: they are ordered before any new fetch, and the next sync updates them', async () => {
  const name = `${db.name}_m`;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-0048-'));
  for (const f of fs.readdirSync(migrationsDir)) if (f < '0048') fs.copyFileSync(path.join(migrationsDir, f), path.join(dir, f));
  await db.pool.query(`CREATE DATABASE ${pg.escapeIdentifier(name)}`);
  const pool = await openDb({ url: withDatabase(db.url, name), migrate: false });
  try {
    await migrate(pool, dir);
    // Stored by a sync of the version before 0048.
    await pool.query(`INSERT INTO provider_syncs (url, trigger, status) VALUES ('http://old', 'test', 'completed')`);
    await pool.query(`INSERT INTO provider_base_events (base_event_id, title, sell_mode, ever_online, first_sync_id, changed_sync_id)
                      VALUES ('1', 'Old title', 'online', true, 1, 1)`);
    await pool.query(`INSERT INTO provider_events (base_event_id, event_id, id, title, ever_online, starts_at, ends_at, sold_out,
                                                   min_price, max_price, zones, content_hash, first_sync_id, changed_sync_id)
                      VALUES ('1', '10', gen_random_uuid(), 'Old title', true, '2021-06-30 21:00', '2021-06-30 22:00', false, 1, 1, '[]', 'old', 1, 1)`);
    assert.deepEqual(await migrate(pool), ['0048_fetch_order.sql', '0049_provider_syncs_fetch_floor.sql']);
    const { rows } = await pool.query<{ b: number; e: number }>(
      `SELECT b.fetch_seq AS b, e.fetch_seq AS e FROM provider_base_events b JOIN provider_events e USING (base_event_id)`,
    );
    assert.deepEqual(rows, [{ b: 0, e: 0 }]);

    const next = syncEvents(pool, { url: provider.url, trigger: 'test', retries: 0 });
    answer(await provider.request(), [base('1', 'New title', [['10', '7']])]);
    const r = await next;
    assert.deepEqual([r.status, r.eventsNew, r.eventsChanged, r.eventsSuperseded], ['completed', 0, 1, 0]);
    const after = await pool.query<{ title: string; p: string; seq: number; sync_seq: number }>(
      `SELECT e.title, e.min_price AS p, e.fetch_seq AS seq, s.fetch_seq AS sync_seq
         FROM provider_events e JOIN provider_syncs s ON s.id = $1`,
      [r.syncId],
    );
    assert.deepEqual(after.rows.map((x) => [x.title, Number(x.p), x.seq === x.sync_seq, x.seq > 0]), [['New title', 7, true, true]]);
  } finally {
    await pool.end();
    await db.pool.query(`DROP DATABASE IF EXISTS ${pg.escapeIdentifier(name)} WITH (FORCE)`);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
