/**
 * `sluice sync events`: fetch the provider feed into the store, once (`--once`) or every
 * interval until interrupted. `syncCommand(program)` is the shared `sync` parent that other
 * syncs (`sync crm`) hang under.
 */
import type { Command } from 'commander';
import { env } from '../../config.ts';
import { InvalidInputError } from '../../core/errors.ts';
import { openDb } from '../../db/pool.ts';
import { syncRejects } from '../../db/sql/events.ts';
import { SyncScheduler } from '../../pipelines/events/sync-service.ts';
import { syncEvents, type SyncResult } from '../../pipelines/events/sync.ts';

/** The `sync` command, created on first use. */
export function syncCommand(program: Command): Command {
  return program.commands.find((c) => c.name() === 'sync') ?? program.command('sync').description('bring external sources into the store');
}

interface Opts {
  once?: boolean;
  url?: string;
  interval: string;
  timeout: string;
  retries: string;
}

function positive(name: string, value: string): number {
  const n = Number(value);
  if (!Number.isFinite(n) || n < 0) throw new InvalidInputError(`${name} must be a non-negative number, got ${JSON.stringify(value)}`);
  return n;
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
    duration_ms: Math.round(r.durationMs),
    ...(r.error ? { error: r.error } : {}),
  };
}

export function registerSyncEvents(program: Command): void {
  syncCommand(program)
    .command('events')
    .description('fetch the provider event feed (XML) into the store')
    .option('--once', 'sync once and exit (exit 1 if the sync failed)')
    .option('--url <url>', 'feed URL (default SLUICE_PROVIDER_URL)')
    .option('--interval <seconds>', 'without --once: seconds between syncs', '60')
    .option('--timeout <seconds>', 'whole-fetch timeout', '120')
    .option('--retries <n>', 'retries of a failed fetch, with backoff', '2')
    .action(async (opts: Opts) => {
      const url = opts.url ?? env('SLUICE_PROVIDER_URL');
      if (!url) throw new InvalidInputError('give --url or set SLUICE_PROVIDER_URL');
      try {
        new URL(url);
      } catch {
        throw new InvalidInputError(`not a URL: ${url}`);
      }
      const common = { url, timeoutMs: positive('--timeout', opts.timeout) * 1000, retries: positive('--retries', opts.retries) };
      const pool = await openDb({ max: 2, applicationName: 'sluice-sync-events' });
      try {
        if (opts.once) {
          const r = await syncEvents(pool, { ...common, trigger: 'cli' });
          const rejects = r.eventsRejected ? (await syncRejects(pool, r.syncId)).slice(0, 20) : [];
          process.stdout.write(`${JSON.stringify({ ...summary(r), rejects: rejects.map(({ raw: _raw, ...rest }) => rest) })}\n`);
          if (r.status === 'failed') process.exitCode = 1;
          return;
        }
        const scheduler = new SyncScheduler(pool, { ...common, intervalS: positive('--interval', opts.interval) });
        scheduler.on('sync', (r) => process.stdout.write(`${JSON.stringify(summary(r))}\n`));
        scheduler.on('skip', (reason) => process.stderr.write(`sluice: sync skipped: ${reason}\n`));
        scheduler.on('unrecorded', (reason) => process.stderr.write(`sluice: ${reason}\n`));
        scheduler.start();
        await new Promise<void>((resolve) => {
          process.once('SIGINT', resolve);
          process.once('SIGTERM', resolve);
        });
        await scheduler.stop();
      } finally {
        await pool.end();
      }
    });
}
