/**
 * Queue workers: part jobs (staged in parallel, `concurrency` at a time per process) and
 * merge jobs (one at a time per process; a merge follows its import's parts as they are
 * staged, woken by their notifications). Used by `sluice worker` and, unless
 * SLUICE_WORKERS=0, inside `sluice serve`.
 *
 * Each loop fetches the next job itself (pg-boss `fetch`: SELECT ... FOR UPDATE SKIP LOCKED)
 * as soon as the previous one is settled. pg-boss's own `work()` waits out its polling
 * interval between jobs (2 s with NOTIFY on), which for 10,000-row parts taking ~0.1 s
 * would leave the workers idle 95% of the time. An idle loop sleeps until a job is sent
 * (NOTIFY, see jobs/boss.ts) or, as a backstop for retries that become due later and for a
 * lost LISTEN connection, until its poll interval (50 ms doubling to 1 s) runs out. While a
 * job runs, its heartbeat is sent every 4 s: a worker that dies stops sending, and the job
 * is retried elsewhere. A merge whose last attempt fails ends its import (failImport).
 */
import type { JobWithMetadata } from 'pg-boss';
import { errorMessage } from '../core/errors.ts';
import { intEnv } from '../config.ts';
import { databaseUrl, withTransaction } from '../db/pool.ts';
import { PART_DONE } from '../db/sql/intake.ts';
import { MERGE_QUEUE, PART_QUEUE, inTransaction, listenForJobs, sendJob, type Boss } from '../jobs/boss.ts';
import type { IntakeContext } from './context.ts';
import { failImport } from './fail.ts';
import { gaveUpMessage, MergeStopped, runMerge, type PartSignal } from './merge-job.ts';
import { runPart } from './part-job.ts';
import { importEnd, type ImportEnd } from './status.ts';
import { warmUp } from './warm-up.ts';

export interface RunningWorkers {
  stop(): Promise<void>;
}

const HEARTBEAT_MS = 4000;
const IDLE_MIN_MS = 50;
const IDLE_MAX_MS = 1000;

/**
 * A wait that ends at a wake-up or after a timeout. A wake-up that comes while nobody waits
 * is kept: the next wait returns at once (unless `clear`ed first).
 */
class Wakeup {
  private pending = false;
  private end: (() => void) | undefined;

  /** Resolves true when woken, false when `ms` ran out. */
  wait(ms: number): Promise<boolean> {
    if (this.pending) {
      this.pending = false;
      return Promise.resolve(true);
    }
    return new Promise((resolve) => {
      const finish = (woken: boolean) => {
        clearTimeout(timer);
        this.end = undefined;
        resolve(woken);
      };
      const timer = setTimeout(finish, ms, false);
      this.end = () => finish(true);
    });
  }

  wake(): void {
    if (this.end) this.end();
    else this.pending = true;
  }

  /** Forgets a wake-up kept while nobody waited. */
  clear(): void {
    this.pending = false;
  }
}

interface Loop {
  queue: string;
  stopped: boolean;
  done: Promise<void>;
  /**
   * Ends the idle wait at once (a job was sent, or the loop is stopping); a wake-up that
   * comes while the loop fetches makes it fetch again before sleeping.
   */
  wakeup: Wakeup;
}

/**
 * Part-staged signals for the merges running in this process: a signal that arrives while
 * its merge is busy is kept, so its next wait returns at once.
 */
class PartSignals {
  private readonly open = new Map<string, Wakeup>();

  /** Also ends the merge's waits when `stop` is aborted (the worker stopping). */
  follow(importId: string, backstopMs: number, stop: AbortSignal): PartSignal {
    const w = new Wakeup();
    this.open.set(importId, w);
    const wake = () => w.wake();
    stop.addEventListener('abort', wake);
    return {
      wait: async () => void (await w.wait(backstopMs)),
      close: () => {
        stop.removeEventListener('abort', wake);
        if (this.open.get(importId) === w) this.open.delete(importId);
      },
      stop,
    };
  }

  signal(importId: string): void {
    this.open.get(importId)?.wake();
  }

  signalAll(): void {
    for (const w of this.open.values()) w.wake();
  }
}

/**
 * Sends a fresh merge job for `importId` and completes `job` (its merge rolled back:
 * MergeStopped), in one transaction: killed in between, the process leaves either the old
 * job (retried when its heartbeat lapses) or the new one, never both (two merges would be
 * serialized and the second skip, but the old one's last attempt would fail the import).
 */
async function handOver(ctx: IntakeContext, boss: Boss, importId: string, job: JobWithMetadata<unknown>): Promise<void> {
  await withTransaction(ctx.pool, 'BEGIN', async (client) => {
    await sendJob(boss, client, MERGE_QUEUE, { importId });
    await boss.complete(MERGE_QUEUE, job, null, inTransaction(client));
  });
}

/** Backstop of a merge's wait for parts when no notification comes (listener down). */
const PART_WAIT_MS = 250;

/**
 * Runs `handle` on each job of `queue`. When it throws on the job's last attempt (pg-boss
 * will not run the job again), `lastFailed` is called first, while the job is still held
 * (heartbeat going), with the error and the number of attempts made.
 */
