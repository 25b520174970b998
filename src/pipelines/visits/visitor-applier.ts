/**
 * Applies the queued visitor batches (visitor_batches, written by each flush) to `visitors`
 * and `visitor_seconds`, shortly after the flushes, off the acknowledgement path. Every
 * `sluice serve` runs one; they share the queue (SKIP LOCKED), so batches a crashed process
 * left behind are applied by the others or by its successor.
 *
 * Waiting `delayMs` after a flush before applying merges the batches of several flushes:
 * a visitor who came back in between is updated once, not once per flush.
 */
import { intEnv } from '../../config.ts';
import type { Pool } from '../../db/pool.ts';
import { applyVisitorBatches } from '../../db/sql/visits.ts';

/** Visitors are moved out of visitor_seconds only within this horizon (see applyVisitorBatches). */
const MOVE_HORIZON_MS = 10 * 60_000;
/** Batches merged per statement (2 s of flushes of two processes, at 20 flushes/s each). */
const BATCHES_PER_APPLY = 100;

/** Applies every queued batch (tests, shutdown); returns how many batches were applied. */
export async function applyAllVisitorBatches(pool: Pool): Promise<number> {
  let total = 0;
  for (;;) {
    const { batches } = await applyVisitorBatches(pool, new Date(Date.now() - MOVE_HORIZON_MS), BATCHES_PER_APPLY);
    total += batches;
    if (batches < BATCHES_PER_APPLY) return total;
  }
}

export interface ApplierOptions {
  /** Wait after a flush before applying, to merge flushes (default SLUICE_VISITS_APPLY_MS or 2,000 ms). */
  delayMs?: number;
  /** Also look for left-over batches this often (default 5 s). */
  sweepMs?: number;
}

export class VisitorApplier {
  private readonly pool: Pool;
  private readonly delayMs: number;
  private readonly sweep: NodeJS.Timeout;
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private closed = false;

  constructor(pool: Pool, options: ApplierOptions = {}) {
    this.pool = pool;
    this.delayMs = options.delayMs ?? intEnv('SLUICE_VISITS_APPLY_MS', 2000);
    this.sweep = setInterval(() => this.poke(), options.sweepMs ?? 5000);
    this.sweep.unref();
  }

  /** A flush queued a batch: apply within `delayMs`. */
  poke(): void {
    if (this.closed || this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.run();
    }, this.delayMs);
  }

  /** Stops the timers and applies what is queued (waits for a run in progress). */
  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.sweep);
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    await this.running;
    await applyAllVisitorBatches(this.pool).catch(() => {});
  }

  private async run(): Promise<void> {
    if (this.running) {
      // A run is in progress; look again when it is done.
      await this.running;
      this.poke();
      return;
    }
    this.running = applyAllVisitorBatches(this.pool)
      .then(() => undefined)
      // The queue is durable: a failed run is retried by the next poke or sweep.
      .catch(() => undefined)
      .finally(() => {
        this.running = undefined;
      });
    await this.running;
  }
}
