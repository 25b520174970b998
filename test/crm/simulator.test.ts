/** The Pipedrive simulator speaks API v1: envelope, pagination, errors, fields, limits. */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { repoRoot } from '../../src/config.ts';
import { PipedriveSimulator } from '../../src/dev/pipedrive-simulator.ts';

let sim: PipedriveSimulator;
let api: string;
const headers = { 'x-api-token': 'sim-token', 'content-type': 'application/json' };

before(async () => {
  sim = new PipedriveSimulator({ token: 'sim-token', rateLimit: { limit: 5, windowMs: 60_000 } });
  api = await sim.listen();
});
after(async () => {
  await sim.close();
});

async function call(method: string, path: string, body?: unknown) {
  const res = await fetch(`${api}${path}`, { method, headers, ...(body ? { body: JSON.stringify(body) } : {}) });
  return { status: res.status, headers: res.headers, body: (await res.json()) as Record<string, any> };
}

test('fields, persons and deals with v1 shapes, pagination, errors and rate-limit headers', async () => {
  const field = await call('POST', '/dealFields', { name: 'OrderID', field_type: 'varchar' });
  assert.equal(field.status, 201);
  assert.match(field.body.data.key, /^[0-9a-f]{40}$/, 'custom field keys are 40-hex hashes');
  const person = await call('POST', '/persons', { name: 'Ada Lovelace' });
  assert.equal(person.body.data.first_name, 'Ada');
  const deal = await call('POST', '/deals', { title: 'Lovelace Ada', value: 12.5, person_id: person.body.data.id, [field.body.data.key]: '7' });
  assert.equal(deal.status, 201);
  assert.deepEqual({ value: deal.body.data.person_id.value, name: deal.body.data.person_id.name }, { value: person.body.data.id, name: 'Ada Lovelace' });
  assert.equal(deal.headers.get('x-ratelimit-limit'), '5');
  assert.equal(deal.headers.get('x-ratelimit-remaining'), '2');

  const page = await call('GET', '/deals?start=0&limit=1');
  assert.equal(page.body.success, true);
  assert.deepEqual(page.body.additional_data.pagination, { start: 0, limit: 1, more_items_in_collection: false });
  const missing = await call('PUT', '/deals/999', { title: 'x' });
  assert.equal(missing.status, 404);
  assert.equal(missing.body.success, false);
  assert.equal(missing.body.error, 'Deal not found');

  const limited = await call('GET', '/persons');
  assert.equal(limited.status, 429);
  assert.equal(limited.body.success, false);
  assert.ok(Number(limited.headers.get('retry-after')) >= 1);
  assert.equal(limited.headers.get('x-ratelimit-remaining'), '0');
  assert.equal(sim.stats.rateLimited, 1);

  const anon = await fetch(`${api}/persons`);
  assert.equal(anon.status, 401);
  assert.equal(((await anon.json()) as { success: boolean }).success, false);
});

test('`sluice dev pipedrive` prints its API root and serves until stopped', async () => {
  const child = spawn(path.join(repoRoot, 'bin/sluice'), ['dev', 'pipedrive', '--port', '0', '--rate-limit', '80/2s'], { cwd: repoRoot });
  const exited = once(child, 'exit');
  const [chunk] = (await once(child.stdout, 'data')) as [Buffer];
  const url = chunk.toString().trim().split('\n')[0] as string;
  assert.match(url, /^http:\/\/127\.0\.0\.1:\d+\/v1$/);
  const res = await fetch(`${url}/personFields`);
  assert.equal(res.status, 200);
  assert.equal(res.headers.get('x-ratelimit-limit'), '80');
  const stats = (await (await fetch(url.replace(/\/v1$/, '/_sim/stats'))).json()) as { requests: number };
  assert.equal(stats.requests, 1);
  child.kill('SIGTERM');
  const [code] = await exited;
  assert.equal(code, 0);
});

test('list `sort` as v1 takes it, and a fault answered at once but applied later (`applyAfterMs`)', async () => {
  const late = new PipedriveSimulator();
  const root = await late.listen();
  const req = async (method: string, path: string, body?: unknown) => {
    const res = await fetch(`${root}${path}`, { method, headers: { 'content-type': 'application/json' }, ...(body ? { body: JSON.stringify(body) } : {}) });
    return { status: res.status, body: (await res.json()) as Record<string, any> };
  };
  try {
    for (const name of ['Bea B', 'Al A', 'Cy C']) await req('POST', '/persons', { name });
    const names = async (sort: string) => ((await req('GET', `/persons?sort=${encodeURIComponent(sort)}`)).body.data as Array<{ name: string }>).map((p) => p.name);
    assert.deepEqual(await names('id ASC'), ['Bea B', 'Al A', 'Cy C']);
    assert.deepEqual(await names('id DESC'), ['Cy C', 'Al A', 'Bea B']);
    assert.deepEqual(await names('name ASC, id DESC'), ['Al A', 'Bea B', 'Cy C']);
    assert.equal((await req('GET', '/persons?sort=name%20sideways')).status, 400);

    // A gateway's 504: the client hears of a failure, the CRM applies the create later.
    late.addFault({ status: 504, count: 1, method: 'POST', path: '/v1/persons', applyAfterMs: 20 });
    const timedOut = await req('POST', '/persons', { name: 'Di D' });
    assert.equal(timedOut.status, 504);
    assert.equal(timedOut.body.success, false);
    assert.equal(late.persons.length, 3, 'not applied yet');
    await late.applied();
    assert.equal(late.persons.at(-1)?.name, 'Di D');
  } finally {
    await late.close();
  }
});