function startLoop<T>(
  boss: Boss,
  queue: string,
  handle: (data: T, job: JobWithMetadata<T>) => Promise<unknown>,
  lastFailed?: (data: T, err: unknown, attempts: number) => Promise<unknown>,
): Loop {
  const loop: Loop = { queue, stopped: false, done: Promise.resolve(), wakeup: new Wakeup() };
  loop.done = (async () => {
    let idle = IDLE_MIN_MS;
    while (!loop.stopped) {
      // A wake-up from before this fetch is answered by it.
      loop.wakeup.clear();
      let job: JobWithMetadata<T> | undefined;
      try {
        // With its metadata: the job's own retryLimit, the one pg-boss applies when it fails.
        job = (await boss.fetch<T>(queue, { batchSize: 1, includeMetadata: true }))[0];
      } catch {
        // The database is unreachable for now: wait and try again.
      }
      if (!job) {
        if (loop.stopped) continue;
        // Woken (during the fetch or the wait): look again at the same pace; else back off.
        if (!(await loop.wakeup.wait(idle))) idle = Math.min(IDLE_MAX_MS, idle * 2);
        continue;
      }
      idle = IDLE_MIN_MS;
      const beat = setInterval(() => void boss.touch(queue, job).catch(() => {}), HEARTBEAT_MS);
      try {
        await handle(job.data, job);
        // (A no-op for a job the handler completed itself: handOver.)
        await boss.complete(queue, job).catch(() => {});
      } catch (err) {
        // pg-boss retries with backoff up to the job's retry limit. retryCount is 0 on the
        // first attempt and goes up at every claim (an attempt whose worker died counts too),
        // and a fail() at retryCount >= retryLimit is final: the job goes to `failed`.
        if (lastFailed && job.retryCount >= job.retryLimit) await lastFailed(job.data, err, job.retryCount + 1).catch(() => {});
        await boss.fail(queue, job, { message: errorMessage(err) }).catch(() => {});
      } finally {
        clearInterval(beat);
      }
    }
  })();
  return loop;
}

export interface WorkerOptions {
  concurrency: number;
  /**
   * Told of each import whose merge this process ran to its end (completed, failed,
   * cancelled): an operator's log line. Not by a merge that finds its import completed by
   * another (each import is told of once).
   */
  onImportEnd?: (end: ImportEnd) => void;
}

export async function startWorkers(ctx: IntakeContext, options: WorkerOptions): Promise<RunningWorkers> {
  const boss = ctx.boss;
  if (!boss) throw new Error('startWorkers needs the job queue (ctx.boss)');
  // Before the first fetch: the first parts should not run in cold code (warm-up.ts).
  if (intEnv('SLUICE_WORKER_WARMUP', 1) !== 0) warmUp();
  const signals = new PartSignals();
  const stopping = new AbortController();
  const loops = [
    ...Array.from({ length: options.concurrency }, () =>
      startLoop<{ importId: string; n: number }>(boss, PART_QUEUE, (d) => runPart(ctx, d.importId, d.n)),
    ),
    startLoop<{ importId: string }>(
      boss,
      MERGE_QUEUE,
      async (d, job) => {
        try {
          const outcome = await runMerge(ctx, d.importId, (id) => signals.follow(id, PART_WAIT_MS, stopping.signal));
          if (options.onImportEnd) {
            const end = await importEnd(ctx.pool, d.importId).catch(() => undefined);
            // A skipped merge found the import ended by someone else. Completed: by another
            // merge of it (a job run twice), whose worker told of it (it was told twice).
            // Failed or cancelled: by a part, a cancel or the reaper, which tell nobody.
            if (end && (outcome !== 'skipped' || end.status !== 'completed')) options.onImportEnd(end);
          }
        } catch (err) {
          if (!(err instanceof MergeStopped)) throw err;
          // Handed over: rolled back, a fresh job for another worker (one that starts later
          // included), and this one completes. A fresh job, not a failed attempt: a stop is
          // no error, and on the job's last attempt a failure would end the import.
          await handOver(ctx, boss, d.importId, job);
        }
      },
      // Nothing else would end the import: it stayed `running`, its staging kept. When this
      // cannot be recorded (the database is down), neither can the fail() after it: the job's
      // heartbeat lapses, pg-boss fails it and the reaper ends the import (service.ts).
      (d, err, attempts) => failImport(ctx.pool, d.importId, gaveUpMessage(errorMessage(err), attempts)),
    ),
  ];
  const listener = listenForJobs(
    ctx.pool.options.connectionString ?? (await databaseUrl()),
    (payload) => {
      if (payload.startsWith(PART_DONE)) return signals.signal(payload.slice(PART_DONE.length));
      for (const l of loops) if (l.queue === payload) l.wakeup.wake();
    },
    // After a reconnect, part-staged notifications may have been missed.
    () => signals.signalAll(),
  );
  return {
    /** Stops fetching and waits for the jobs in hand to settle. */
    async stop() {
      for (const l of loops) {
        l.stopped = true;
        l.wakeup.wake();
      }
      // The parts in hand finish; a merge waiting for parts hands over (MergeStopped).
      stopping.abort();
      await Promise.all(loops.map((l) => l.done));
      await listener.close();
    },
  };
}
