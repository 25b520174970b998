/**
 * The published OpenAPI document (GET /docs/openapi.json) against the server itself, on real
 * Postgres and the real job queue (no workers): every route Fastify registered is an
 * operation of the document and every operation a route; every operation but the public
 * ones (src/http/auth.ts) declares the API token, with its 401 and 403; and real answers (2xx and errors, a database out of reach, a cancelled
 * upload, the live stream's first event) have a status code their operation declares, with
 * a JSON body that conforms to the declared schema.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { openDb } from '../../src/db/pool.ts';
import { buildServer } from '../../src/http/server.ts';
import { checkSchema } from '../events/openapi-check.ts';
import { testDb, type TestDb } from '../helpers/db.ts';
import { leadsCsv, startIntake, waitFor, type Intake } from '../intake/http-helpers.ts';

type Json = Record<string, any>;

let db: TestDb;
let intake: Intake;
let app: FastifyInstance;
let base: string;
let doc: Json;
// Small parts, so a chunked upload stores some before its end (the cancelled upload below).
const savedPartRows = process.env.SLUICE_PART_ROWS;
before(async () => {
  process.env.SLUICE_PART_ROWS = '1000';
  db = await testDb();
  intake = await startIntake(db);
  app = await buildServer(intake.ctx);
  await app.listen({ port: 0, host: '127.0.0.1' });
  base = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
  doc = (await app.inject({ method: 'GET', url: '/docs/openapi.json' })).json();
});
after(async () => {
  if (savedPartRows === undefined) delete process.env.SLUICE_PART_ROWS;
  else process.env.SLUICE_PART_ROWS = savedPartRows;
  await app?.close();
  await intake?.stop();
  await db?.close();
});

/**
 * The routes of `app` as [METHOD, OpenAPI path] pairs, read from printRoutes' tree (one node
 * per line, 4 characters of indent per level, `segment (METHODS)`; a node's path is its
 * parent's plus its segment). Fastify's `:id` is written `{id}`.
 */
function registeredRoutes(server: FastifyInstance): Array<[string, string]> {
  const stack: string[] = [];
  const routes: Array<[string, string]> = [];
  for (const line of server.printRoutes({ commonPrefix: false }).split('\n')) {
    const m = /^([│ ]*)[├└]── (.*?)(?: \(([A-Z, ]+)\))?$/.exec(line);
    if (!m) continue;
    const depth = m[1]!.length / 4;
    stack.length = depth;
    const url = (stack[depth - 1] ?? '') + m[2]!;
    stack.push(url);
    for (const method of m[3]?.split(', ') ?? []) {
      assert.ok(server.hasRoute({ method, url }), `read ${method} ${url} from printRoutes, which Fastify does not have`);
      routes.push([method, url.replace(/:(\w+)/g, '{$1}')]);
    }
  }
  return routes;
}

/**
 * Left out of the comparison:
 * - HEAD: Fastify adds a HEAD route for every GET (exposeHeadRoutes); HEAD answers as the GET,
 *   without a body, and the document describes the GET.
 * - GET /docs and GET /docs/openapi.json: the document itself and its HTML rendering.
 * - GET /: the dashboard's static page (src/http/routes/dashboard.ts), a page for people
 *   and not an API; it has no static assets (inline script and style only). /live, the page
 *   of the live view, is described since its feature's document gives the whole view.
 */
const UNDOCUMENTED = new Set(['GET /', 'GET /docs', 'GET /docs/openapi.json']);

test('every route is an operation of the document with its method, and every operation a route', () => {
  const routes = registeredRoutes(app).filter(([method, p]) => method !== 'HEAD' && !UNDOCUMENTED.has(`${method} ${p}`));
  assert.ok(routes.length >= 15, `only ${routes.length} routes read: ${JSON.stringify(routes)}`);
  const missing = routes.filter(([method, p]) => !doc.paths[p]?.[method.toLowerCase()]);
  assert.deepEqual(missing, [], 'routes the document lacks');
  const have = new Set(routes.map(([method, p]) => `${method} ${p}`));
  const operations = Object.entries(doc.paths as Record<string, Json>).flatMap(([p, item]) => Object.keys(item).map((m) => `${m.toUpperCase()} ${p}`));
  assert.deepEqual(operations.filter((o) => !have.has(o)), [], 'operations without a route');
  for (const p of ['/visits', '/visits/batch', '/live', '/live/stream', '/live/snapshot', '/crm/runs', '/crm/runs/{id}/failures', '/healthz', '/metrics']) {
    assert.ok(doc.paths[p], p);
  }
});

