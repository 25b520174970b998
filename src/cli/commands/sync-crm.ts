/**
 * `sluice sync crm --config <file> [--once] [--force] [--json]`: the CRM sync (issue 6).
 * With --once: one run, then exit (0 completed or skipped, 1 failed, 2 bad config); with
 * --json every outcome is one JSON line on stdout: the run's summary, or, when no run could
 * be recorded (a bad config, the pipeline locked, the database out of reach), the same shape
 * with `run_id: null`, `status: "failed"`, `error` and `code`. Without --once: runs on the
 * config's schedule until interrupted.
 */
import type { Command } from 'commander';
import { InvalidInputError, SluiceError } from '../../core/errors.ts';
import { openDb } from '../../db/pool.ts';
import { loadCrmConfig } from '../../pipelines/crm/config.ts';
import { UNCONFIRMED } from '../../pipelines/crm/pipedrive-destination.ts';
import { startSchedule } from '../../pipelines/crm/service.ts';
import { CrmRunError, runCrmSync, runErrorMessage, type RunOutcome } from '../../pipelines/crm/sync.ts';
import { zeroCounts, type Counts } from '../../pipelines/crm/types.ts';
import { syncCommand } from './sync-events.ts';
import { untilSignal } from '../until-signal.ts';

interface Opts {
  config?: string;
  once?: boolean;
  force?: boolean;
  json?: boolean;
}

function line(c: Counts): string {
  return `${c.created} created, ${c.updated} updated, ${c.unchanged} unchanged, ${c.failed} failed${c.unconfirmed ? `, ${c.unconfirmed} unconfirmed (settled by the next run)` : ''}`;
}

function errorCode(err: unknown): string {
  return err instanceof SluiceError ? err.code : 'internal';
}

/**
 * With --json, an outcome without a run (nothing recorded: a bad config, the pipeline
 * locked by another process, the database out of reach): the summary's shape, all zero,
 * `run_id` null.
 */
function reportNoRun(err: unknown, startedAt: number): void {
  const summary = { persons: zeroCounts(), deals: zeroCounts(), requests: 0, retries_429: 0, duration_ms: Math.round(performance.now() - startedAt) };
  process.stdout.write(`${JSON.stringify({ ...summary, run_id: null, status: 'failed', error: runErrorMessage(err), code: errorCode(err) })}\n`);
}

function report(o: RunOutcome, json: boolean): void {
  if (json) {
    const error = o.error ? { error: o.error, code: o.code ?? 'internal' } : {};
    process.stdout.write(`${JSON.stringify({ ...o.summary, run_id: o.runId, status: o.status, ...error })}\n`);
  } else {
    const s = o.summary;
    const sources = Object.entries(o.sources)
      .map(([k, v]) => `${k} ${v.reason}${v.rejected ? ` (${v.rejected} rejected)` : ''}`)
      .join(', ');
    process.stdout.write(
      `run ${o.runId} ${o.status} in ${(s.duration_ms / 1000).toFixed(1)} s\n` +
        `  sources:  ${sources}\n  persons:  ${line(s.persons)}\n  deals:    ${line(s.deals)}\n` +
        `  requests: ${s.requests} (429 retries: ${s.retries_429})\n`,
    );
  }
  // Unconfirmed creates are stored with the failures, their error starting "unconfirmed: ".
  for (const f of o.failures) {
    const unconfirmed = f.error.startsWith(UNCONFIRMED);
    process.stderr.write(`${unconfirmed ? 'unconfirmed' : 'failed'} ${f.kind} ${f.key} (${f.operation}): ${unconfirmed ? f.error.slice(UNCONFIRMED.length) : f.error}\n`);
  }
  const s = o.summary;
  const failed = s.persons.failed + s.deals.failed + s.persons.unconfirmed + s.deals.unconfirmed;
  if (failed > o.failures.length) process.stderr.write(`... ${failed - o.failures.length} more in crm_failures (run_id ${o.runId})\n`);
}

export function registerSyncCrm(program: Command): void {
  syncCommand(program)
    .command('crm')
    .description('sync customers, orders and payments (CSV over HTTP or paths) into Pipedrive or Postgres')
    // Checked in the action, not by commander: with --json a missing one is a JSON line too.
    .option('--config <file>', 'pipeline config (YAML), see examples/crm-sync.yaml (required)')
    .option('--once', 'run once and exit (default: run on the config schedule until interrupted)')
    .option('--force', 'with --once: process even when no source changed since the last completed run')
    .option('--json', 'print the run summary as one JSON line on stdout')
    .action(async (opts: Opts) => {
      const json = opts.json === true;
      const startedAt = performance.now();
      /** Set once a run's outcome (or a no-run JSON line) has been printed. */
      let reported = false;
      try {
        if (!opts.config) throw new InvalidInputError('--config is required');
        if (opts.force && !opts.once) throw new InvalidInputError('--force applies to --once runs');
        const config = loadCrmConfig(opts.config);
        const pool = await openDb({ max: 6, applicationName: 'sluice sync crm' });
        try {
          if (opts.once) {
            try {
              report(await runCrmSync(pool, config, { trigger: 'cli', force: opts.force }), json);
              reported = true;
            } catch (err) {
              if (err instanceof CrmRunError) {
                report(err.outcome, json);
                reported = true;
              }
              throw err;
            }
            return;
          }
          // Reads the pipeline's last run first: the schedule goes on from it across restarts.
          const service = await startSchedule(pool, config, {
            trigger: 'cli',
            onRun: (o) => report(o, json),
            // A run that could not start (the pipeline locked...): with --json, its line too.
            onRunError: (err) => {
              if (json) reportNoRun(err, performance.now());
            },
          });
          await untilSignal();
          await service.stop();
        } finally {
          await pool.end();
        }
      } catch (err) {
        // With --json, every outcome prints one JSON line, a run that could not start too.
        if (json && !reported) reportNoRun(err, startedAt);
        throw err; // printed by main.ts, URL passwords masked
      }
    });
}
