/**
 * The live view: once a second (only while someone watches) this process reads one
 * snapshot from the rollups and pushes it to every subscriber of /live/stream. GET
 * /live/snapshot answers the same latest snapshot, reading a new one only when it is more
 * than a tick old (one read shared by every request that waits for it). The cost is at most
 * one small query per process per second, independent of traffic and of the number of
 * viewers or requests; every process reads the same committed rollups, so all of them show
 * the same numbers however the load balancer spreads visits and viewers.
 */
import { SluiceError } from '../../core/errors.ts';
import type { Pool } from '../../db/pool.ts';
import { liveSnapshot, type LiveRow } from '../../db/sql/visits.ts';
import { liveSubscribers } from './metrics.ts';

/** The chart's window and "current visitors" window, in seconds. */
export const WINDOW_SECONDS = 300;

export interface LiveSnapshot {
  /** When the snapshot was read (ISO, this process's clock). */
  now: string;
  window_seconds: number;
  /** Visits per second (by visited_at) for the `window_seconds` complete seconds up to `series_end`, oldest first. */
  per_second: number[];
  /** Epoch second of the last value of per_second (the last complete second). */
  series_end: number;
  /** Visits in the last complete second. */
  visits_last_second: number;
  /** Distinct visitors with a visit in the last 5 minutes. */
  current_visitors: number;
  /** Visits since midnight UTC. */
  visits_today: number;
  /** Most visited pages in the minutes overlapping the last 5 minutes (5 to 6 minutes of data). */
  top_pages: LiveRow['top_pages'];
  /** The 20 most recent visits, newest first. */
  recent: LiveRow['recent'];
  /** Receipt-to-committed lag over the last 60 s of commits. */
  lag: LiveRow['lag'];
  /** How long the snapshot query took, ms. */
  query_ms: number;
}

export interface Subscriber {
  send(data: string): void;
  end(): void;
}

export interface LiveHubOptions {
  /** Milliseconds between pushes (default 1000). */
  tickMs?: number;
  /**
   * Ticks land this many ms after each second boundary (default 250), so the second that
   * just ended has been flushed (flush interval + commit) before the chart shows it.
   */
  offsetMs?: number;
  topPages?: number;
  /** PostgreSQL cancels a snapshot read after this many ms (default 5,000), e.g. behind a stuck lock. */
  queryTimeoutMs?: number;
}

export class LiveHub {
  private readonly pool: Pool;
  private readonly tickMs: number;
  private readonly offsetMs: number;
  private readonly topPages: number;
  private readonly queryTimeoutMs: number;
  private readonly subscribers = new Set<Subscriber>();
  private timer: NodeJS.Timeout | undefined;
  /** The read in progress, shared by the ticker and every GET /live/snapshot meanwhile. */
  private reading: Promise<LiveSnapshot> | undefined;
  /** The latest snapshot read and when (Date.now()). */
  private fresh: { snapshot: LiveSnapshot; at: number } | undefined;
  private ticking = false;
  private closed = false;
  /** The last pushed message, sent at once to a new subscriber. */
  latest: string | undefined;

  constructor(pool: Pool, options: LiveHubOptions = {}) {
    this.pool = pool;
    this.tickMs = options.tickMs ?? 1000;
    this.offsetMs = options.offsetMs ?? 250;
    this.topPages = options.topPages ?? 10;
    this.queryTimeoutMs = options.queryTimeoutMs ?? 5000;
  }

  get size(): number {
    return this.subscribers.size;
  }

  /** Adds a subscriber; returns the function that removes it. The ticker runs while any exists. */
  subscribe(sub: Subscriber): () => void {
    if (this.closed) {
      sub.end();
      return () => {};
    }
    this.subscribers.add(sub);
    liveSubscribers.inc();
    if (this.timer) {
      // The ticker runs, so the last snapshot is at most a second old.
      if (this.latest) sub.send(this.latest);
    } else {
      // The first viewer after a pause should neither wait for the next tick nor see an
      // old snapshot.
      void this.tick();
      this.arm();
    }
    return () => {
      if (!this.subscribers.delete(sub)) return;
      liveSubscribers.dec();
      if (this.subscribers.size === 0) this.disarm();
    };
  }

  /**
   * What GET /live/snapshot answers: the latest snapshot while it is less than a tick old,
   * else the one being read, else a new read. However many requests come, this process
   * queries at most once per tick (a query per request let anonymous readers load the pool
   * the flushes use). Throws `unavailable` when the database cannot be read.
   */
  async current(): Promise<LiveSnapshot> {
    if (this.fresh && Date.now() - this.fresh.at < this.tickMs) return this.fresh.snapshot;
    try {
      return await this.read();
    } catch (err) {
      throw new SluiceError('unavailable', 'the live view cannot read the database', { cause: err });
    }
  }

  /** Reads a snapshot for the instant `now` (tests; the server goes through current() and the ticker). */
  async snapshot(now = new Date()): Promise<LiveSnapshot> {
    const started = performance.now();
    const row = await liveSnapshot(this.pool, now, WINDOW_SECONDS, this.topPages, this.queryTimeoutMs);
    const seriesEnd = Math.floor(now.getTime() / 1000) - 1;
    const first = seriesEnd - WINDOW_SECONDS + 1;
    const perSecond = new Array<number>(WINDOW_SECONDS).fill(0);
    for (const [sec, n] of row.per_second) {
      if (sec >= first && sec <= seriesEnd) perSecond[sec - first] = Number(n);
    }
    return {
      now: now.toISOString(),
      window_seconds: WINDOW_SECONDS,
      per_second: perSecond,
      series_end: seriesEnd,
      visits_last_second: perSecond[WINDOW_SECONDS - 1]!,
      current_visitors: Number(row.current_visitors),
      visits_today: Number(row.visits_today),
      top_pages: row.top_pages,
      recent: row.recent,
      lag: row.lag,
      query_ms: Math.round((performance.now() - started) * 10) / 10,
    };
  }

  /** Ends every stream and stops the ticker (call before the HTTP server closes). */
  close(): void {
    this.closed = true;
    this.disarm();
    for (const sub of this.subscribers) sub.end();
    liveSubscribers.dec(this.subscribers.size);
    this.subscribers.clear();
  }

  private arm(): void {
    if (this.closed || this.subscribers.size === 0) return;
    const now = Date.now();
    const next = Math.floor((now - this.offsetMs) / this.tickMs) * this.tickMs + this.tickMs + this.offsetMs;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.tick();
      this.arm();
    }, next - now);
  }

  private disarm(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  /** One read at a time: a slow database must not pile up queries. */
  private read(): Promise<LiveSnapshot> {
    this.reading ??= this.snapshot()
      .then((snapshot) => {
        this.fresh = { snapshot, at: Date.now() };
        return snapshot;
      })
      .finally(() => {
        this.reading = undefined;
      });
    return this.reading;
  }

  private async tick(): Promise<void> {
    // A slow database must not pile up reads or pushes: while the previous tick still waits,
    // skip this one. A read a GET /live/snapshot started is shared, not doubled.
    if (this.ticking) return;
    this.ticking = true;
    let message: string;
    try {
      message = JSON.stringify(await this.read());
      this.latest = message;
    } catch {
      message = JSON.stringify({ error: { code: 'unavailable', message: 'the live view cannot read the database' } });
    } finally {
      this.ticking = false;
    }
    if (this.closed) return;
    for (const sub of this.subscribers) sub.send(message);
  }
}
