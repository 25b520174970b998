/**
 * POST /visits and /visits/batch in process (app.inject) against real PostgreSQL: what is
 * acknowledged is stored with its rollups, bad payloads get 400 with a reason and store
 * nothing, the visitor cookie, and group commit (many requests, few transactions).
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import Fastify, { type FastifyInstance } from 'fastify';
import { handleError } from '../../src/http/errors.ts';
import { visitsRoutes } from '../../src/http/routes/visits.ts';
import { buildServer } from '../../src/http/server.ts';
import { flushBatchSize, invalidVisitRequests } from '../../src/pipelines/visits/metrics.ts';
import { applyAllVisitorBatches } from '../../src/pipelines/visits/visitor-applier.ts';
import { testDb, type TestDb } from '../helpers/db.ts';

let db: TestDb;
let app: FastifyInstance;
before(async () => {
  db = await testDb();
  app = await buildServer({ pool: db.pool });
});
after(async () => {
  await app.close();
  await db.close();
});

const json = (payload: unknown, headers: Record<string, string> = {}) => ({
  method: 'POST' as const,
  url: '/visits',
  headers: { 'content-type': 'application/json', ...headers },
  payload: JSON.stringify(payload),
});

async function count(sql: string, params: unknown[] = []): Promise<number> {
  const { rows } = await db.pool.query<{ n: number }>(`SELECT (${sql})::bigint AS n`, params);
  return rows[0]!.n;
}

test('an acknowledged visit is stored with its rollups', async () => {
  const at = new Date(Date.now() - 30_000);
  at.setUTCMilliseconds(0);
  const res = await app.inject(json({ page_path: '/pricing', visitor_id: 'v-one', visited_at: at.toISOString() }));
  assert.equal(res.statusCode, 202);
  assert.deepEqual(res.json(), { accepted: 1 });
  // 202 means committed: no waiting needed.
  const { rows } = await db.pool.query("SELECT visitor_id, page_path, visited_at, received_at FROM visits WHERE visitor_id = 'v-one'");
  assert.equal(rows.length, 1);
  assert.equal(rows[0].page_path, '/pricing');
  assert.equal(rows[0].visited_at.getTime(), at.getTime());
  assert.ok(rows[0].received_at.getTime() >= at.getTime());
  assert.equal(await count('SELECT sum(visits) FROM visit_seconds WHERE second = $1', [at.toISOString()]), 1);
  assert.equal(await count("SELECT sum(visits) FROM page_minutes WHERE page_path = '/pricing'"), 1);
  // Visitors are applied shortly after the acknowledgement, from the queue the flush wrote.
  await applyAllVisitorBatches(db.pool);
  assert.equal(await count('SELECT count(*) FROM visitor_batches'), 0);
  assert.equal(await count("SELECT visits FROM visitors WHERE id = 'v-one'"), 1);
  assert.equal(await count('SELECT sum(visitors) FROM visitor_seconds WHERE second = $1', [at.toISOString()]), 1);
});

test('a visitor who comes back moves to the second of the new visit', async () => {
  const t1 = new Date(Date.now() - 120_000);
  t1.setUTCMilliseconds(0);
  const t2 = new Date(t1.getTime() + 60_000);
  const seconds = async (t: Date) => count('SELECT coalesce(sum(visitors), 0) FROM visitor_seconds WHERE second = $1', [t.toISOString()]);
  for (const t of [t1, t2]) {
    const res = await app.inject(json({ page_path: '/a', visitor_id: 'v-back', visited_at: t.toISOString() }));
    assert.equal(res.statusCode, 202);
    await applyAllVisitorBatches(db.pool);
  }
  assert.equal(await seconds(t1), 0);
  assert.equal(await seconds(t2), 1);
  // An older visit arriving late does not move the visitor back.
  const res = await app.inject(json({ page_path: '/a', visitor_id: 'v-back', visited_at: t1.toISOString() }));
  assert.equal(res.statusCode, 202);
  await applyAllVisitorBatches(db.pool);
  assert.equal(await seconds(t2), 1);
  assert.equal(await count("SELECT visits FROM visitors WHERE id = 'v-back'"), 3);
});

test('without visitor_id the visitor cookie is set, then reused', async () => {
  const first = await app.inject(json({ page_path: '/cookie' }));
  assert.equal(first.statusCode, 202);
  const setCookie = String(first.headers['set-cookie']);
  const m = /^sluice_visitor=([0-9a-f-]{36}); Path=\/; Max-Age=\d+; HttpOnly; SameSite=Lax$/.exec(setCookie);
  assert.ok(m, `unexpected Set-Cookie: ${setCookie}`);
  const id = m[1]!;
  const second = await app.inject(json({ page_path: '/cookie' }, { cookie: `other=1; sluice_visitor=${id}` }));
  assert.equal(second.statusCode, 202);
  assert.equal(second.headers['set-cookie'], undefined);
  assert.equal(await count("SELECT count(*) FROM visits WHERE page_path = '/cookie' AND visitor_id = $1", [id]), 2);
  // An explicit visitor_id wins and sets no cookie.
  const third = await app.inject(json({ page_path: '/cookie', visitor_id: 'explicit' }));
  assert.equal(third.headers['set-cookie'], undefined);
});

test('text/plain bodies (navigator.sendBeacon) are read as JSON', async () => {
  const res = await app.inject({
    method: 'POST',
    url: '/visits',
    headers: { 'content-type': 'text/plain;charset=UTF-8' },
    payload: JSON.stringify({ page_path: '/beacon', visitor_id: 'b' }),
  });
  assert.equal(res.statusCode, 202);
  assert.equal(await count("SELECT count(*) FROM visits WHERE page_path = '/beacon'"), 1);
});

test('bad payloads get 400 with a reason and store nothing', async () => {
  const before = await count('SELECT count(*) FROM visits');
  const cases: Array<[unknown, RegExp]> = [
    [{}, /page_path is required/],
    [{ page_path: 42 }, /page_path must be a string/],
    [{ page_path: 'pricing' }, /page_path must start with "\/"/],
    [{ page_path: `/${'x'.repeat(2048)}` }, /page_path is longer than 2048/],
    [{ page_path: '/a\nb' }, /page_path contains control characters/],
    [{ page_path: '/a', visitor_id: 7 }, /visitor_id must be a string/],
    [{ page_path: '/a', visitor_id: '' }, /visitor_id must not be empty/],
    [{ page_path: '/a', visitor_id: 'x'.repeat(129) }, /visitor_id is longer than 128/],
    [{ page_path: '/a', visited_at: 'yesterday' }, /visited_at must be an RFC 3339 date-time/],
    [{ page_path: '/a', visited_at: 1700000000000 }, /visited_at must be an RFC 3339 date-time/],
    [{ page_path: '/a', visited_at: '2020-01-01T00:00:00Z' }, /visited_at is more than 7 days in the past/],
    [{ page_path: '/a', visited_at: new Date(Date.now() + 3_600_000).toISOString() }, /visited_at is in the future/],
    // Dates that do not exist: Date.parse would roll them over into the next day or month.
    [{ page_path: '/a', visited_at: '2026-02-30T10:00:00Z' }, /visited_at is not a valid date/],
    [{ page_path: '/a', visited_at: '2025-11-31T00:00:00Z' }, /visited_at is not a valid date/],
    [{ page_path: '/a', visited_at: '2026-11-23T24:00:00Z' }, /visited_at is not a valid date/],
    [{ page_path: '/a', visited_at: '2026-11-24T00:00:00+24:00' }, /visited_at is not a valid date/],
    // Lone surrogates would be stored as U+FFFD (two visitors would become one); C1 controls.
    [{ page_path: '/a\ud800' }, /page_path is not well-formed Unicode/],
    [{ page_path: '/a', visitor_id: '\udfff' }, /visitor_id is not well-formed Unicode/],
    [{ page_path: '/a\u0085b' }, /page_path contains control characters/],
    [{ page_path: '/a', visitor_id: 'v\u009f' }, /visitor_id contains control characters/],
    [{ page_path: '/a', pagePath: '/b' }, /unknown field "pagePath"/],
    [[{ page_path: '/a' }], /a visit must be a JSON object/],
    ['just a string', /a visit must be a JSON object/],
  ];
  for (const [payload, reason] of cases) {
    const res = await app.inject(json(payload));
    assert.equal(res.statusCode, 400, `${JSON.stringify(payload).slice(0, 80)} -> ${res.body}`);
    assert.equal(res.json().error.code, 'invalid_input');
    assert.match(res.json().error.message, reason);
  }
  const broken = await app.inject({ method: 'POST', url: '/visits', headers: { 'content-type': 'application/json' }, payload: '{"page_path":' });
  assert.equal(broken.statusCode, 400);
  assert.equal(broken.json().error.code, 'invalid_input');
  // Invalid UTF-8 is refused, not replaced with U+FFFD, whatever the content type.
  for (const [url, type] of [['/visits', 'application/json'], ['/visits', 'text/plain'], ['/visits/batch', 'application/x-ndjson'], ['/visits/batch', 'application/json']]) {
    const json = Buffer.from(JSON.stringify({ page_path: '/utf8-XX', visitor_id: 'u' }));
    const at = json.indexOf('XX');
    json[at] = 0xff;
    json[at + 1] = 0xfe;
    const body = url === '/visits/batch' && type === 'application/json' ? Buffer.concat([Buffer.from('['), json, Buffer.from(']')]) : json;
    const res = await app.inject({ method: 'POST', url: url!, headers: { 'content-type': type! }, payload: body });
    assert.equal(res.statusCode, 400, `${url} ${type}: ${res.body}`);
    assert.match(res.json().error.message, /the body is not valid UTF-8/);
  }
  const wrongType = await app.inject({ method: 'POST', url: '/visits', headers: { 'content-type': 'application/xml' }, payload: '<visit/>' });
  assert.equal(wrongType.statusCode, 415);
  const tooBig = await app.inject(json({ page_path: `/${'x'.repeat(20_000)}` }));
  assert.equal(tooBig.statusCode, 413);
  assert.equal(tooBig.json().error.code, 'too_large');
  assert.equal(await count('SELECT count(*) FROM visits'), before);
});

test('POST /visits/batch takes NDJSON and JSON arrays, all or nothing', async () => {
  const lines = Array.from({ length: 50 }, (_, i) => JSON.stringify({ page_path: `/batch/${i % 5}`, visitor_id: `bv-${i % 7}` }));
  const nd = await app.inject({
    method: 'POST',
    url: '/visits/batch',
    headers: { 'content-type': 'application/x-ndjson' },
    payload: `${lines.join('\n')}\n`,
  });
  assert.equal(nd.statusCode, 202, nd.body);
  assert.deepEqual(nd.json(), { accepted: 50 });
  const arr = await app.inject({
    method: 'POST',
    url: '/visits/batch',
    headers: { 'content-type': 'application/json' },
    payload: JSON.stringify([{ page_path: '/batch/array', visitor_id: 'bv-a' }, { page_path: '/batch/array' }]),
  });
  assert.equal(arr.statusCode, 202, arr.body);
  assert.deepEqual(arr.json(), { accepted: 2 });
  assert.match(String(arr.headers['set-cookie']), /^sluice_visitor=/);
  assert.equal(await count("SELECT count(*) FROM visits WHERE page_path LIKE '/batch/%'"), 52);
  await applyAllVisitorBatches(db.pool);
  assert.equal(await count("SELECT count(*) FROM visitors WHERE id LIKE 'bv-%'"), 8);

  const bad = await app.inject({
    method: 'POST',
    url: '/visits/batch',
    headers: { 'content-type': 'application/x-ndjson' },
    payload: `${JSON.stringify({ page_path: '/batch/bad' })}\n{"page_path": "/batch/bad"\n`,
  });
  assert.equal(bad.statusCode, 400);
  assert.match(bad.json().error.message, /^line 2: not valid JSON/);
  const badItem = await app.inject({
    method: 'POST',
    url: '/visits/batch',
    headers: { 'content-type': 'application/json' },
    payload: JSON.stringify([{ page_path: '/batch/bad' }, { page_path: 'nope' }]),
  });
  assert.equal(badItem.statusCode, 400);
  assert.match(badItem.json().error.message, /^item 1: page_path must start with "\/"/);
  assert.equal(await count("SELECT count(*) FROM visits WHERE page_path = '/batch/bad'"), 0);

  const empty = await app.inject({ method: 'POST', url: '/visits/batch', headers: { 'content-type': 'application/x-ndjson' }, payload: '\n\n' });
  assert.equal(empty.statusCode, 400);
  assert.match(empty.json().error.message, /the batch is empty/);
  const object = await app.inject({ method: 'POST', url: '/visits/batch', headers: { 'content-type': 'application/json' }, payload: '{"page_path":"/x"}' });
  assert.equal(object.statusCode, 400);
  assert.match(object.json().error.message, /a batch must be a JSON array or NDJSON/);
});

test('visitor ids with quotes, backslashes and non-ASCII survive the visitor queue', async () => {
  const ids = ['q"uote', 'back\\slash', 'comma,{brace}', 'NULL', 'ünïcödé 訪問者'];
  const res = await app.inject({
    method: 'POST',
    url: '/visits/batch',
    headers: { 'content-type': 'application/json' },
    payload: JSON.stringify(ids.map((visitor_id) => ({ page_path: '/odd', visitor_id }))),
  });
  assert.equal(res.statusCode, 202);
  await applyAllVisitorBatches(db.pool);
  const { rows } = await db.pool.query<{ id: string }>('SELECT id FROM visitors WHERE id = ANY($1::text[]) ORDER BY id', [ids]);
  assert.deepEqual(rows.map((r) => r.id), [...ids].sort());
  const stored = await db.pool.query<{ visitor_id: string }>("SELECT visitor_id FROM visits WHERE page_path = '/odd' ORDER BY id");
  assert.deepEqual(stored.rows.map((r) => r.visitor_id), ids);
});

test('batch limits: length and body size', async () => {
  const limited = Fastify();
  limited.setErrorHandler(handleError);
  visitsRoutes(limited, { pool: db.pool }, { batchMax: 3, batchBytes: 1000 });
  try {
    const four = Array.from({ length: 4 }, () => JSON.stringify({ page_path: '/limit', visitor_id: 'l' })).join('\n');
    const long = await limited.inject({ method: 'POST', url: '/visits/batch', headers: { 'content-type': 'application/x-ndjson' }, payload: four });
    assert.equal(long.statusCode, 400);
    assert.match(long.json().error.message, /more than 3 visits/);
    const arr = await limited.inject({
      method: 'POST',
      url: '/visits/batch',
      headers: { 'content-type': 'application/json' },
      payload: `[${four.replaceAll('\n', ',')}]`,
    });
    assert.equal(arr.statusCode, 400);
    assert.match(arr.json().error.message, /the batch has 4 visits; the limit is 3/);
    const big = await limited.inject({
      method: 'POST',
      url: '/visits/batch',
      headers: { 'content-type': 'application/x-ndjson' },
      payload: JSON.stringify({ page_path: `/${'y'.repeat(2000)}` }),
    });
    assert.equal(big.statusCode, 413);
    assert.equal(await count("SELECT count(*) FROM visits WHERE page_path = '/limit'"), 0);
  } finally {
    await limited.close();
  }
});

test('concurrent requests share flushes (group commit) and all are stored', async () => {
  const flushesBefore = (await flushBatchSize.get()).values.find((v) => v.metricName === 'sluice_visits_flush_batch_size_count')!.value;
  const n = 300;
  const results = await Promise.all(
    Array.from({ length: n }, (_, i) => app.inject(json({ page_path: `/group/${i % 10}`, visitor_id: `g-${i}` }))),
  );
  assert.deepEqual(new Set(results.map((r) => r.statusCode)), new Set([202]));
  assert.equal(await count("SELECT count(*) FROM visits WHERE visitor_id LIKE 'g-%'"), n);
  const flushesAfter = (await flushBatchSize.get()).values.find((v) => v.metricName === 'sluice_visits_flush_batch_size_count')!.value;
  assert.ok(flushesAfter - flushesBefore < n / 10, `expected few flushes, got ${flushesAfter - flushesBefore} for ${n} requests`);
});

test('rollups equal the visits stored', async () => {
  await applyAllVisitorBatches(db.pool);
  assert.equal(await count('SELECT sum(visits) FROM visit_seconds'), await count('SELECT count(*) FROM visits'));
  assert.equal(await count('SELECT sum(visits) FROM visit_minutes'), await count('SELECT count(*) FROM visits'));
  assert.equal(await count('SELECT sum(visits) FROM page_minutes'), await count('SELECT count(*) FROM visits'));
  assert.equal(await count('SELECT sum(visits) FROM visitors'), await count('SELECT count(*) FROM visits'));
  assert.equal(await count('SELECT sum(visitors) FROM visitor_seconds'), await count('SELECT count(*) FROM visitors'));
});

test('a visit of an older day lands in that day\'s partition', async () => {
  const at = new Date(Date.now() - 3 * 86_400_000);
  const res = await app.inject(json({ page_path: '/old', visitor_id: 'old', visited_at: at.toISOString() }));
  assert.equal(res.statusCode, 202);
  const part = `visits_${at.toISOString().slice(0, 10).replaceAll('-', '')}`;
  assert.equal(await count(`SELECT count(*) FROM ${part} WHERE page_path = '/old'`), 1);
});

test('with an API token, visits need it, checked before the body is read', async () => {
  const secured = await buildServer({ pool: db.pool, apiToken: 's3cret' });
  try {
    const denied = await secured.inject(json({ page_path: '/auth', visitor_id: 'a' }));
    assert.equal(denied.statusCode, 401);
    assert.equal(denied.json().error.code, 'unauthorized');
    assert.equal(denied.headers['www-authenticate'], 'Bearer realm="sluice"');
    // 401, not what the body would have earned: the body is never read without the token.
    const noToken: Array<[string, string, string | Buffer]> = [
      ['/visits', 'application/json', '{'],
      ['/visits', 'application/json', JSON.stringify({ page_path: 'no-slash' })],
      ['/visits', 'application/json', JSON.stringify({ page_path: `/${'x'.repeat(20_000)}` })], // over 16 KiB
      ['/visits', 'application/xml', '<visit/>'],
      ['/visits/batch', 'application/json', Buffer.alloc(9 << 20, '[')], // over 8 MiB
      ['/visits/batch', 'application/json', JSON.stringify([{ page_path: '/auth' }])],
    ];
    for (const [url, type, payload] of noToken) {
      const res = await secured.inject({ method: 'POST', url, headers: { 'content-type': type }, payload });
      assert.equal(res.statusCode, 401, `${url} ${type} ${payload.length} bytes: ${res.body.slice(0, 200)}`);
    }
    const wrong = await secured.inject(json({ page_path: '/auth', visitor_id: 'a' }, { authorization: 'Bearer s3cret-not' }));
    assert.equal(wrong.statusCode, 401);
    const ok = await secured.inject(json({ page_path: '/auth', visitor_id: 'a' }, { authorization: 'Bearer s3cret' }));
    assert.equal(ok.statusCode, 202);
    // RFC 6750: the scheme is case-insensitive.
    const lower = await secured.inject(json({ page_path: '/auth', visitor_id: 'a' }, { authorization: 'bearer s3cret' }));
    assert.equal(lower.statusCode, 202);
    assert.equal(await count("SELECT count(*) FROM visits WHERE page_path = '/auth'"), 2);
  } finally {
    await secured.close();
  }
});

test('RFC 3339 variants are read exactly; the invalid-request metric counts requests', async () => {
  const at = new Date(Date.now() - 60_000);
  at.setUTCMilliseconds(250);
  // The same instant at +05:30, with a space for the T and 6 fractional digits.
  const local = new Date(at.getTime() + 5.5 * 3_600_000).toISOString().replace('T', ' ').replace(/\.(\d{3})Z$/, '.$1999+05:30');
  const res = await app.inject(json({ page_path: '/rfc3339', visitor_id: 'r', visited_at: local }));
  assert.equal(res.statusCode, 202, res.body);
  const { rows } = await db.pool.query("SELECT visited_at FROM visits WHERE page_path = '/rfc3339'");
  assert.equal(rows[0].visited_at.getTime(), at.getTime());

  const invalid = async () =>
    (await invalidVisitRequests.get()).values.reduce((sum, v) => sum + v.value, 0);
  const before = await invalid();
  const bad = await app.inject({
    method: 'POST',
    url: '/visits/batch',
    headers: { 'content-type': 'application/json' },
    payload: JSON.stringify([{ page_path: 'a' }, { page_path: 'b' }, { page_path: 'c' }]),
  });
  assert.equal(bad.statusCode, 400);
  assert.equal(await invalid(), before + 1, 'one request, whatever it held');
});
