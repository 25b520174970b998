/**
 * A Pipedrive REST API v1 client that stays within the account's limits
 * (https://pipedrive.readme.io/docs/core-api-concepts-rate-limiting, .../responses,
 * .../pagination):
 * - paces itself with a rolling window like the API's (80 requests per 2 s on the plan the
 *   issue names), counted conservatively, so it does not provoke 429s and runs at the
 *   allowed rate;
 * - honours `429` + `Retry-After`, and `x-ratelimit-remaining: 0` + `x-ratelimit-reset` when
 *   the server's count disagrees with its own (another client sharing the token);
 * - bounds requests in flight, retries 5xx and network errors with full-jitter backoff,
 *   and refuses to send past a daily request budget;
 * - counts only requests that may have reached the API (the API counts what it received):
 *   an attempt that surely never left (connection refused, DNS failure) is `unsent`, takes
 *   nothing from the budget and frees its window slot at once;
 * - ends every request at once (`AccessRefusedError`) when the API refuses the token (401)
 *   or its user (403): every other request would be refused alike;
 * - never follows a redirect (`MisdirectedError`, every request at once): the token travels
 *   in `x-api-token`, a header fetch would forward to any host a redirect names (it drops
 *   only `authorization` across origins), and the API itself never redirects: a 3xx means
 *   `base_url` points somewhere else (a proxy, a login page, http:// answered by a
 *   redirect to https://);
 * - gives up, for every request at once (`RateLimitedError`), when the API keeps refusing
 *   (50 429s in a row for one request) or asks to wait longer than `maxRetryAfterMs`: the
 *   account's limit is spent for longer than a run should hold its pipeline.
 * A POST (a create) is never sent twice: after an ambiguous failure (5xx, timeout, a
 * connection lost after sending) it may still be applied, even seconds later (a gateway's
 * 504), and v1 has no idempotency key, so no search now can tell. It fails with
 * `UnconfirmedWriteError` and the caller leaves the answer to its next full read of the CRM.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { SluiceError, type ErrorCode } from '../core/errors.ts';
import { basicAuth, withoutPassword } from '../core/url-credentials.ts';

export interface RateLimit {
  limit: number;
  windowMs: number;
}

export interface RetryPolicy {
  /** 5xx and network errors of GET and PUT: attempts in all (POSTs are never repeated). */
  maxAttempts: number;
  baseMs: number;
  maxMs: number;
  /** The longest pause a 429's Retry-After (or x-ratelimit-reset) may ask for; longer ends the run. */
  maxRetryAfterMs: number;
}

export interface PipedriveClientOptions {
  /** API root including `/v1`, e.g. https://api.pipedrive.com/v1 (a user:password in it, e.g. for a proxy, goes as Basic auth). */
  baseUrl: string;
  token: string;
  concurrency: number;
  rateLimit: RateLimit;
  retry: RetryPolicy;
  timeoutMs: number;
  /** Requests left today; undefined = no budget. Decremented per request sent (not per unsent attempt). */
  budget?: { remaining: number } | undefined;
  signal?: AbortSignal | undefined;
  /**
   * Called before each attempt that may be sent (retries too), before it waits for its
   * slots; the attempt goes only once this resolves, and fails with its error when it
   * rejects. A run counts its requests into Postgres here, so a killed run loses none.
   */
  beforeSend?: (() => Promise<void> | undefined) | undefined;
}

export interface ClientStats {
  /** Requests that may have reached the API (answered, or lost on the way): what it counts. */
  requests: number;
  /** Attempts that surely never left (connection refused, DNS failure): not in `requests`. */
  unsent: number;
  retries429: number;
  retries5xx: number;
  retriesNetwork: number;
  /** Requests per "METHOD /path" with numeric ids replaced by `:id`. */
  byRoute: Record<string, number>;
}

/**
 * A request the API refused for good (4xx other than 429), or that kept failing. Code
 * `unavailable` when the API could not be reached or kept failing (network, 5xx), else
 * `internal` (a request the API would not take).
 */
