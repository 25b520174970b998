/**
 * Fetching the provider feed as a stream of chunks, with the timeouts a remote service
 * needs: an idle one, started again at the response headers and at each chunk (a stalled
 * provider), one for the whole body (a trickling one), and a size limit.
 *
 * Credentials written in the URL (`https://user:password@host/feed`) are sent as HTTP Basic
 * authorization (fetch refuses such a URL, quoting it whole), and no message of this module
 * contains the password (feedUrlProblem, maskUrlPasswords).
 */
import { SluiceError } from '../../core/errors.ts';
import { basicAuth, maskUrlPasswords, withoutPassword } from '../../core/url-credentials.ts';

export interface FetchFeedOptions {
  /** Whole request, headers to last byte (default 120 s). */
  timeoutMs?: number;
  /** Until the headers, and between two chunks of the body; the headers start it again for the first chunk (default 15 s). */
  idleTimeoutMs?: number;
  /**
   * Largest body accepted (default 1 GiB). It bounds the download and the stage's temp-table
   * disk, not memory (the reader bounds that per tag and per event): ten times the 96.8 MB
   * benchmark feed (5-8 s on a quiet machine), so about 55-90 s there, within the 120 s
   * default `timeoutMs`; on a loaded machine that timeout comes first.
   */
  maxBytes?: number;
  /** Aborts the fetch (service shutdown). */
  signal?: AbortSignal;
}

/** A failed fetch. `retryable` says whether the same request may succeed later. */
export class ProviderError extends SluiceError {
  readonly retryable: boolean;
  constructor(message: string, retryable: boolean, options?: { cause?: unknown }) {
    super('unavailable', message, options);
    this.retryable = retryable;
  }
}

/**
 * What is wrong with `url` as a feed URL (not a URL, or not http/https), undefined when it is
 * fine. The message shows the URL with its password masked.
 */
export function feedUrlProblem(url: string): string | undefined {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    return `must be an http:// or https:// URL, got ${JSON.stringify(maskUrlPasswords(url))}, which is not a URL`;
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') return `must be an http:// or https:// URL, got ${JSON.stringify(withoutPassword(url))}`;
  return undefined;
}

/** HTTP statuses worth retrying: the provider's trouble, not our request's. */
function retryableStatus(status: number): boolean {
  return status >= 500 || status === 408 || status === 429;
}

/**
 * The feed's body, chunk by chunk. Throws ProviderError on a bad status, a timeout, a
 * network failure or an oversized body; the request is aborted when the caller stops
 * iterating.
 */
export async function* fetchFeed(url: string, options: FetchFeedOptions = {}): AsyncGenerator<Uint8Array> {
  const timeoutMs = options.timeoutMs ?? 120_000;
  const idleMs = options.idleTimeoutMs ?? 15_000;
  const maxBytes = options.maxBytes ?? 1 << 30;
  // Not a URL, or ftp:, file:...: the same request would fail again (fetch said "unknown
  // scheme", and the sync retried it).
  const problem = feedUrlProblem(url);
  if (problem) throw new ProviderError(`the feed URL ${problem}`, false);
  const target = basicAuth(url);
  const ctrl = new AbortController();
  let reason = '';
  const abort = (why: string) => {
    reason ||= why;
    ctrl.abort();
  };
  const total = setTimeout(() => abort(`no complete response within ${timeoutMs} ms`), timeoutMs);
  let idle = setTimeout(() => abort(`no response headers within ${idleMs} ms`), idleMs);
  const onOuterAbort = () => abort('sync stopped');
  options.signal?.addEventListener('abort', onOuterAbort, { once: true });
  if (options.signal?.aborted) onOuterAbort();
  try {
    let res: Response;
    try {
      // A redirect to another origin drops the authorization header (the fetch standard).
      res = await fetch(target.url, { signal: ctrl.signal, headers: { ...target.headers, accept: 'application/xml, text/xml' }, redirect: 'follow' });
    } catch (err) {
      // No `cause`: its message may quote the URL, password and all.
      throw new ProviderError(`provider unreachable: ${maskUrlPasswords(reason || causeMessage(err))}`, true);
    }
    // Headers in: the idle timeout starts again, for the body's first chunk. (It ran on from
    // the request, so headers at 0.1 s and a first chunk at idle + 0.5 s failed as "no response
    // headers".) Each wait names itself in its message.
    clearTimeout(idle);
    idle = setTimeout(() => abort(`the body stalled for ${idleMs} ms after the response headers`), idleMs);
    if (res.status !== 200) {
      await res.body?.cancel().catch(() => {});
      throw new ProviderError(`provider answered HTTP ${res.status}`, retryableStatus(res.status));
    }
    if (!res.body) return;
    let bytes = 0;
    try {
      for await (const chunk of res.body) {
        clearTimeout(idle);
        idle = setTimeout(() => abort(`the body stalled for ${idleMs} ms between two chunks`), idleMs);
        bytes += chunk.byteLength;
        if (bytes > maxBytes) throw new ProviderError(`the feed exceeds ${maxBytes} bytes`, false);
        yield chunk;
      }
    } catch (err) {
      if (err instanceof SluiceError) throw err;
      throw new ProviderError(`reading the feed failed: ${maskUrlPasswords(reason || causeMessage(err))}`, true);
    }
  } finally {
    clearTimeout(total);
    clearTimeout(idle);
    options.signal?.removeEventListener('abort', onOuterAbort);
    // Stops the download when the consumer gave up early (a parse error, a failed merge).
    ctrl.abort();
  }
}

function causeMessage(err: unknown): string {
  const e = err as { message?: string; cause?: { message?: string; code?: string } };
  return e.cause?.code ?? e.cause?.message ?? e.message ?? String(err);
}
