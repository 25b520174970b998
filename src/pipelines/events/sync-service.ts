/**
 * The scheduled provider sync inside `sluice serve`, enabled by SLUICE_PROVIDER_URL.
 * Every SLUICE_PROVIDER_INTERVAL_S seconds (default 60) each serve process tries to claim
 * the feed's next slot in the database; one process per interval wins and syncs, so N
 * processes do not fetch N times. A circuit breaker (per process) rests a failing provider.
 * Syncs left `running` by a process that stopped are failed when the service starts and
 * before each sync (failInterruptedSyncs, one statement).
 */
import { EventEmitter } from 'node:events';
import type { FastifyInstance } from 'fastify';
import { env, intEnv } from '../../config.ts';
import { InvalidInputError } from '../../core/errors.ts';
import { maskUrlPasswords, withoutPassword } from '../../core/url-credentials.ts';
import type { Pool } from '../../db/pool.ts';
import { claimSyncSlot, failInterruptedSyncs } from '../../db/sql/events.ts';
import type { Service } from '../../http/services.ts';
import { CircuitBreaker, DEFAULT_COOLDOWN_MS, type CircuitBreakerOptions } from './circuit-breaker.ts';
import { feedUrlProblem } from './fetch-feed.ts';
import { providerBreakerOpen, providerSyncs } from './metrics.ts';
import { syncEvents, type SyncOptions, type SyncResult } from './sync.ts';

export interface SchedulerOptions extends Omit<SyncOptions, 'trigger' | 'signal'> {
  intervalS: number;
  /** The breaker's options; its first cool-down is raised to two intervals when shorter. */
  breaker?: CircuitBreakerOptions;
}

/**
 * Emits `sync` (SyncResult) after each sync, `skip` (reason) for a tick skipped by design,
 * and `unrecorded` (message) for one the database kept from running or being recorded.
 */
export class SyncScheduler extends EventEmitter<{ sync: [SyncResult]; skip: [string]; unrecorded: [string] }> {
  readonly breaker: CircuitBreaker;
  private readonly pool: Pool;
  private readonly options: SchedulerOptions;
  private readonly stopper = new AbortController();
  private timer: NodeJS.Timeout | undefined;
  private current: Promise<void> | undefined;

  constructor(pool: Pool, options: SchedulerOptions) {
    super();
    this.pool = pool;
    this.options = options;
    // The breaker is asked once per tick, and a tick comes an interval after the failed sync
    // that opened it: a cool-down of one interval or less (the default 30 s against the default
    // 60 s) has ended by then, so the "open" breaker skipped nothing and the provider was
    // fetched every tick. Two intervals skip at least one tick, then a trial runs.
    const cooldownMs = Math.max(options.breaker?.cooldownMs ?? DEFAULT_COOLDOWN_MS, 2 * options.intervalS * 1000);
    this.breaker = new CircuitBreaker({ ...options.breaker, cooldownMs });
  }

  /** Ticks now, then every interval. */
  start(): void {
    const tick = () => {
      this.current = this.tick().finally(() => {
        this.current = undefined;
        if (!this.stopper.signal.aborted) this.timer = setTimeout(tick, this.options.intervalS * 1000);
      });
    };
    tick();
  }

  /** Stops the timer and aborts a running sync (recorded as failed), then waits for it. */
  async stop(): Promise<void> {
    this.stopper.abort();
    clearTimeout(this.timer);
    await this.current;
  }

  private async tick(): Promise<void> {
    try {
      if (!this.breaker.allow()) {
        providerSyncs.inc({ status: 'skipped' });
        this.emit('skip', 'circuit open');
        return;
      }
      // Claim slightly less than the interval so this process's own next tick can claim again.
      if (!(await claimSyncSlot(this.pool, this.options.intervalS * 0.9))) {
        this.emit('skip', 'another process holds this interval');
        return;
      }
      const result = await syncEvents(this.pool, { ...this.options, trigger: 'schedule', signal: this.stopper.signal });
      if (result.status === 'completed') this.breaker.success();
      else this.breaker.failure();
      providerBreakerOpen.set(this.breaker.state === 'closed' ? 0 : 1);
      this.emit('sync', result);
    } catch (err) {
      // The database itself is unreachable: the sync did not start, or its failure could not
      // be recorded (the sweep of a later sync records it). The next tick tries again.
      this.emit('unrecorded', `sync not run or not recorded: ${maskUrlPasswords((err as Error).message)}`);
    }
  }
}