export class PipedriveError extends SluiceError {
  readonly status: number | undefined;
  constructor(message: string, status: number | undefined, options?: { cause?: unknown }, code?: ErrorCode) {
    super(code ?? (status === undefined || status >= 500 ? 'unavailable' : 'internal'), message, options);
    this.status = status;
  }
}

/**
 * The API refused the token (401: wrong, revoked or expired) or what its user may do (403):
 * every request would be refused alike, so every request of the client fails with it.
 */
export class AccessRefusedError extends PipedriveError {
  constructor(message: string, status: 401 | 403) {
    super(message, status, undefined, status === 401 ? 'unauthorized' : 'forbidden');
  }
}

/**
 * The API answered a redirect (3xx): `base_url` does not point at the API. Not followed (the
 * token would go with it), and every request of the client fails with it alike: like a spent
 * rate limit, it ends the run (not a PipedriveError, which fails one record).
 */
export class MisdirectedError extends SluiceError {
  readonly status: number;
  constructor(message: string, status: number) {
    super('invalid_input', message);
    this.status = status;
  }
}

/**
 * A create that failed ambiguously: it may have been applied (or be applied later), so it
 * is not sent again. The next full read of the CRM finds it, or the next run creates it.
 */
export class UnconfirmedWriteError extends PipedriveError {
  constructor(message: string, status: number | undefined, options?: { cause?: unknown }) {
    super(message, status, options);
  }
}

/** The API's limit stays spent (429s without end, or a Retry-After beyond the cap): the run ends. */
export class RateLimitedError extends SluiceError {
  constructor(message: string) {
    super('unavailable', message);
  }
}

/** 429s one request waits out before the limit is taken as spent for good. */
const MAX_429_WAITS = 50;

/** The daily request budget is spent: the run stops and resumes on the next day. */
export class BudgetExhaustedError extends SluiceError {
  constructor(message: string) {
    super('unavailable', message);
  }
}

export interface Pagination {
  start?: number;
  limit?: number;
  more_items_in_collection?: boolean;
  next_start?: number;
}

interface Envelope<T> {
  success?: boolean;
  data?: T;
  error?: string;
  error_info?: string;
  additional_data?: { pagination?: Pagination } | null;
}

export interface CallOptions {
  query?: Record<string, string | number> | undefined;
  body?: unknown;
}

/** A small extra spacing on top of the window (clock granularity, timer lateness). */
function baseMarginMs(windowMs: number): number {
  return Math.max(5, windowMs * 0.005);
}

/**
 * The rolling window as the server sees it, counted conservatively: a request occupies a
 * slot from before it is sent until one window after its response arrived. The server
 * counted it at some moment in between, so a slot never frees early, whatever delayed the
 * request on its way (a new connection, a busy event loop, a noisy machine); the price is
 * one round trip per window of throughput. A 429 the pacing did not expect (clock drift)
 * still widens the margin, which relaxes again while all is well.
 */
class SlidingWindow {
  /** Response times, nondecreasing; entries before `head` have left the window. */
  private done: number[] = [];
  private head = 0;
  private inFlight = 0;
  private pausedUntil = 0;
  /** Set once the client gave up: every waiting and later request fails with it. */
  private failure: Error | undefined;
  private tail: Promise<void> = Promise.resolve();
  private wake: (() => void) | undefined;
  private calm = 0;
  limit: number;
  readonly windowMs: number;
  marginMs: number;

  constructor(rate: RateLimit) {
    this.limit = rate.limit;
    this.windowMs = rate.windowMs;
    this.marginMs = baseMarginMs(rate.windowMs);
  }

  private prune(now: number): void {
    const edge = now - this.windowMs - this.marginMs;
    while (this.head < this.done.length && (this.done[this.head] as number) <= edge) this.head++;
    if (this.head > 4096 && this.head * 2 > this.done.length) {
      this.done = this.done.slice(this.head);
      this.head = 0;
    }
  }

