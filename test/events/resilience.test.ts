/**
 * The scheduled sync against a provider that is down, slow or sends garbage, while /search
 * is queried over real HTTP: every answer is a quick 200. And the circuit breaker.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { startProviderSimulator, type ProviderSimulator, type SimulatorMode } from '../../src/dev/provider-simulator.ts';
import { buildServer } from '../../src/http/server.ts';
import { CircuitBreaker } from '../../src/pipelines/events/circuit-breaker.ts';
import { providerSyncService, SyncScheduler } from '../../src/pipelines/events/sync-service.ts';
import type { SyncResult } from '../../src/pipelines/events/sync.ts';
import { testDb, type TestDb } from '../helpers/db.ts';
import { RESPONSE_1 } from './feeds.ts';

let db: TestDb;
let app: FastifyInstance;
let sim: ProviderSimulator;
let base: string;
before(async () => {
  db = await testDb();
  app = await buildServer({ pool: db.pool });
  base = await app.listen({ port: 0, host: '127.0.0.1' });
  sim = await startProviderSimulator({ responses: [RESPONSE_1], slowMs: 30_000 }); // slower than the idle timeout below
});
after(async () => {
  await app.close();
  await sim.close();
  await db.close();
});

/** Resolves with the first `sync` result that `match` accepts. */
function nextSync(s: SyncScheduler, match: (r: SyncResult) => boolean): Promise<SyncResult> {
  return new Promise((resolve) => {
    const on = (r: SyncResult) => {
      if (!match(r)) return;
      s.off('sync', on);
      resolve(r);
    };
    s.on('sync', on);
  });
}

async function timedSearch(): Promise<{ status: number; ms: number; events: number }> {
  const t = performance.now();
  const res = await fetch(`${base}/search?starts_at=2021-02-01T00:00:00Z&ends_at=2022-07-03T00:00:00Z`);
  const body = (await res.json()) as { data: { events: unknown[] } };
  return { status: res.status, ms: performance.now() - t, events: body.data.events.length };
}

test('provider down, timing out, slow or sending garbage: /search answers 200 quickly throughout', async () => {
  const scheduler = new SyncScheduler(db.pool, {
    url: sim.url,
    intervalS: 0.05,
    // A stalled provider holds each attempt for 10 s: long enough to query /search inside it
    // even on a loaded machine (CI shares 2 cores with the test files running beside this one).
    idleTimeoutMs: 10_000,
    retries: 0,
    breaker: { failureThreshold: 1000 },
  });
  const first = nextSync(scheduler, () => true);
  scheduler.start();
  try {
    assert.equal((await first).status, 'completed');
    for (const mode of ['error', 'timeout', 'slow', 'garbage', 'empty'] satisfies SimulatorMode[]) {
      const fetchesBefore = sim.fetches;
      sim.setMode(mode);
      let failed: SyncResult | undefined;
      const waiting = nextSync(scheduler, (r) => r.status === 'failed').then((r) => (failed = r));
      const answers: Array<Awaited<ReturnType<typeof timedSearch>>> = [];
      if (mode === 'timeout' || mode === 'slow') {
        // Causal check, whatever the machine's load: once the provider holds a fetch open,
        // searches complete while that fetch still hangs.
        const deadline = Date.now() + 10_000;
        while (sim.fetches === fetchesBefore && Date.now() < deadline) await new Promise((r) => setImmediate(r));
        assert.ok(sim.fetches > fetchesBefore, `${mode}: the provider was fetched`);
        answers.push(...(await Promise.all(Array.from({ length: 16 }, timedSearch))));
        assert.equal(failed, undefined, `${mode}: the searches finished while the sync still waited on the provider`);
      }
      // Query until a sync has failed against this mode.
      while (!failed) answers.push(...(await Promise.all(Array.from({ length: 8 }, timedSearch))));
      await waiting;
      sim.setMode('ok');
      assert.ok(answers.every((a) => a.status === 200 && a.events === 3), `${mode}: every answer 200 with the 3 events`);
      // A sanity bound only (a /search waiting on the provider would take the 10 s idle
      // timeout): this machine is shared, so wall-clock times carry its load.
      const times = answers.map((a) => a.ms).sort((a, b) => a - b);
      const median = times[Math.floor(times.length / 2)]!;
      assert.ok(median < 2000, `${mode}: median /search took ${median.toFixed(1)} ms`);
    }
  } finally {
    await scheduler.stop();
  }
});