/**
 * The public operations (src/http/auth.ts PUBLIC_ROUTES, written out here on purpose): open to
 * anyone under any Host. Every other operation, reads included, needs the token when one is
 * set (rejects, file names, CRM failures and metrics are not for everyone).
 */
const PUBLIC_OPERATIONS = new Set(['get /healthz', 'get /search', 'get /live', 'get /live/snapshot', 'get /live/stream']);

test('the document is well formed: every $ref resolves, path parameters match, every operation but the public ones declares the token', () => {
  const refs: string[] = [];
  const walk = (node: unknown): void => {
    if (Array.isArray(node)) node.forEach(walk);
    else if (node && typeof node === 'object') {
      for (const [k, v] of Object.entries(node)) {
        if (k === '$ref' && typeof v === 'string') refs.push(v);
        else walk(v);
      }
    }
  };
  walk(doc);
  for (const ref of refs) assert.ok(resolvePointer(ref), `unresolved ${ref}`);
  assert.deepEqual(doc.components.securitySchemes.apiToken, { ...doc.components.securitySchemes.apiToken, type: 'http', scheme: 'bearer' });
  for (const [p, item] of Object.entries(doc.paths as Record<string, Record<string, Json>>)) {
    const inPath = [...p.matchAll(/\{(\w+)\}/g)].map((m) => m[1]).sort();
    for (const [method, op] of Object.entries(item)) {
      const declared = ((op.parameters ?? []) as Json[]).filter((x) => x.in === 'path').map((x) => x.name).sort();
      assert.deepEqual(declared, inPath, `${method} ${p}: path parameters`);
      assert.ok(op.responses && Object.keys(op.responses).length > 0, `${method} ${p}: responses`);
      // src/http/auth.ts: the token (or, without one, a loopback Host) guards every route but the public ones.
      const needsToken = JSON.stringify(op.security ?? []) === JSON.stringify([{ apiToken: [] }]);
      assert.equal(needsToken, !PUBLIC_OPERATIONS.has(`${method} ${p}`), `${method} ${p}: security`);
      if (needsToken) {
        assert.ok(op.responses['401']?.headers?.['WWW-Authenticate'], `${method} ${p}: 401 with WWW-Authenticate`);
        // The Host check, on every protected route but the beacons (POST /visits*, from any site by design).
        if (!p.startsWith('/visits')) assert.match(op.responses['403']?.description ?? '', /loopback/, `${method} ${p}: 403 of the Host check`);
      } else {
        assert.equal(op.responses['401'], undefined, `${method} ${p}: a public operation declares no 401`);
      }
    }
  }
});