  /** Slots taken now: in flight, or answered within the last window. */
  inWindow(now: number): number {
    this.prune(now);
    return this.done.length - this.head + this.inFlight;
  }

  lower(limit: number): void {
    if (limit >= 1 && limit < this.limit) this.limit = limit;
  }

  pause(ms: number): void {
    this.pausedUntil = Math.max(this.pausedUntil, performance.now() + ms);
  }

  /** Ends every wait and every later acquire with `err`. */
  fail(err: Error): void {
    this.failure ??= err;
    this.wake?.();
  }

  /** A 429 we did not see coming: space sends wider (up to a quarter window). */
  widen(): void {
    this.marginMs = Math.min(this.windowMs * 0.25, this.marginMs * 2 + 5);
    this.calm = 0;
  }

  /** After ten windows' worth of answers without a 429, narrow the margin again. */
  relax(): void {
    if (++this.calm < this.limit * 10) return;
    this.calm = 0;
    this.marginMs = Math.max(baseMarginMs(this.windowMs), this.marginMs * 0.8);
  }

  /** Waits for a free slot and takes it (FIFO). MUST be paired with `release()`. */
  async acquire(signal?: AbortSignal): Promise<void> {
    const prev = this.tail;
    let done!: () => void;
    this.tail = new Promise((r) => (done = r));
    await prev;
    try {
      for (;;) {
        signal?.throwIfAborted();
        if (this.failure) throw this.failure;
        const now = performance.now();
        const used = this.inWindow(now);
        let wait = this.pausedUntil - now;
        if (used >= this.limit) {
          // The (used - limit)-th answered request must leave the window; if every slot is
          // in flight, the next answer tells when.
          const i = this.head + used - this.limit;
          wait = Math.max(wait, i < this.done.length ? (this.done[i] as number) + this.windowMs + this.marginMs - now : Infinity);
        }
        if (wait <= 0) {
          this.inFlight++;
          return;
        }
        await this.sleep(wait, signal);
      }
    } finally {
      done();
    }
  }

  /**
   * Frees the slot one window after `answeredAt` (when the response's headers arrived: the
   * server had counted the request by then; reading and parsing the body is not its time).
   * Answers come back out of order: the list stays sorted. `reached: false`: the request
   * surely never left, the slot frees at once.
   */
  release(answeredAt = performance.now(), reached = true): void {
    this.inFlight--;
    if (!reached) {
      // Never reached the server (connection refused, DNS): it counted nothing, free now.
      this.wake?.();
      return;
    }
    let i = this.done.length;
    while (i > this.head && (this.done[i - 1] as number) > answeredAt) i--;
    if (i === this.done.length) this.done.push(answeredAt);
    else this.done.splice(i, 0, answeredAt);
    this.wake?.();
  }

  private sleep(ms: number, signal?: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      const finish = () => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', finish);
        this.wake = undefined;
        resolve();
      };
      const timer = ms === Infinity ? undefined : setTimeout(finish, Math.ceil(ms));
      this.wake = finish;
      signal?.addEventListener('abort', finish, { once: true });
    });
  }
}

/** Counting semaphore for requests in flight. */
class Slots {
  private free: number;
  private waiting: Array<() => void> = [];
  constructor(n: number) {
    this.free = n;
  }
  async take(): Promise<void> {
    if (this.free > 0) {
      this.free--;
      return;
    }
    await new Promise<void>((r) => this.waiting.push(r));
  }
  give(): void {
    const w = this.waiting.shift();
    if (w) w();
    else this.free++;
  }
}

/** Seconds (or an HTTP date) to milliseconds; undefined when absent or unreadable. */
function retryAfterMs(v: string | null): number | undefined {
  if (!v) return undefined;
  const n = Number(v);
  if (Number.isFinite(n)) return Math.max(0, n * 1000);
  const t = Date.parse(v);
  return Number.isNaN(t) ? undefined : Math.max(0, t - Date.now());
}

