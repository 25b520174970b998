/**
 * `sluice sync events`: fetch the provider feed into the store, once (`--once`) or every
 * interval until interrupted. It reads serve's settings (SLUICE_PROVIDER_URL, _INTERVAL_S,
 * _TIMEOUT_S, _IDLE_TIMEOUT_S, _RETRIES), each overridden by its flag, and checks them all
 * before it opens anything. `syncCommand(program)` is the shared `sync` parent that other
 * syncs (`sync crm`) hang under.
 */
import type { Command } from 'commander';
import { checkSettings, SETTINGS } from '../../config.ts';
import { InvalidInputError } from '../../core/errors.ts';
import { openDb } from '../../db/pool.ts';
import { syncRejects } from '../../db/sql/events.ts';
import { feedUrlProblem } from '../../pipelines/events/fetch-feed.ts';
import { providerSettingsFromEnv, providerUrlFromEnv, SyncScheduler } from '../../pipelines/events/sync-service.ts';
import { syncEvents, type SyncResult } from '../../pipelines/events/sync.ts';
import { untilSignal } from '../until-signal.ts';

/** The `sync` command, created on first use. */
export function syncCommand(program: Command): Command {
  return program.commands.find((c) => c.name() === 'sync') ?? program.command('sync').description('bring external sources into the store');
}

interface Opts {
  once?: boolean;
  url?: string;
  interval?: string;
  timeout?: string;
  idleTimeout?: string;
  retries?: string;
}

/** A flag's value, held to the rule of the setting it overrides (SETTINGS); `fallback` when not given. */
function flag(name: string, value: string | undefined, setting: string, fallback: number): number {
  if (value === undefined) return fallback;
  const problem = SETTINGS[setting]!.check(value);
  if (problem) throw new InvalidInputError(`${name} ${problem}, got ${JSON.stringify(value)}`);
  return Number(value);
}

function summary(r: SyncResult) {
  return {
    sync_id: r.syncId,
    status: r.status,
    attempts: r.attempts,
    bytes: r.bytes,
    events_seen: r.eventsSeen,
    events_new: r.eventsNew,
    events_changed: r.eventsChanged,
    events_rejected: r.eventsRejected,
    events_superseded: r.eventsSuperseded,
    duration_ms: Math.round(r.durationMs),
    ...(r.error ? { error: r.error } : {}),
  };
}

export function registerSyncEvents(program: Command): void {
  syncCommand(program)
    .command('events')
    .description('fetch the provider event feed (XML) into the store')
    .option('--once', 'sync once and exit (exit 1 if the sync failed)')
    .option('--url <url>', 'feed URL, http:// or https:// (default SLUICE_PROVIDER_URL); user:password@ in it is sent as HTTP Basic')
    .option('--interval <seconds>', 'without --once: seconds between syncs, at least 1 (default SLUICE_PROVIDER_INTERVAL_S or 60)')
    .option('--timeout <seconds>', 'whole-fetch timeout (default SLUICE_PROVIDER_TIMEOUT_S or 120)')
    .option('--idle-timeout <seconds>', 'until the headers, and between two chunks (default SLUICE_PROVIDER_IDLE_TIMEOUT_S or 15)')
    .option('--retries <n>', 'retries of a failed fetch, with backoff (default SLUICE_PROVIDER_RETRIES or 2)')
    .action(async (opts: Opts) => {
      // Everything before the database is opened: bad usage exits 2 with nothing left open.
      // The settings are checked as serve checks them, even those a flag overrides.
      checkSettings('sync-events');
      const defaults = providerSettingsFromEnv();
      let url = opts.url;
      if (url !== undefined) {
        const problem = feedUrlProblem(url);
        if (problem) throw new InvalidInputError(`--url ${problem}`);
      } else url = providerUrlFromEnv();
      if (!url) throw new InvalidInputError('give --url or set SLUICE_PROVIDER_URL');
      const intervalS = flag('--interval', opts.interval, 'SLUICE_PROVIDER_INTERVAL_S', defaults.intervalS);
      const common = {
        url,
        timeoutMs: flag('--timeout', opts.timeout, 'SLUICE_PROVIDER_TIMEOUT_S', defaults.timeoutMs / 1000) * 1000,
        idleTimeoutMs: flag('--idle-timeout', opts.idleTimeout, 'SLUICE_PROVIDER_IDLE_TIMEOUT_S', defaults.idleTimeoutMs / 1000) * 1000,
        retries: flag('--retries', opts.retries, 'SLUICE_PROVIDER_RETRIES', defaults.retries),
      };
      const pool = await openDb({ max: 2, applicationName: 'sluice-sync-events' });
      try {
        if (opts.once) {
          const r = await syncEvents(pool, { ...common, trigger: 'cli' });
          const rejects = r.eventsRejected ? (await syncRejects(pool, r.syncId)).slice(0, 20) : [];
          process.stdout.write(`${JSON.stringify({ ...summary(r), rejects: rejects.map(({ raw: _raw, ...rest }) => rest) })}\n`);
          if (r.status === 'failed') process.exitCode = 1;
          return;
        }
        const scheduler = new SyncScheduler(pool, { ...common, intervalS });
        scheduler.on('sync', (r) => process.stdout.write(`${JSON.stringify(summary(r))}\n`));
        scheduler.on('skip', (reason) => process.stderr.write(`sluice: sync skipped: ${reason}\n`));
        scheduler.on('unrecorded', (reason) => process.stderr.write(`sluice: ${reason}\n`));
        scheduler.start();
        await untilSignal();
        await scheduler.stop();
      } finally {
        await pool.end();
      }
    });
}
