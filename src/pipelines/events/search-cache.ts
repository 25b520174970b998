/**
 * The /search response cache. Entries are whole response bodies keyed by the normalised
 * query and tagged with the feed version they were read at (provider_feed_state.version,
 * bumped in the transaction of every sync that changes what /search returns).
 *
 * The rule: never answer with data older than the last committed sync, even with several
 * `sluice serve` processes on one database. How a process learns the current version:
 * - `strict` (default): per request, from the database, but coalesced: at most one version
 *   query is in flight per process, and a request waits for the next one that *starts after
 *   it arrived* (so it sees every commit that preceded the request). Thousands of requests
 *   per second share a few hundred tiny queries.
 * - `notify`: LISTEN on the sync's NOTIFY; no database work per request. A commit reaches
 *   the process after the notification's delivery time (sub-millisecond on one machine):
 *   while the listening connection is down, it falls back to `strict`.
 * - `off`: every request reads the database (benchmarks, debugging).
 * Misses are coalesced too: after a sync, one query per distinct search refills the cache.
 */
import type pg from 'pg';
import { newClient } from '../../db/connection.ts';
import type { Pool } from '../../db/pool.ts';
import { FEED_CHANNEL, feedVersion } from '../../db/sql/events.ts';
import { searchCache } from './metrics.ts';

export type CacheMode = 'strict' | 'notify' | 'off';

export interface SearchCacheOptions {
  mode?: CacheMode;
  /** Connection string for the LISTEN connection (`notify` mode). */
  listenUrl?: string;
  /** Entries kept (default 10,000). */
  maxEntries?: number;
  /** Bytes of bodies kept (default 256 MiB). */
  maxBytes?: number;
}

export interface Loaded {
  version: number;
  body: Buffer;
}

interface Entry extends Loaded {
  key: string;
}

export class SearchCache {
  readonly mode: CacheMode;
  private readonly entries = new Map<string, Entry>();
  private readonly loading = new Map<string, Promise<Loaded>>();
  private bytes = 0;
  private readonly maxEntries: number;
  private readonly maxBytes: number;
  /** Highest version seen; entries below it are dropped. */
  private latest = 0;
  private running: Promise<number> | undefined;
  private waiting: Promise<number> | undefined;
  private listener: pg.Client | undefined;
  private listening = false;
  private stopped = false;
  private retryTimer: NodeJS.Timeout | undefined;

  private readonly pool: Pool;
  private readonly options: SearchCacheOptions;

  constructor(pool: Pool, options: SearchCacheOptions = {}) {
    this.pool = pool;
    this.options = options;
    this.mode = options.mode ?? 'strict';
    this.maxEntries = options.maxEntries ?? 10_000;
    this.maxBytes = options.maxBytes ?? 256 << 20;
  }

  /** Starts the LISTEN connection in `notify` mode; a no-op otherwise. */
  async start(): Promise<void> {
    if (this.mode === 'notify') await this.listen();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    this.listening = false;
    await this.listener?.end().catch(() => {});
    this.listener = undefined;
  }

  /** The response body for `key`, from the cache when it is current, else from `load`. */
  async get(key: string, load: () => Promise<Loaded>): Promise<Buffer> {
    if (this.mode === 'off') {
      searchCache.inc({ result: 'bypass' });
      return (await load()).body;
    }
    const version = this.listening ? this.latest : await this.currentVersion();
    const hit = this.entries.get(key);
    if (hit && hit.version >= version) {
      searchCache.inc({ result: 'hit' });
      return hit.body;
    }
    searchCache.inc({ result: 'miss' });
    let loaded = await this.loadOnce(key, load);
    // A load that began before this request's version was committed is too old: load again.
    if (loaded.version < version) loaded = await this.loadOnce(key, load);
    return loaded.body;
  }

  /** Entries held (tests, metrics). */
  get size(): number {
    return this.entries.size;
  }

  private loadOnce(key: string, load: () => Promise<Loaded>): Promise<Loaded> {
    const pending = this.loading.get(key);
    if (pending) return pending;
    const p = load()
      .then((loaded) => {
        this.observe(loaded.version);
        if (loaded.version >= this.latest) this.put({ key, ...loaded });
        return loaded;
      })
      .finally(() => this.loading.delete(key));
    this.loading.set(key, p);
    return p;
  }

  private put(entry: Entry): void {
    const old = this.entries.get(entry.key);
    if (old) this.bytes -= old.body.length;
    this.entries.set(entry.key, entry);
    this.bytes += entry.body.length;
    // Oldest first: Map keeps insertion order.
    for (const [k, e] of this.entries) {
      if (this.entries.size <= this.maxEntries && this.bytes <= this.maxBytes) break;
      this.entries.delete(k);
      this.bytes -= e.body.length;
    }
  }

  /** Records a version; a newer one empties the cache (every entry is now stale). */
  private observe(version: number): void {
    if (version <= this.latest) return;
    this.latest = version;
    this.entries.clear();
    this.bytes = 0;
  }

  /**
   * The committed version as of a moment after this call: joins the next version query
   * that starts after now (the one in flight may have read its snapshot before we arrived).
   */
  private currentVersion(): Promise<number> {
    if (!this.running) return this.queryVersion();
    this.waiting ??= this.running
      .then(
        () => undefined,
        () => undefined,
      )
      .then(() => {
        this.waiting = undefined;
        return this.queryVersion();
      });
    return this.waiting;
  }

  private queryVersion(): Promise<number> {
    const p: Promise<number> = feedVersion(this.pool)
      .then((v) => {
        this.observe(v);
        return v;
      })
      .finally(() => {
        if (this.running === p) this.running = undefined;
      });
    this.running = p;
    return p;
  }

  private async listen(): Promise<void> {
    if (this.stopped) return;
    const client = newClient({ connectionString: this.options.listenUrl, application_name: 'sluice-search-cache' });
    const lost = () => {
      if (this.listener !== client) return;
      // Until LISTEN is back, requests check the version themselves (strict).
      this.listening = false;
      this.listener = undefined;
      client.end().catch(() => {});
      if (!this.stopped) this.retryTimer = setTimeout(() => void this.listen(), 1000);
    };
    client.on('error', lost);
    client.on('end', lost);
    client.on('notification', (msg) => {
      const v = Number(msg.payload);
      if (Number.isFinite(v)) this.observe(v);
    });
    try {
      this.listener = client;
      await client.connect();
      await client.query(`LISTEN ${FEED_CHANNEL}`);
      // Changes committed before LISTEN took effect were not announced to us: read them.
      this.observe(await feedVersion(client));
      this.listening = !this.stopped;
    } catch {
      lost();
    }
  }
}