function resolvePointer(ref: string): Json | undefined {
  return ref
    .replace(/^#\//, '')
    .split('/')
    .reduce<any>((node, key) => node?.[key], doc);
}

interface Answer {
  statusCode: number;
  headers: Record<string, unknown>;
  body: string;
}

/**
 * Asserts that `res` is an answer the operation declares: its status code, a content type the
 * response lists (by media type, parameters left out), and for JSON a body that conforms to
 * the schema. Returns the declared response.
 */
function assertDeclared(method: string, p: string, res: Answer): Json {
  const op = doc.paths[p]?.[method.toLowerCase()];
  assert.ok(op, `${method} ${p} is not in the document`);
  const declared = op.responses[String(res.statusCode)] as Json | undefined;
  assert.ok(declared, `${method} ${p} answered ${res.statusCode}, which it does not declare (${res.body.slice(0, 200)})`);
  const response = (declared.$ref ? resolvePointer(declared.$ref) : declared) as Json;
  const type = String(res.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
  const content = Object.entries((response.content ?? {}) as Record<string, Json>).find(([t]) => t.split(';')[0]!.trim().toLowerCase() === type);
  assert.ok(content, `${method} ${p} ${res.statusCode}: content type ${type} not declared (${Object.keys(response.content ?? {}).join(', ')})`);
  if (type === 'application/json') {
    assert.deepEqual(checkSchema(doc, content[1].schema, JSON.parse(res.body)), [], `${method} ${p} ${res.statusCode}: ${res.body.slice(0, 300)}`);
  }
  return response;
}

async function call(method: string, url: string, p: string, options: { headers?: Record<string, string>; payload?: string } = {}) {
  const res = await app.inject({ method: method as 'GET', url, ...options });
  assertDeclared(method, p, res);
  return res;
}

test('visits: accepted, refused and unsupported answers are declared, and the live snapshot conforms', async () => {
  const json = { 'content-type': 'application/json' };
  const one = await call('POST', '/visits', '/visits', { headers: json, payload: JSON.stringify({ page_path: '/pricing?utm=x' }) });
  assert.equal(one.statusCode, 202, one.body);
  assert.ok(one.headers['set-cookie'], 'a visit without visitor_id mints the cookie');
  assert.ok(doc.paths['/visits'].post.responses['202'].headers['Set-Cookie']);
  const beacon = await call('POST', '/visits', '/visits', {
    headers: { 'content-type': 'text/plain;charset=UTF-8', cookie: one.headers['set-cookie']!.toString().split(';')[0]! },
    payload: JSON.stringify({ page_path: '/', visited_at: new Date().toISOString() }),
  });
  assert.equal(beacon.statusCode, 202, beacon.body);
  assert.equal(beacon.headers['set-cookie'], undefined);
  const bad = await call('POST', '/visits', '/visits', { headers: json, payload: JSON.stringify({ page_path: 'pricing' }) });
  assert.equal(bad.statusCode, 400);
  const unknownField = await call('POST', '/visits', '/visits', { headers: json, payload: JSON.stringify({ pagePath: '/' }) });
  assert.equal(unknownField.statusCode, 400);
  const xml = await call('POST', '/visits', '/visits', { headers: { 'content-type': 'application/xml' }, payload: '<visit/>' });
  assert.equal(xml.statusCode, 415);
  const big = await call('POST', '/visits', '/visits', { headers: json, payload: JSON.stringify({ page_path: `/${'a'.repeat(17 << 10)}` }) });
  assert.equal(big.statusCode, 413);

  const ndjson = await call('POST', '/visits/batch', '/visits/batch', {
    headers: { 'content-type': 'application/x-ndjson' },
    payload: '{"page_path":"/a","visitor_id":"v1"}\n{"page_path":"/b","visitor_id":"v2"}\n',
  });
  assert.equal(ndjson.statusCode, 202, ndjson.body);
  assert.equal(ndjson.json().accepted, 2);
  const array = await call('POST', '/visits/batch', '/visits/batch', { headers: json, payload: '[{"page_path":"/c"}]' });
  assert.equal(array.statusCode, 202, array.body);
  const badBatch = await call('POST', '/visits/batch', '/visits/batch', { headers: json, payload: '[{"page_path":"/c"},{"page_path":1}]' });
  assert.equal(badBatch.statusCode, 400);
  assert.match(badBatch.json().error.message, /^item 1: /);

  // A 202 means committed: the snapshot has these visits, so its arrays are not empty.
  const snapshot = await call('GET', '/live/snapshot', '/live/snapshot');
  assert.equal(snapshot.statusCode, 200);
  assert.ok(snapshot.json().recent.length > 0 && snapshot.json().top_pages.length > 0, snapshot.body.slice(0, 300));
  const page = await call('GET', '/live', '/live');
  assert.equal(page.statusCode, 200);
});

test('the live stream: 200 text/event-stream, and its first data event is a LiveSnapshot', async () => {
  const res = await fetch(`${base}/live/stream`, { signal: AbortSignal.timeout(30_000) });
  assertDeclared('GET', '/live/stream', { statusCode: res.status, headers: Object.fromEntries(res.headers), body: '' });
  assert.equal(res.status, 200);
  const reader = res.body!.getReader();
  const decoder = new TextDecoder();
  let text = '';
  let event: RegExpExecArray | null = null;
  try {
    // The first subscriber gets a snapshot read at once; the signal bounds the wait.
    while (!(event = /^data: (.*)\n\n/m.exec(text))) {
      const { value, done } = await reader.read();
      assert.ok(!done, `the stream ended: ${text}`);
      text += decoder.decode(value, { stream: true });
    }
  } finally {
    await reader.cancel();
  }
  assert.ok(text.startsWith('retry: 2000\n\n'), text.slice(0, 50));
  assert.deepEqual(checkSchema(doc, { $ref: '#/components/schemas/LiveSnapshot' }, JSON.parse(event![1]!)), []);
});

test('CRM runs: a run, its failures, a run that does not exist and bad parameters', async () => {
  const { rows } = await db.pool.query<{ id: number }>(
    `INSERT INTO crm_runs (pipeline, trigger, destination, config_hash, summary, sources, details)
     VALUES ('jaffle', 'cli', 'pipedrive', 'h', '{"persons":{"created":1}}', '{"customers":{"location":"https://u:secret@example.com/c.csv"}}', '{"requests":{}}')
     RETURNING id`,
  );
  const id = rows[0]!.id;
  await db.pool.query(`INSERT INTO crm_failures (run_id, kind, key, operation, error) VALUES ($1, 'deal', 'o1', 'create', 'refused')`, [id]);
  const runs = await call('GET', '/crm/runs?pipeline=jaffle', '/crm/runs');
  assert.equal(runs.statusCode, 200);
  assert.equal(runs.json().runs.length, 1);
  assert.equal(runs.json().runs[0].finished_at, null);
  const failures = await call('GET', `/crm/runs/${id}/failures?limit=5`, '/crm/runs/{id}/failures');
  assert.equal(failures.statusCode, 200);
  assert.deepEqual(failures.json().failures, [{ kind: 'deal', key: 'o1', operation: 'create', error: 'refused' }]);
  assert.equal((await call('GET', `/crm/runs/${id + 1000}/failures`, '/crm/runs/{id}/failures')).statusCode, 404);
  assert.equal((await call('GET', '/crm/runs/abc/failures', '/crm/runs/{id}/failures')).statusCode, 400);
  assert.equal((await call('GET', '/crm/runs?limit=501', '/crm/runs')).statusCode, 400);
});

test('health, metrics and the imports reads, the Host check included', async () => {
  assert.equal((await call('GET', '/healthz', '/healthz')).statusCode, 200);
  const metrics = await call('GET', '/metrics', '/metrics');
  assert.equal(metrics.statusCode, 200);
  assert.equal((await call('GET', '/imports?limit=2', '/imports')).statusCode, 200);
  assert.equal((await call('GET', '/imports?limit=0', '/imports')).statusCode, 400);
  assert.equal((await call('GET', `/imports/${randomUUID()}`, '/imports/{id}')).statusCode, 404);
  // Without a token, a read under another Host name is refused (DNS rebinding), on every protected route.
  const reads = [
    ['/imports', '/imports'], [`/imports/${randomUUID()}`, '/imports/{id}'], [`/imports/${randomUUID()}/rejects`, '/imports/{id}/rejects'],
    ['/metrics', '/metrics'], ['/crm/runs', '/crm/runs'], ['/crm/runs/1/failures', '/crm/runs/{id}/failures'],
  ] as const;
  for (const [url, p] of reads) {
    assert.equal((await call('GET', url, p, { headers: { host: 'sluice.example.com:8080' } })).statusCode, 403, url);
  }
  // Beacons come from any site by design: their Host is not checked.
  const beacon = await call('POST', '/visits', '/visits', { headers: { host: '127.attacker.example', 'content-type': 'application/json' }, payload: '{"page_path":"/"}' });
  assert.equal(beacon.statusCode, 202, beacon.body);
  // The public ones answer any Host.
  assert.equal((await call('GET', '/healthz', '/healthz', { headers: { host: 'sluice.example.com:8080' } })).statusCode, 200);
});

test('with a token: every protected operation without it is 401 (WWW-Authenticate declared), reads included; with it, any Host', async () => {
  const guarded = await buildServer({ pool: db.pool, apiToken: 'secret-token' });
  try {
    const writes: Array<[string, string]> = [
      ['/visits', '/visits'], ['/visits/batch', '/visits/batch'], ['/imports?pipeline=leads', '/imports'], [`/imports/${randomUUID()}/cancel`, '/imports/{id}/cancel'],
    ];
    const reads: Array<[string, string]> = [
      ['/imports', '/imports'], [`/imports/${randomUUID()}`, '/imports/{id}'], [`/imports/${randomUUID()}/rejects`, '/imports/{id}/rejects'],
      ['/metrics', '/metrics'], ['/crm/runs', '/crm/runs'], ['/crm/runs/1/failures', '/crm/runs/{id}/failures'],
    ];
    for (const [method, list] of [['POST', writes], ['GET', reads]] as const) {
      for (const [url, p] of list) {
        const res = await guarded.inject({ method, url, ...(method === 'POST' ? { headers: { 'content-type': 'application/json' }, payload: '{}' } : {}) });
        const declared = assertDeclared(method, p, res);
        assert.equal(res.statusCode, 401, url);
        assert.ok(declared.headers['WWW-Authenticate'] && res.headers['www-authenticate'], url);
      }
    }
    const read = await guarded.inject({ method: 'GET', url: '/imports', headers: { host: 'sluice.example.com', authorization: 'Bearer secret-token' } });
    assertDeclared('GET', '/imports', read);
    assert.equal(read.statusCode, 200);
    const open = await guarded.inject({ method: 'GET', url: '/live/snapshot', headers: { host: 'sluice.example.com' } });
    assertDeclared('GET', '/live/snapshot', open);
    assert.equal(open.statusCode, 200);
  } finally {
    await guarded.close();
  }
});

test('a database out of reach: 503 declared by the routes that read it', async () => {
  // Nothing listens on port 1: every query fails at once with ECONNREFUSED.
  const pool = await openDb({ url: 'postgres://sluice:x@127.0.0.1:1/none', migrate: false });
  const down = await buildServer({ pool });
  try {
    const urls: Array<[string, string]> = [
      ['/healthz', '/healthz'], ['/crm/runs', '/crm/runs'], ['/crm/runs/1/failures', '/crm/runs/{id}/failures'], ['/live/snapshot', '/live/snapshot'],
      ['/imports', '/imports'], [`/imports/${randomUUID()}`, '/imports/{id}'],
    ];
    for (const [url, p] of urls) {
      const res = await down.inject({ method: 'GET', url });
      assert.equal(res.statusCode, 503, `${url}: ${res.body}`);
      assertDeclared('GET', p, res);
    }
  } finally {
    await down.close();
    await pool.end();
  }
});

test('an upload cancelled while its file arrives: 409 declared; the cancel answer conforms', async () => {
  // Chunked (no Content-Length): parts of SLUICE_PART_ROWS are stored as the file arrives.
  const csv = leadsCsv(6000, 0, 'openapi');
  const cut = csv.indexOf('\n', Math.floor(csv.length / 2)) + 1;
  const req = http.request(`${base}/imports?pipeline=leads`, { method: 'POST', headers: { 'content-type': 'text/plain' } });
  const answer = new Promise<Answer>((resolve, reject) => {
    req.on('response', (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => resolve({ statusCode: res.statusCode!, headers: res.headers, body }));
    });
    req.on('error', reject);
  });
  req.write(csv.slice(0, cut));
  let ended = false;
  try {
    const id = await waitFor('a part of the upload stored', async () => {
      const { rows } = await db.pool.query<{ id: string }>(
        `SELECT i.id FROM imports i WHERE i.status = 'queued' AND EXISTS (SELECT 1 FROM import_parts p WHERE p.import_id = i.id) AND i.file_name IS NULL`,
      );
      return rows[0]?.id;
    }, 60_000);
    const cancelled = await call('POST', `/imports/${id}/cancel`, '/imports/{id}/cancel');
    assert.equal(cancelled.statusCode, 200, cancelled.body);
    req.end(csv.slice(cut));
    ended = true;
    const res = await answer;
    assertDeclared('POST', '/imports', res);
    assert.equal(res.statusCode, 409, res.body);
    assert.equal(JSON.parse(res.body).error.code, 'conflict');
  } finally {
    if (!ended) req.destroy();
  }
});
