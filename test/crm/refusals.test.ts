/**
 * The Pipedrive destination when the CRM refuses the token or cannot be reached,
 * in-process against the simulator: a wrong or revoked token (401) and a forbidden request
 * (403) end the run at once with their own error code (not `internal`, not one failed
 * record after another); an unreachable CRM (connection refused) counts no request and
 * spends none of the daily budget (Pipedrive counts only what it received).
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import { test } from 'node:test';
import { PipedriveSimulator } from '../../src/dev/pipedrive-simulator.ts';
import { CrmRunError, runCrmSync } from '../../src/pipelines/crm/sync.ts';
import { expectedJaffle, inProcessCrm } from './helpers.ts';

const crm = inProcessCrm('refusals', { retry: { max_attempts: 3, base_ms: 5, max_ms: 20 } });
const { sim, config } = crm;
const want = expectedJaffle();
const TOTAL = 2 + 2 + 2 + want.persons.size + want.deals.size;

/** A local port nobody listens on: bound, then closed. */
async function deadPort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const { port } = s.address() as net.AddressInfo;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

async function failuresOf(runId: number): Promise<string[]> {
  const { rows } = await crm.db.pool.query<{ error: string }>('SELECT error FROM crm_failures WHERE run_id = $1', [runId]);
  return rows.map((r) => r.error);
}

test('a rejected token (401) ends the run at once as unauthorized, naming PIPEDRIVE_API_TOKEN', async () => {
  // A CRM that expects another token answers 401 to every request, as Pipedrive does.
  const locked = new PipedriveSimulator({ token: 'the-right-token' });
  const url = await locked.listen();
  try {
    const cfg = config({ base_url: url });
    await assert.rejects(runCrmSync(crm.db.pool, cfg, { trigger: 'cli' }), (err: unknown) => {
      assert.ok(err instanceof CrmRunError);
      assert.equal(err.code, 'unauthorized');
      assert.match(err.message, /Pipedrive refused the API token .*HTTP 401: You need to be authorized to make this request\./);
      assert.match(err.message, /check PIPEDRIVE_API_TOKEN/);
      // The two field lists go together; nothing after their answers.
      assert.ok(err.outcome.summary.requests <= 2, `${err.outcome.summary.requests} requests`);
      return true;
    });
    assert.ok(locked.stats.requests <= 2, `${locked.stats.requests} requests reached the CRM`);
    const { rows } = await crm.db.pool.query(`SELECT status, error FROM crm_runs WHERE pipeline = $1`, [cfg.name]);
    assert.equal(rows[0]?.status, 'failed');
    assert.match(rows[0]?.error, /check PIPEDRIVE_API_TOKEN/);
  } finally {
    await locked.close();
  }
});

test('a token revoked mid-run (401 on every create) ends the run, not one failed record after another', async () => {
  const cfg = config();
  sim.addFault({ status: 401, count: -1, method: 'POST', path: '/v1/deals', error: 'You need to be authorized to make this request.' });
  await assert.rejects(runCrmSync(crm.db.pool, cfg, { trigger: 'cli' }), (err: unknown) => {
    assert.ok(err instanceof CrmRunError);
    assert.equal(err.code, 'unauthorized');
    assert.match(err.message, /POST \/deals: HTTP 401.*check PIPEDRIVE_API_TOKEN/);
    assert.equal(err.outcome.summary.persons.created, 100);
    assert.deepEqual(err.outcome.summary.deals, { created: 0, updated: 0, unchanged: 0, failed: 0, unconfirmed: 0 });
    return true;
  });
  // At most the creates in flight (concurrency 4) were sent, and no record is stored as failed.
  const posts = sim.stats.byRoute['POST /v1/deals'] ?? 0;
  assert.ok(posts >= 1 && posts <= 4, `${posts} deal creates sent`);
  const { rows } = await crm.db.pool.query<{ id: number }>(`SELECT id FROM crm_runs WHERE pipeline = $1`, [cfg.name]);
  assert.deepEqual(await failuresOf(rows[0]?.id as number), []);
  // Token fixed: the next run creates the deals.
  sim.clearFaults();
  const again = await runCrmSync(crm.db.pool, cfg, { trigger: 'cli' });
  assert.deepEqual(again.summary.deals, { created: 99, updated: 0, unchanged: 0, failed: 0, unconfirmed: 0 });
});

test('a forbidden request (403) ends the run the same way, as forbidden', async () => {
  const cfg = config();
  sim.addFault({ status: 403, count: -1, method: 'POST', path: '/v1/persons', error: 'You do not have permission to add persons.' });
  await assert.rejects(runCrmSync(crm.db.pool, cfg, { trigger: 'cli' }), (err: unknown) => {
    assert.ok(err instanceof CrmRunError);
    assert.equal(err.code, 'forbidden');
    assert.match(err.message, /POST \/persons: HTTP 403: You do not have permission to add persons\..*PIPEDRIVE_API_TOKEN/);
    assert.deepEqual(err.outcome.summary.persons, { created: 0, updated: 0, unchanged: 0, failed: 0, unconfirmed: 0 });
    return true;
  });
  const posts = sim.stats.byRoute['POST /v1/persons'] ?? 0;
  assert.ok(posts >= 1 && posts <= 4, `${posts} person creates sent`);
  assert.equal(sim.stats.byRoute['POST /v1/deals'] ?? 0, 0);
  const { rows } = await crm.db.pool.query<{ id: number }>(`SELECT id FROM crm_runs WHERE pipeline = $1`, [cfg.name]);
  assert.deepEqual(await failuresOf(rows[0]?.id as number), []);
});

test('an unreachable CRM (connection refused) counts no request and spends none of the daily budget', async () => {
  // Exactly what a whole first sync takes: any attempt counted against it would stop that sync.
  const budget = TOTAL;
  const cfg = config({ daily_request_budget: budget, base_url: `http://127.0.0.1:${await deadPort()}/v1` });
  await assert.rejects(runCrmSync(crm.db.pool, cfg, { trigger: 'cli' }), (err: unknown) => {
    assert.ok(err instanceof CrmRunError);
    assert.equal(err.code, 'unavailable');
    assert.match(err.message, /GET \/(person|deal)Fields: network error ECONNREFUSED after 3 attempts/);
    assert.equal(err.outcome.summary.requests, 0, 'nothing reached the CRM');
    // The field lists (sent together) were tried 3 times each, or the second fewer when the
    // first gave up: no attempt left the machine.
    const unsent = err.outcome.details.unsent as number;
    assert.ok(unsent >= 4 && unsent <= 6, `${unsent} attempts unsent`);
    return true;
  });
  const { rows } = await crm.db.pool.query(`SELECT requests, (details->>'unsent')::int AS unsent FROM crm_runs WHERE pipeline = $1`, [cfg.name]);
  assert.equal(rows[0]?.requests, 0);
  assert.ok(rows[0]?.unsent >= 4, 'recorded in the run\'s details');
  // The CRM back, the same day: the whole budget is left for the sync.
  const o = await runCrmSync(crm.db.pool, config({ daily_request_budget: budget }, cfg.name), { trigger: 'cli' });
  assert.equal(o.status, 'completed');
  assert.equal(o.summary.requests, budget);
  assert.equal(o.details.unsent, 0);
  assert.equal(sim.stats.requests, budget);
});
