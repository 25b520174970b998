/**
 * The scheduled CRM sync: inside `sluice serve` (enabled by SLUICE_CRM_CONFIG) and in the
 * foreground by `sluice sync crm` without `--once`. One run at a time; a run that outlives
 * its slot pushes the next one to the following slot (never two at once, never a burst of
 * catch-up runs). Stopping aborts the run in progress, which is then recorded as failed.
 */
import { env } from '../../config.ts';
import { InvalidInputError, errorMessage } from '../../core/errors.ts';
import type { Pool } from '../../db/pool.ts';
import type { RunningService, Service } from '../../http/services.ts';
import { loadCrmConfig, type CrmConfig } from './config.ts';
import { nextRun } from './schedule.ts';
import { runCrmSync, type RunOutcome } from './sync.ts';

export interface ScheduleOptions {
  trigger: 'schedule' | 'cli';
  /** Called after each run (completed, skipped or failed). */
  onRun?: ((o: RunOutcome) => void) | undefined;
  log?: ((line: string) => void) | undefined;
}

/** setTimeout cannot wait longer than 2^31-1 ms (~24.8 days): wait in chunks. */
const MAX_TIMER = 2 ** 31 - 1;

export function startSchedule(pool: Pool, config: CrmConfig, options: ScheduleOptions): RunningService {
  const schedule = config.schedule;
  if (!schedule) throw new InvalidInputError(`${config.file ?? 'config'}: a scheduled sync needs schedule.cron or schedule.interval`);
  const log = options.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  let timer: NodeJS.Timeout | undefined;
  let stopped = false;
  let current: Promise<void> | undefined;
  let controller: AbortController | undefined;

  const arm = (at: Date) => {
    if (stopped) return;
    const wait = Math.min(MAX_TIMER, Math.max(0, at.getTime() - Date.now()));
    timer = setTimeout(() => {
      if (Date.now() < at.getTime()) return arm(at);
      current = fire(at);
    }, wait);
  };

  const fire = async (slot: Date) => {
    controller = new AbortController();
    try {
      const o = await runCrmSync(pool, config, { trigger: options.trigger, signal: controller.signal });
      const s = o.summary;
      log(`crm sync ${config.name}: run ${o.runId} ${o.status} (deals ${s.deals.created} created, ${s.deals.updated} updated, ${s.deals.failed} failed; ${s.requests} requests)`);
      options.onRun?.(o);
    } catch (err) {
      log(`crm sync ${config.name}: ${errorMessage(err)}`);
      const outcome = (err as { outcome?: RunOutcome }).outcome;
      if (outcome) options.onRun?.(outcome);
    } finally {
      controller = undefined;
      current = undefined;
    }
    // The next slot after both the planned one and now: a long run skips missed slots.
    const now = new Date();
    let next = nextRun(schedule, slot);
    while (next <= now) next = nextRun(schedule, schedule.kind === 'interval' ? now : next);
    arm(next);
  };

  arm(nextRun(schedule, new Date()));
  log(`crm sync ${config.name}: scheduled (${schedule.kind} ${schedule.text})`);
  return {
    async stop() {
      stopped = true;
      if (timer) clearTimeout(timer);
      controller?.abort(new Error('stopped: the server is shutting down'));
      await current;
    },
  };
}

/** `sluice serve`'s service: runs when SLUICE_CRM_CONFIG names a config file. */
export const crmSyncService: Service = {
  name: 'crm-sync',
  async start(ctx) {
    const file = env('SLUICE_CRM_CONFIG');
    if (!file) return undefined;
    return startSchedule(ctx.pool, loadCrmConfig(file), { trigger: 'schedule' });
  },
};