/** The feed URL of SLUICE_PROVIDER_URL (undefined when unset); InvalidInputError, password masked, when it is not http(s). */
export function providerUrlFromEnv(): string | undefined {
  const url = env('SLUICE_PROVIDER_URL');
  if (url === undefined) return undefined;
  const problem = feedUrlProblem(url);
  if (problem) throw new InvalidInputError(`SLUICE_PROVIDER_URL ${problem}`);
  return url;
}

/** The sync's settings from SLUICE_PROVIDER_* (defaults: 60 s, 120 s, 15 s, 2 retries): serve's, and `sync events`' defaults. */
export function providerSettingsFromEnv(): { intervalS: number; timeoutMs: number; idleTimeoutMs: number; retries: number } {
  return {
    intervalS: intEnv('SLUICE_PROVIDER_INTERVAL_S', 60),
    timeoutMs: intEnv('SLUICE_PROVIDER_TIMEOUT_S', 120) * 1000,
    idleTimeoutMs: intEnv('SLUICE_PROVIDER_IDLE_TIMEOUT_S', 15) * 1000,
    retries: intEnv('SLUICE_PROVIDER_RETRIES', 2),
  };
}

/** Reads the scheduler's configuration; undefined when SLUICE_PROVIDER_URL is not set. */
export function schedulerOptionsFromEnv(): SchedulerOptions | undefined {
  const url = providerUrlFromEnv();
  if (!url) return undefined;
  return { url, ...providerSettingsFromEnv() };
}

export const providerSyncService: Service = {
  name: 'provider-sync',
  async start(ctx, app: FastifyInstance) {
    // A URL that is not http(s) is refused (InvalidInputError: serve exits 2) before anything.
    const options = schedulerOptionsFromEnv();
    // Also without a URL: the process that ran them may have been restarted without one.
    await sweepInterruptedSyncs(ctx.pool, app);
    if (!options) return undefined;
    const scheduler = new SyncScheduler(ctx.pool, options);
    scheduler.on('sync', (r) => {
      if (r.interruptedSyncs) app.log.warn({ syncs: r.interruptedSyncs }, 'provider syncs of a stopped process marked failed');
      if (r.status === 'failed') app.log.warn({ sync: r.syncId, error: r.error }, 'provider sync failed');
      else app.log.info({ sync: r.syncId, seen: r.eventsSeen, changed: r.eventsChanged, rejected: r.eventsRejected, superseded: r.eventsSuperseded }, 'provider sync');
    });
    scheduler.on('skip', (reason) => app.log.debug({ reason }, 'provider sync skipped'));
    // Not routine, unlike a skip: the database was out of reach (warn is the default level).
    scheduler.on('unrecorded', (reason) => app.log.warn({ reason }, 'provider sync not run or not recorded'));
    app.log.info({ url: withoutPassword(options.url), intervalS: options.intervalS }, 'provider sync scheduled');
    scheduler.start();
    return { stop: () => scheduler.stop() };
  },
};

/** Fails the syncs of stopped processes; logs them. A database failure is logged, not thrown. */
async function sweepInterruptedSyncs(pool: Pool, app: FastifyInstance): Promise<void> {
  try {
    const ids = await failInterruptedSyncs(pool);
    if (ids.length) app.log.warn({ syncs: ids }, 'provider syncs of a stopped process marked failed');
  } catch (err) {
    app.log.warn({ error: (err as Error).message }, 'provider syncs of stopped processes not swept');
  }
}