/** Milliseconds as seconds for messages: 86400, 300, 0.5. */
function seconds(ms: number): number {
  return Number((ms / 1000).toFixed(1));
}

/** Errors where the request surely never reached the server. */
const NOT_SENT = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'ENETUNREACH', 'EHOSTUNREACH']);

function networkCode(err: unknown): string {
  const e = err as { name?: string; cause?: { code?: string }; code?: string };
  if (e.name === 'TimeoutError') return 'ETIMEDOUT';
  return e.cause?.code ?? e.code ?? 'ENETWORK';
}

function routeOf(method: string, path: string): string {
  return `${method} ${path.replace(/\/\d+(?=\/|$)/g, '/:id')}`;
}

export class PipedriveClient {
  readonly stats: ClientStats = { requests: 0, unsent: 0, retries429: 0, retries5xx: 0, retriesNetwork: 0, byRoute: {} };
  private readonly window: SlidingWindow;
  private readonly slots: Slots;
  private readonly o: PipedriveClientOptions;
  /** Requests sent and not yet settled (answered, failed or aborted); `close()` calls waiting for none. */
  private sending = 0;
  private idle: Array<() => void> = [];
  /** The base URL without credentials (fetch refuses them) and their Basic authorization. */
  private readonly base: { url: string; headers: Record<string, string> };

  constructor(options: PipedriveClientOptions) {
    this.o = options;
    const b = basicAuth(options.baseUrl);
    this.base = { url: b.url.replace(/\/+$/, ''), headers: b.headers };
    this.window = new SlidingWindow(options.rateLimit);
    this.slots = new Slots(options.concurrency);
  }

