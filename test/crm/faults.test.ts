/**
 * The Pipedrive destination under trouble, in-process against the simulator: 429 storms
 * with Retry-After, a limit that stays spent and a Retry-After too long to wait (the run
 * ends), 5xx bursts and dropped connections of reads (retried), creates that fail
 * ambiguously, also applied later than their answer (never sent twice: unconfirmed, settled
 * by the next run), records refused for good (stored, reported, retried next run), the
 * daily request budget, pacing at the account's rate, and a missing token.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { PipedriveSimulator } from '../../src/dev/pipedrive-simulator.ts';
import { CrmRunError, runCrmSync } from '../../src/pipelines/crm/sync.ts';
import { crmState, expectedJaffle, inProcessCrm } from './helpers.ts';

const crm = inProcessCrm('faults', { retry: { max_attempts: 6, base_ms: 5, max_ms: 40 } });
const { sim, config } = crm;
const want = expectedJaffle();
const TOTAL = 2 + 2 + 2 + want.persons.size + want.deals.size;

function assertNoDuplicatesAndComplete(): void {
  const crm = crmState(sim);
  assert.equal(crm.persons.size, want.persons.size);
  assert.equal(crm.deals.size, want.deals.size);
  for (const [key, list] of crm.persons) assert.equal(list.length, 1, `person ${key} once`);
  for (const [key, list] of crm.deals) {
    assert.equal(list.length, 1, `deal ${key} once`);
    assert.equal(list[0]?.value, want.deals.get(key)?.value);
  }
}

test('a 429 storm is waited out (Retry-After honoured by every request) and the run completes', async () => {
  const times: Array<{ t: number; status: number }> = [];
  const onRequest = (r: { status: number }) => times.push({ t: performance.now(), status: r.status });
  sim.on('request', onRequest);
  sim.addFault({ status: 429, count: 8, method: 'POST', path: '/v1/deals', retryAfter: 1 });
  const o = await runCrmSync(crm.db.pool, config(), { trigger: 'cli' });
  sim.off('request', onRequest);
  assert.equal(o.status, 'completed');
  assert.equal(o.summary.retries_429, 8);
  assert.equal(o.summary.requests, TOTAL + 8);
  assert.deepEqual(o.summary.deals, { created: 99, updated: 0, unchanged: 0, failed: 0, unconfirmed: 0 });
  const first429 = times.findIndex((x) => x.status === 429);
  const firstAfter = times.slice(first429).find((x) => x.status !== 429 && x.t > (times[first429]?.t ?? 0) + 1);
  assert.ok(firstAfter, 'requests resumed');
  // Requests in flight when the first 429 came may land just after it; none later, until
  // Retry-After (1 s) has passed.
  const early = times.filter((x) => x.t > (times[first429]?.t ?? 0) + 100 && x.t < (times[first429]?.t ?? 0) + 950);
  assert.deepEqual(early, [], 'nothing was sent during the Retry-After pause');
  assertNoDuplicatesAndComplete();
});

test('5xx bursts and dropped connections of reads are retried', async () => {
  sim.addFault({ status: 503, count: 1, method: 'GET', path: '/v1/personFields' });
  sim.addFault({ status: 502, count: 3, method: 'GET', path: '/v1/persons' });
  sim.addFault({ status: 0, count: 2, method: 'GET', path: '/v1/deals' });
  const o = await runCrmSync(crm.db.pool, config(), { trigger: 'cli' });
  assert.equal(o.status, 'completed');
  assert.deepEqual(o.summary.persons, { created: 100, updated: 0, unchanged: 0, failed: 0, unconfirmed: 0 });
  assert.deepEqual(o.summary.deals, { created: 99, updated: 0, unchanged: 0, failed: 0, unconfirmed: 0 });
  assert.equal(sim.stats.faults, 6);
  assert.equal(o.summary.requests, TOTAL + 6);
  assertNoDuplicatesAndComplete();
});

test('an ambiguous create is never sent twice: unconfirmed, and the next run finds it or creates it', async () => {
  const cfg = config();
  // Deals matched by title alone: customers with a single order (Shawn, customer 2, aside).
  const titles = new Map<string, string[]>();
  for (const [key, d] of want.deals) if (d.personKey !== '2') titles.set(d.title, [...(titles.get(d.title) ?? []), key]);
  const [late, lost, applied] = [...titles].filter(([, keys]) => keys.length === 1).map(([title]) => title);
  assert.ok(late && lost && applied);
  // A gateway answers 504 and the CRM applies the create 300 ms later (after the answer,
  // so a search now would find nothing); a connection lost after sending, never applied;
  // one applied, then answered 500; a person answered 503 and applied 100 ms later.
  sim.addFault({ status: 504, count: 1, method: 'POST', path: '/v1/deals', match: { title: late }, applyAfterMs: 300 });
  sim.addFault({ status: 0, count: 1, method: 'POST', path: '/v1/deals', match: { title: lost } });
  sim.addFault({ status: 500, count: 1, method: 'POST', path: '/v1/deals', match: { title: applied }, afterCommit: true });
  sim.addFault({ status: 503, count: 1, method: 'POST', path: '/v1/persons', match: { name: 'Shawn M.' }, applyAfterMs: 100 });
  const ofShawn = [...want.deals.values()].filter((d) => d.personKey === '2').length;
  const o = await runCrmSync(crm.db.pool, cfg, { trigger: 'cli' });
  assert.equal(o.status, 'completed');
  assert.deepEqual(o.summary.persons, { created: 99, updated: 0, unchanged: 0, failed: 0, unconfirmed: 1 });
  // Shawn's deals wait for his person (no request); the three ambiguous deals are unconfirmed.
  assert.deepEqual(o.summary.deals, { created: 99 - 3 - ofShawn, updated: 0, unchanged: 0, failed: ofShawn, unconfirmed: 3 });
  // Every create was sent once, none again, and nothing was searched.
  assert.equal(sim.stats.byRoute['POST /v1/persons'], 100);
  assert.equal(sim.stats.byRoute['POST /v1/deals'], 99 - ofShawn);
  assert.deepEqual(Object.keys(sim.stats.byRoute).filter((r) => r.includes('search')), []);
  const { rows } = await crm.db.pool.query<{ kind: string; error: string }>('SELECT kind, error FROM crm_failures WHERE run_id = $1 ORDER BY kind, key', [o.runId]);
  assert.equal(rows.filter((r) => r.error.startsWith('unconfirmed: ')).length, 4, 'stored as unconfirmed');
  assert.match(rows.find((r) => r.kind === 'person')?.error ?? '', /^unconfirmed: POST \/persons: HTTP 503: .*not sent again/);
  assert.equal(rows.filter((r) => /person 2: its create is unconfirmed/.test(r.error)).length, ofShawn);

  await sim.applied(); // the late creates land (after the run's reads)
  assert.equal(sim.deals.length, 99 - ofShawn - 1, 'the late deal and the one applied before its 500 are there, the lost one not');
  assert.equal(sim.persons.length, 100);
  // Unconfirmed records make the next run work although no source changed.
  const again = await runCrmSync(crm.db.pool, cfg, { trigger: 'cli' });
  assert.equal(again.status, 'completed');
  assert.deepEqual(again.summary.persons, { created: 0, updated: 0, unchanged: 100, failed: 0, unconfirmed: 0 });
  assert.deepEqual(again.summary.deals, { created: 1 + ofShawn, updated: 0, unchanged: 99 - 1 - ofShawn, failed: 0, unconfirmed: 0 });
  assertNoDuplicatesAndComplete();
});

test('a limit that stays spent (429 after 429) ends the run, not one record after another', async () => {
  const cfg = config();
  sim.addFault({ status: 429, count: -1, method: 'POST', path: '/v1/deals', retryAfter: 0 });
  await assert.rejects(runCrmSync(crm.db.pool, cfg, { trigger: 'cli' }), (err: unknown) => {
    assert.ok(err instanceof CrmRunError);
    assert.equal(err.code, 'unavailable');
    assert.match(err.message, /POST \/deals: still rate limited after 50 waits/);
    assert.deepEqual(err.outcome.summary.persons, { created: 100, updated: 0, unchanged: 0, failed: 0, unconfirmed: 0 });
    assert.deepEqual(err.outcome.summary.deals, { created: 0, updated: 0, unchanged: 0, failed: 0, unconfirmed: 0 });
    return true;
  });
  // The requests in flight (4) each waited out 50 429s at most; then nothing more was sent.
  const posts = sim.stats.byRoute['POST /v1/deals'] ?? 0;
  assert.ok(posts >= 51 && posts <= 4 * 51, `${posts} deal creates sent`);
  const { rows } = await crm.db.pool.query(`SELECT status, error FROM crm_runs WHERE pipeline = $1`, [cfg.name]);
  assert.equal(rows[0]?.status, 'failed');
  sim.clearFaults();
  const again = await runCrmSync(crm.db.pool, cfg, { trigger: 'cli' });
  assert.deepEqual(again.summary.deals, { created: 99, updated: 0, unchanged: 0, failed: 0, unconfirmed: 0 });
  assertNoDuplicatesAndComplete();
});

test('a Retry-After longer than the cap ends the run at once: "rate limited until <time>"', async () => {
  const cfg = config();
  sim.addFault({ status: 429, count: 1, method: 'GET', path: '/v1/persons', retryAfter: 86_400 });
  const t0 = Date.now();
  await assert.rejects(runCrmSync(crm.db.pool, cfg, { trigger: 'cli' }), (err: unknown) => {
    assert.ok(err instanceof CrmRunError);
    assert.equal(err.code, 'unavailable');
    const until = /GET \/persons: rate limited until (\S+) \(the API asks to wait 86400 s, more than the 300 s a run waits/.exec(err.message)?.[1];
    assert.ok(until, err.message);
    assert.ok(Math.abs(Date.parse(until) - (t0 + 86_400_000)) < 60_000, until);
    return true;
  });
  // Recorded as failed, the pipeline's lock released: the next run goes at once.
  const { rows } = await crm.db.pool.query(`SELECT status, error FROM crm_runs WHERE pipeline = $1`, [cfg.name]);
  assert.equal(rows[0]?.status, 'failed');
  assert.match(rows[0]?.error, /rate limited until/);
  assert.equal((await runCrmSync(crm.db.pool, cfg, { trigger: 'cli' })).status, 'completed');
  // The cap is destination.retry.max_retry_after_ms: at 500 ms, a Retry-After of 1 s ends the run.
  sim.addFault({ status: 429, count: 1, method: 'GET', path: '/v1/persons', retryAfter: 1 });
  const capped = config({ retry: { max_attempts: 6, base_ms: 5, max_ms: 40, max_retry_after_ms: 500 } });
  await assert.rejects(runCrmSync(crm.db.pool, capped, { trigger: 'cli' }), /rate limited until .* \(the API asks to wait 1 s, more than the 0.5 s a run waits/);
});

test('records refused for good are stored with their error, the run goes on, the next run retries them', async () => {
  const cfg = config();
  const ofMichael = [...want.deals.entries()].filter(([, d]) => d.title === 'P. Michael').map(([k]) => k);
  assert.ok(ofMichael.length > 0);
  sim.addFault({ status: 400, count: -1, method: 'POST', path: '/v1/deals', match: { title: 'P. Michael' }, error: 'Deal title is on a blocklist' });
  sim.addFault({ status: 422, count: 1, method: 'POST', path: '/v1/persons', match: { name: 'Shawn M.' }, error: 'Unprocessable person' });
  const o = await runCrmSync(crm.db.pool, cfg, { trigger: 'cli' });
  assert.equal(o.status, 'completed');
  assert.equal(o.summary.persons.failed, 1);
  // Shawn's deals cannot be created without his person: failed too, without a request.
  const ofShawn = [...want.deals.values()].filter((d) => d.personKey === '2').length;
  assert.equal(o.summary.deals.failed, ofMichael.length + ofShawn);
  assert.equal(o.summary.deals.created, 99 - ofMichael.length - ofShawn);
  const { rows } = await crm.db.pool.query<{ kind: string; key: string; error: string }>(
    'SELECT kind, key, error FROM crm_failures WHERE run_id = $1 ORDER BY kind, key', [o.runId],
  );
  assert.equal(rows.length, 1 + ofMichael.length + ofShawn);
  assert.match(rows.find((r) => r.kind === 'person')?.error ?? '', /HTTP 422: Unprocessable person/);
  assert.match(rows.find((r) => r.key === ofMichael[0])?.error ?? '', /HTTP 400: Deal title is on a blocklist/);
  assert.ok(o.failures.length > 0, 'the outcome reports failures');

  sim.clearFaults();
  const again = await runCrmSync(crm.db.pool, cfg, { trigger: 'cli' });
  assert.equal(again.status, 'completed', 'a run that left failures is followed by a real run');
  assert.equal(again.summary.persons.created, 1);
  assert.equal(again.summary.deals.created, ofMichael.length + ofShawn);
  assertNoDuplicatesAndComplete();
});

test('the daily request budget stops the run; the next day continues without duplicates', async () => {
  const cfg = config({ daily_request_budget: 60 });
  await assert.rejects(runCrmSync(crm.db.pool, cfg, { trigger: 'cli' }), (err: unknown) => {
    assert.ok(err instanceof CrmRunError);
    assert.match(err.message, /daily request budget exhausted/);
    assert.equal(err.outcome.summary.requests, 60);
    return true;
  });
  assert.equal(sim.stats.requests, 60);
  await assert.rejects(runCrmSync(crm.db.pool, cfg, { trigger: 'cli' }), /budget of 60 is spent/);
  assert.equal(sim.stats.requests, 60, 'a spent budget sends nothing');
  // Each "next day" the budget renews and the run continues where the CRM stands.
  let days = 0;
  for (;;) {
    await crm.db.pool.query(`UPDATE crm_runs SET started_at = started_at - interval '1 day' WHERE pipeline = $1`, [cfg.name]);
    days++;
    try {
      const o = await runCrmSync(crm.db.pool, cfg, { trigger: 'cli' });
      assert.equal(o.status, 'completed');
      break;
    } catch (err) {
      assert.match((err as Error).message, /daily request budget exhausted/);
      assert.ok(days < 8, 'each day makes progress');
    }
  }
  assert.ok(days >= 3, `${days} days`);
  assertNoDuplicatesAndComplete();
  const { rows } = await crm.db.pool.query<{ n: number }>(`SELECT count(*)::int AS n FROM crm_links WHERE pipeline = $1`, [cfg.name]);
  assert.equal(rows[0]?.n, want.persons.size + want.deals.size, 'every create was journaled');
});

test('paced at the account rate: (almost) no 429 and close to the rate bound', async () => {
  const slow = new PipedriveSimulator({ rateLimit: { limit: 40, windowMs: 1000 } });
  const url = await slow.listen();
  try {
    const t0 = performance.now();
    const o = await runCrmSync(crm.db.pool, config({ base_url: url, rate_limit: '40/1s' }), { trigger: 'cli' });
    const wall = performance.now() - t0;
    assert.equal(o.status, 'completed');
    // The server counts arrivals: on a loaded machine one request may arrive late enough
    // to look early; the pacing then widens its margin. Anything more is a pacing bug.
    assert.ok(slow.stats.rateLimited <= 2, `${slow.stats.rateLimited} requests refused`);
    assert.equal(o.summary.requests, TOTAL + o.summary.retries_429);
    // Never faster than the limit allows (the first window's burst is free) ...
    const fastest = ((TOTAL - 40) / 40) * 1000;
    assert.ok(wall >= fastest * 0.95, `wall ${wall} >= ${fastest}`);
    // ... and not far above requests / rate. A bound, not a benchmark: a pacer that waits
    // twice as long as it must (a request counted twice, a window too long) fails here, while
    // a loaded machine (CI, or other suites on the same 2 cores: 1.42x at load 9) does not.
    const bound = (TOTAL / 40) * 1000;
    assert.ok(wall <= bound * 1.8 + 1000 * slow.stats.rateLimited, `wall ${wall} near bound ${bound}`);
  } finally {
    await slow.close();
  }
});

test('without PIPEDRIVE_API_TOKEN the run fails with a clear error', async () => {
  delete process.env.PIPEDRIVE_API_TOKEN;
  try {
    await assert.rejects(runCrmSync(crm.db.pool, config(), { trigger: 'cli' }), (err: unknown) => {
      assert.ok(err instanceof CrmRunError);
      assert.equal(err.code, 'invalid_input');
      assert.match(err.message, /PIPEDRIVE_API_TOKEN is not set/);
      return true;
    });
  } finally {
    process.env.PIPEDRIVE_API_TOKEN = 'faults-token';
  }
});