test('the circuit breaker rests a failing provider and closes again after a good trial', async () => {
  sim.setMode('error');
  const fetchesBefore = sim.fetches;
  const scheduler = new SyncScheduler(db.pool, {
    url: sim.url,
    intervalS: 0.02,
    retries: 0,
    breaker: { failureThreshold: 2, cooldownMs: 300 },
  });
  // Skips for the slot claim (another scheduler's interval) may come first: wait for this one.
  const circuitOpen = new Promise<void>((resolve) => scheduler.on('skip', (reason) => reason === 'circuit open' && resolve()));
  scheduler.start();
  try {
    await nextSync(scheduler, (r) => r.status === 'failed');
    await nextSync(scheduler, (r) => r.status === 'failed');
    await circuitOpen;
    assert.equal(scheduler.breaker.state, 'open');
    assert.equal(sim.fetches - fetchesBefore, 2, 'no fetch while the circuit is open');
    sim.setMode('ok');
    // After the cool-down one trial runs, succeeds and closes the circuit.
    const trial = await nextSync(scheduler, () => true);
    assert.equal(trial.status, 'completed');
    assert.equal(scheduler.breaker.state, 'closed');
  } finally {
    await scheduler.stop();
  }
});

test('breaker states, with a clock', () => {
  let now = 0;
  const b = new CircuitBreaker({ failureThreshold: 2, cooldownMs: 100, maxCooldownMs: 250, now: () => now });
  b.failure();
  assert.equal(b.state, 'closed');
  b.failure();
  assert.equal(b.state, 'open');
  now = 100;
  assert.equal(b.state, 'half-open');
  b.failure(); // the trial failed: the cool-down doubles
  now = 250;
  assert.equal(b.state, 'open');
  now = 300;
  assert.equal(b.state, 'half-open');
  b.success();
  assert.equal(b.state, 'closed');
});

test('an open breaker skips at least one tick, even with a cool-down shorter than the interval (the defaults: 30 s, 60 s)', async () => {
  // The defaults, on the breaker's clock: the first cool-down is two intervals, not 30 s.
  let now = 0;
  const defaults = new SyncScheduler(db.pool, { url: sim.url, intervalS: 60, breaker: { now: () => now } });
  for (let i = 0; i < 3; i++) defaults.breaker.failure();
  now = 61_000; // the next tick
  assert.equal(defaults.breaker.state, 'open');
  now = 122_000; // the one after
  assert.equal(defaults.breaker.state, 'half-open');

  // The scheduler, ticking for real against a failing provider, with a breaker clock that
  // moves one interval per tick (so the machine's load cannot change the sequence).
  sim.setMode('error');
  const fetchesBefore = sim.fetches;
  const intervalS = 0.05;
  now = 0;
  const scheduler = new SyncScheduler(db.pool, { url: sim.url, intervalS, retries: 0, breaker: { failureThreshold: 1, cooldownMs: 1, now: () => now } });
  const log: string[] = [];
  const done = new Promise<void>((resolve) => {
    const tick = (what: string) => {
      log.push(what);
      now += intervalS * 1000;
      if (log.length === 7) resolve();
    };
    scheduler.on('sync', (r) => tick(r.status));
    // A slot held by this file's earlier schedulers is no tick of this one's breaker.
    scheduler.on('skip', (reason) => reason === 'circuit open' && tick('skip'));
  });
  scheduler.start();
  try {
    await done;
  } finally {
    await scheduler.stop();
    sim.setMode('ok');
  }
  // Open after the first failure: one tick skipped (two intervals of cool-down), a trial that
  // fails doubles it: three skipped, then the next trial.
  assert.deepEqual(log.slice(0, 7), ['failed', 'skip', 'failed', 'skip', 'skip', 'skip', 'failed']);
  assert.equal(sim.fetches - fetchesBefore, 3);
});

test('the serve service runs only when SLUICE_PROVIDER_URL is set', async () => {
  delete process.env.SLUICE_PROVIDER_URL;
  assert.equal(await providerSyncService.start({ pool: db.pool }, app), undefined);
  process.env.SLUICE_PROVIDER_URL = sim.url;
  process.env.SLUICE_PROVIDER_INTERVAL_S = '3600';
  try {
    const running = await providerSyncService.start({ pool: db.pool }, app);
    assert.ok(running);
    await running.stop();
  } finally {
    delete process.env.SLUICE_PROVIDER_URL;
    delete process.env.SLUICE_PROVIDER_INTERVAL_S;
  }
});