  /** One API call with pacing and retries; resolves to the envelope's data and pagination. */
  async call<T>(method: string, path: string, opts: CallOptions = {}): Promise<{ data: T; pagination: Pagination | undefined }> {
    const url = new URL(this.base.url + path);
    for (const [k, v] of Object.entries(opts.query ?? {})) url.searchParams.set(k, String(v));
    const { maxAttempts } = this.o.retry;
    let failures = 0;
    let limited = 0;
    for (;;) {
      let res: Response | undefined;
      let envelope: Envelope<T> | undefined;
      let netErr: unknown;
      // MUST come before anything is sent: a kill after this finds the attempt counted.
      await this.o.beforeSend?.();
      await this.slots.take();
      let acquired = false;
      let answeredAt: number | undefined;
      /** Surely never reached the API (connection refused, DNS failure). */
      let unsent = false;
      let sent = false;
      try {
        await this.window.acquire(this.o.signal);
        acquired = true;
        if (this.o.budget) {
          if (this.o.budget.remaining <= 0) throw new BudgetExhaustedError('daily request budget exhausted');
          this.o.budget.remaining--;
        }
        this.stats.requests++;
        this.sending++;
        sent = true;
        const route = routeOf(method, path);
        this.stats.byRoute[route] = (this.stats.byRoute[route] ?? 0) + 1;
        // One controller per request, its timer cleared on the answer: AbortSignal.timeout
        // would keep a 30 s timer alive per request (tens of thousands at full speed).
        const ac = new AbortController();
        const timer = setTimeout(() => ac.abort(new DOMException('request timed out', 'TimeoutError')), this.o.timeoutMs);
        const onAbort = () => ac.abort(this.o.signal?.reason);
        this.o.signal?.addEventListener('abort', onAbort, { once: true });
        try {
          res = await fetch(url, {
            method,
            headers: {
              ...this.base.headers,
              'x-api-token': this.o.token,
              accept: 'application/json',
              ...(opts.body !== undefined ? { 'content-type': 'application/json' } : {}),
            },
            body: opts.body !== undefined ? JSON.stringify(opts.body) : null,
            signal: ac.signal,
            // Not followed: the token's header would go to wherever the redirect points.
            redirect: 'manual',
          });
          answeredAt = performance.now();
          const text = await res.text();
          try {
            envelope = text ? (JSON.parse(text) as Envelope<T>) : {};
          } catch {
            envelope = { success: false, error: `non-JSON response: ${text.slice(0, 200)}` };
          }
        } catch (err) {
          this.o.signal?.throwIfAborted();
          netErr = err;
          if (NOT_SENT.has(networkCode(err))) {
            // The API never received it: not a request it counts, nor one of the budget's.
            this.stats.requests--;
            this.stats.byRoute[route] = (this.stats.byRoute[route] ?? 0) - 1;
            if (!this.stats.byRoute[route]) delete this.stats.byRoute[route];
            this.stats.unsent++;
            if (this.o.budget) this.o.budget.remaining++;
            unsent = true;
          }
        } finally {
          clearTimeout(timer);
          this.o.signal?.removeEventListener('abort', onAbort);
        }
      } finally {
        if (acquired) this.window.release(answeredAt, !unsent);
        this.slots.give();
        if (sent) this.settled();
      }
      if (res) this.observe(res);
      if (res && res.status !== 429) this.window.relax();

      if (res && res.ok && envelope?.success !== false) {
        return { data: envelope?.data as T, pagination: envelope?.additional_data?.pagination ?? undefined };
      }
      if (res && res.status === 429) {
        // Not applied: wait as told, everyone pauses, and the request goes again.
        // Our pacing let this one through, so the server's clock saw our sends closer.
        if (this.window.inWindow(performance.now()) >= this.window.limit * 0.75) this.window.widen();
        const wait = retryAfterMs(res.headers.get('retry-after')) ?? retryAfterMs(res.headers.get('x-ratelimit-reset')) ?? 1000;
        const cap = this.o.retry.maxRetryAfterMs;
        if (wait > cap) {
          throw this.giveUp(
            `${method} ${path}: rate limited until ${new Date(Date.now() + wait).toISOString()} ` +
              `(the API asks to wait ${seconds(wait)} s, more than the ${seconds(cap)} s a run waits; the next run continues)`,
          );
        }
        if (++limited > MAX_429_WAITS) {
          throw this.giveUp(
            `${method} ${path}: still rate limited after ${MAX_429_WAITS} waits (the account's limit stays spent, ` +
              `e.g. its daily budget by another integration; the next run continues)`,
          );
        }
        this.stats.retries429++;
        this.window.pause(wait);
        continue;
      }
      const status = res?.status;
      const what = res ? `HTTP ${status}: ${envelope?.error ?? res.statusText}` : `network error ${networkCode(netErr)}`;
      if (status === 401 || status === 403) throw this.refused(`${method} ${path}: ${what}`, status);
      if (res && status !== undefined && status >= 300 && status < 400) throw this.misdirected(method, path, res, url);
      const transient = res ? status !== undefined && status >= 500 : true;
      if (!transient) {
        const info = envelope?.error_info ? ` (${envelope.error_info})` : '';
        throw new PipedriveError(`${method} ${path}: ${what}${info}`, status);
      }
      // A create sent twice may exist twice: once it may have reached the server, never again.
      if (method === 'POST' && !unsent) {
        throw new UnconfirmedWriteError(`${method} ${path}: ${what}; it may have been applied, so it is not sent again`, status, { cause: netErr });
      }
      if (++failures >= maxAttempts) {
        const never = unsent ? ' (the last never reached Pipedrive: connection refused or DNS failure)' : '';
        throw new PipedriveError(`${method} ${path}: ${what} after ${failures} attempts${never}`, status, { cause: netErr });
      }
      if (res) this.stats.retries5xx++;
      else this.stats.retriesNetwork++;
      const cap = Math.min(this.o.retry.maxMs, this.o.retry.baseMs * 2 ** (failures - 1));
      await sleep(Math.random() * cap, undefined, this.o.signal ? { signal: this.o.signal } : undefined);
    }
  }

  /** One request settled: wakes `close()` when it was the last in flight. */
  private settled(): void {
    if (--this.sending > 0) return;
    for (const wake of this.idle.splice(0)) wake();
  }

  /**
   * Ends the client: every request not yet sent (waiting for a slot, or to be retried) fails
   * with `reason`; resolves once none is in flight. A run calls it before its final count,
   * so that nothing is sent after the run ends and every request it sent is counted
   * (unsent attempts too) and every answer journaled.
   */
  async close(reason: Error): Promise<void> {
    this.window.fail(reason);
    while (this.sending > 0) await new Promise<void>((r) => this.idle.push(r));
  }

  /** The limit is spent beyond what a run waits: this request and every other one fail with `message`. */
  private giveUp(message: string): RateLimitedError {
    const err = new RateLimitedError(message);
    this.window.fail(err);
    return err;
  }

  /**
   * The token (401) or its user (403) is refused: this request and every other one fail
   * with one error telling what to check.
   */
  private refused(what: string, status: 401 | 403): AccessRefusedError {
    const why =
      status === 401
        ? `Pipedrive refused the API token (${what}): check PIPEDRIVE_API_TOKEN (wrong, revoked or expired); every request would be refused, so the run ends`
        : `Pipedrive refused the request (${what}): the user of PIPEDRIVE_API_TOKEN may not do this (check that user's permissions and the token); the run ends`;
    const err = new AccessRefusedError(why, status);
    this.window.fail(err);
    return err;
  }

  /**
   * A 3xx: the API does not redirect, so `base_url` points elsewhere. This request and every
   * other one fail with one error naming where the redirect led (credentials and query
   * values masked); nothing was sent there.
   */
  private misdirected(method: string, path: string, res: Response, url: URL): MisdirectedError {
    const location = res.headers.get('location');
    let to = 'no Location';
    if (location) {
      try {
        to = `Location: ${withoutPassword(new URL(location, url).toString())}`;
      } catch {
        to = 'a Location that is not a URL';
      }
    }
    const err = new MisdirectedError(
      `${method} ${path}: Pipedrive answered HTTP ${res.status} (a redirect, ${to}), which the API never does: ` +
        `base_url (${withoutPassword(this.o.baseUrl)}) does not point at the API (check it, e.g. https:// rather than http://, and its path ending in /v1); ` +
        `the redirect is not followed, so the API token is not sent there; the run ends`,
      res.status,
    );
    this.window.fail(err);
    return err;
  }

  /** Reads the rate-limit headers: a lower account limit, or a window spent by others. */
  private observe(res: Response): void {
    const limit = Number(res.headers.get('x-ratelimit-limit'));
    if (Number.isInteger(limit) && limit > 0) this.window.lower(limit);
    const remaining = res.headers.get('x-ratelimit-remaining');
    if (remaining !== null && Number(remaining) <= 0 && res.status !== 429) {
      // Our own sends spend the window too, and our pacing already covers them; the
      // server's coarse reset (whole seconds) only matters when the count is not ours.
      if (this.window.inWindow(performance.now()) < this.window.limit * 0.75) {
        // Capped: a longer wait is decided by the 429 that follows (it ends the run).
        this.window.pause(Math.min(retryAfterMs(res.headers.get('x-ratelimit-reset')) ?? 1000, this.o.retry.maxRetryAfterMs));
      }
    }
  }

  /** Every page of a list endpoint (`limit` <= 500), following additional_data.pagination. */
  async *pages<T>(path: string, query: Record<string, string | number> = {}, limit = 500): AsyncGenerator<T[]> {
    let start = 0;
    for (;;) {
      const { data, pagination } = await this.call<T[] | null>('GET', path, { query: { ...query, start, limit } });
      yield data ?? [];
      if (!pagination?.more_items_in_collection) return;
      const next = pagination.next_start ?? start + limit;
      if (next <= start) return;
      start = next;
    }
  }
}
