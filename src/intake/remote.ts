/**
 * Fetching a remote file for `POST /imports {"url"}`: streamed, with a size limit, at most
 * MAX_REDIRECTS redirects, 30 s to get the answer's headers, at most 30 s without a byte
 * after that, and a minimum rate: at least 64 KiB in every 30 s the body is waited for
 * (MIN_RATE). A big file may take as long as it needs at a real link's speed; a server
 * trickling a line every 20 s (which the 30 s pause allows) no longer holds the import and
 * its database connection for as long as it likes.
 *
 * The URL is user input, and the server must not become a way into its own network (SSRF:
 * cloud metadata at 169.254.169.254, databases and admin pages on localhost or the private
 * network, read back through the import's rejects). Unless SLUICE_FETCH_ALLOW_PRIVATE=1,
 * every address the server connects to, on every hop of a redirect chain, must be public:
 * a literal address is checked before connecting, a name on the addresses it resolves to,
 * at connection time (the addresses checked are the ones connected to: no second lookup a
 * rebinding DNS server could answer differently).
 *
 * Credentials in the URL (`https://user:pw@host/x.csv`) go as Basic authorization to that
 * URL and to a redirect's relative Location (same origin); an absolute Location is taken as
 * written, without them.
 *
 * An abort signal (`signal`) stops the fetch wherever it is: the request waiting for its
 * answer, a redirect, or the body being read (the stream returned fails with the reason).
 * `POST /imports {"url"}` aborts it when its client's connection closes before the answer:
 * without it the server went on fetching (and importing) a file nobody waited for.
 */
import dns from 'node:dns';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import type { Readable } from 'node:stream';
import { errorMessage, InvalidInputError, SluiceError } from '../core/errors.ts';
import { env } from '../config.ts';

const MAX_REDIRECTS = 5;
const TIMEOUT_MS = 30_000;
/**
 * The slowest body accepted: at least `bytes` in every `windowMs` the body is waited for
 * (time the reader is behind does not count). 64 KiB per 30 s is about 17 kbit/s, far
 * below any real link (a poor mobile one does 20 times that), so no honest download fails
 * it, however big: a transfer this slow is a server trickling or stalled, ended within
 * 30 s of falling below. A server sending just enough on purpose can still hold an import
 * for up to the size limit over this rate: it is a floor, not a deadline.
 */
const MIN_RATE = { bytes: 64 * 1024, windowMs: 30_000 };
const REDIRECTS = new Set([301, 302, 303, 307, 308]);

/**
 * Loopback, private, shared (CGNAT), link-local, documentation, benchmarking, reserved,
 * multicast and broadcast ranges (IANA special-purpose registries), IPv4 and IPv6, with
 * every IPv6 range that embeds an IPv4 address, blocked whole (the IPv4 address is not
 * checked there; a translator or relay may reach it): IPv4-compatible ::/96, IPv4-translated
 * ::ffff:0:0:0/96 (SIIT, RFC 2765), NAT64 64:ff9b::/96 and 64:ff9b:1::/48, 6to4 2002::/16
 * and Teredo 2001::/32 (in 2001::/23). IPv4-mapped ::ffff:0:0/96 is the IPv4 address
 * itself to the socket: checked as that address (mappedIPv4). Every IPv6 address outside
 * 2000::/3 is refused besides (GLOBAL_UNICAST): the ranges below it are listed all the same.
 */
const NOT_PUBLIC = new net.BlockList();
for (const [address, prefix] of [
  ['0.0.0.0', 8], ['10.0.0.0', 8], ['100.64.0.0', 10], ['127.0.0.0', 8], ['169.254.0.0', 16], ['172.16.0.0', 12],
  ['192.0.0.0', 24], ['192.0.2.0', 24], ['192.88.99.0', 24], ['192.168.0.0', 16], ['198.18.0.0', 15],
  ['198.51.100.0', 24], ['203.0.113.0', 24], ['224.0.0.0', 4], ['240.0.0.0', 4],
] as const) NOT_PUBLIC.addSubnet(address, prefix, 'ipv4');
for (const [address, prefix] of [
  ['::', 96], ['::ffff:0:0:0', 96], ['64:ff9b::', 96], ['64:ff9b:1::', 48], ['100::', 64], ['2001::', 23], ['2001:db8::', 32],
  ['2002::', 16], ['3fff::', 20], ['fc00::', 7], ['fe80::', 10], ['fec0::', 10], ['ff00::', 8],
] as const) NOT_PUBLIC.addSubnet(address, prefix, 'ipv6');

/** The IPv4 address inside an IPv4-mapped IPv6 address (::ffff:a.b.c.d), if it is one. */
function mappedIPv4(ip: string): string | undefined {
  // The URL parser writes IPv6 addresses in one canonical form: ::ffff:7f00:1. (A zone,
  // as in fe80::1%eth0, is not a mapped address, and the URL parser refuses it.)
  if (ip.includes('%')) return undefined;
  const canonical = new URL(`http://[${ip}]/`).hostname.slice(1, -1);
  const m = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/.exec(canonical);
  if (!m) return undefined;
  const hi = parseInt(m[1]!, 16);
  const lo = parseInt(m[2]!, 16);
  return `${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`;
}

/**
 * Global unicast, the only IPv6 space the IANA allocates for the Internet (2000::/3): an
 * address outside it (other than IPv4-mapped) is never a public server, whatever range a
 * future RFC carves out of the rest.
 */
const GLOBAL_UNICAST = new net.BlockList();
GLOBAL_UNICAST.addSubnet('2000::', 3, 'ipv6');

/** True for an address a fetch on a user's behalf must not reach by default (anything not an IP address included). */
export function isNonPublicAddress(ip: string): boolean {
  const family = net.isIP(ip);
  if (family === 4) return NOT_PUBLIC.check(ip, 'ipv4');
  if (family !== 6) return true;
  const v4 = mappedIPv4(ip);
  if (v4) return NOT_PUBLIC.check(v4, 'ipv4');
  return !GLOBAL_UNICAST.check(ip, 'ipv6') || NOT_PUBLIC.check(ip, 'ipv6');
}

export interface FetchOptions {
  /** Whether the server may connect to `address` (default: public addresses only, or any with SLUICE_FETCH_ALLOW_PRIVATE=1). */
  allowed?: (address: string) => boolean;
  /** The wait for the answer's headers, and the longest pause in its body (default 30 s). */
  timeoutMs?: number;
  /** The slowest body accepted: at least `bytes` in every `windowMs` waited for (default 64 KiB per 30 s). */
  minRate?: { bytes: number; windowMs: number };
  /** Stops the fetch when aborted: fetchRemote rejects, or the body it returned fails, with the reason (see stopped). */
  signal?: AbortSignal | undefined;
}

/** A connection refused by the address policy (raised inside the request's DNS lookup). */
class Refused extends Error {
  readonly host: string;
  constructor(host: string) {
    super(`refused address for ${host}`);
    this.host = host;
  }
}

const refusedMessage = (host: string) =>
  `"url" leads to ${host}, a loopback, private or otherwise non-public address: refused (SLUICE_FETCH_ALLOW_PRIVATE=1 allows it)`;

/** The resolver for connections: every address of the name must be allowed. */
function guardedLookup(allowed: (address: string) => boolean): net.LookupFunction {
  return ((hostname: string, options: dns.LookupOptions, callback: (...args: unknown[]) => void) => {
    dns.lookup(hostname, { ...options, all: true }, (err, addresses) => {
      if (err) return callback(err);
      if (addresses.length === 0 || addresses.some((a) => !allowed(a.address))) return callback(new Refused(hostname));
      if (options.all) callback(null, addresses);
      else callback(null, addresses[0]!.address, addresses[0]!.family);
    });
  }) as net.LookupFunction;
}

/** Where a URL points, for messages: never its query string or credentials (they may hold secrets). */
const where = (u: URL) => `${u.origin}${u.pathname}`;

/**
 * The error of a fetch stopped by its signal: the signal's reason when it is a SluiceError
 * (the caller's own words), else a 400 saying so.
 */
function stopped(signal: AbortSignal, u: URL): SluiceError {
  const reason: unknown = signal.reason;
  if (reason instanceof SluiceError) return reason;
  return new InvalidInputError(`fetching ${where(u)} was stopped: ${errorMessage(reason)}`, { cause: reason });
}

/**
 * The answer's headers for one request (no redirect followed), within TIMEOUT_MS; then at
 * most TIMEOUT_MS between bytes. `signal` destroys the request, or once answered its body.
 */
function request(u: URL, lookup: net.LookupFunction, timeoutMs: number, signal: AbortSignal | undefined): Promise<http.IncomingMessage> {
  return new Promise((resolve, reject) => {
    const get = u.protocol === 'https:' ? https.get : http.get;
    let response: http.IncomingMessage | undefined;
    const onAbort = () => {
      const reason = stopped(signal!, u);
      if (response) response.destroy(reason);
      else req.destroy(reason);
    };
    const req = get(u, { lookup, headers: { accept: '*/*', 'accept-encoding': 'identity', 'user-agent': 'sluice' } }, (res) => {
      clearTimeout(timer);
      response = res;
      // Listened to until the body is over (read, or destroyed): a signal outliving the
      // fetch does not keep it.
      res.once('close', () => signal?.removeEventListener('abort', onAbort));
      resolve(res);
    });
    signal?.addEventListener('abort', onAbort, { once: true });
    const timer = setTimeout(() => req.destroy(new Error(`no answer within ${timeoutMs / 1000} s`)), timeoutMs);
    // Once the body flows, its reader gets the reason (a 400: the remote side stalled).
    req.setTimeout(timeoutMs, () => {
      if (response) response.destroy(new InvalidInputError(`fetching ${where(u)}: no data for ${timeoutMs / 1000} s`));
      else req.destroy(new Error(`no data for ${timeoutMs / 1000} s`));
    });
    req.on('error', (err) => {
      clearTimeout(timer);
      if (!response) signal?.removeEventListener('abort', onAbort);
      reject(err);
    });
  });
}

/**
 * Fails `res` (the reader gets a 400) when less than `rate.bytes` arrive in `rate.windowMs`
 * of waiting for them. Only the time the reader waits counts: while data it has not read
 * yet is buffered (the database is slow to take the parts), the socket is paused on our
 * side, and the server is not to blame. Counted on the socket from the end of the headers
 * (chunk framing included: a few bytes), sampled ten times per window.
 */
function enforceMinRate(res: http.IncomingMessage, u: URL, rate: { bytes: number; windowMs: number }): void {
  const socket = res.socket;
  const tick = Math.max(1, Math.floor(rate.windowMs / 10));
  let waited = 0;
  let from = socket.bytesRead;
  const timer = setInterval(() => {
    if (res.readableLength > 0) return; // the reader's turn, not the server's
    waited += tick;
    if (waited < rate.windowMs) return;
    const got = socket.bytesRead - from;
    if (got < rate.bytes) {
      clearInterval(timer);
      res.destroy(
        new InvalidInputError(
          `fetching ${where(u)}: too slow, ${got} bytes in ${rate.windowMs / 1000} s ` +
            `(at least ${rate.bytes} bytes per ${rate.windowMs / 1000} s are required): the server is trickling or stalled`,
        ),
      );
      return;
    }
    waited = 0;
    from = socket.bytesRead;
  }, tick);
  timer.unref();
  res.once('close', () => clearInterval(timer));
}

export async function fetchRemote(url: string, maxBytes: number, options: FetchOptions = {}): Promise<Readable> {
  const allowed = options.allowed ?? (env('SLUICE_FETCH_ALLOW_PRIVATE') === '1' ? () => true : (a: string) => !isNonPublicAddress(a));
  const lookup = guardedLookup(allowed);
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new InvalidInputError(`not a URL: ${JSON.stringify(url)}`);
  }
  const { signal } = options;
  for (let hop = 0; ; hop++) {
    if (signal?.aborted) throw stopped(signal, u);
    if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new InvalidInputError('url must be http or https');
    // A literal address is connected to without a lookup: checked here.
    const host = u.hostname.replace(/^\[(.*)\]$/, '$1');
    if (net.isIP(host) && !allowed(host)) throw new InvalidInputError(refusedMessage(host));
    let res: http.IncomingMessage;
    try {
      res = await request(u, lookup, options.timeoutMs ?? TIMEOUT_MS, signal);
    } catch (err) {
      if (signal?.aborted) throw stopped(signal, u);
      if (err instanceof Refused) throw new InvalidInputError(refusedMessage(err.host));
      throw new InvalidInputError(`could not fetch ${where(u)}: ${(err as Error).message}`);
    }
    const status = res.statusCode ?? 0;
    if (REDIRECTS.has(status) && res.headers.location) {
      res.resume();
      if (hop >= MAX_REDIRECTS) throw new InvalidInputError(`fetching ${where(u)}: more than ${MAX_REDIRECTS} redirects`);
      try {
        u = new URL(res.headers.location, u);
      } catch {
        throw new InvalidInputError(`fetching ${where(u)}: a redirect to something that is not a URL`);
      }
      continue;
    }
    if (status < 200 || status > 299) {
      res.resume();
      throw new InvalidInputError(`fetching ${where(u)} answered ${status}`);
    }
    const length = Number(res.headers['content-length'] ?? 0);
    if (length > maxBytes) {
      res.destroy();
      throw new SluiceError('too_large', `remote file is ${length} bytes, above the limit of ${maxBytes}`);
    }
    enforceMinRate(res, u, options.minRate ?? MIN_RATE);
    // Aborted between the answer and here: the body is already destroyed with the reason.
    if (signal?.aborted) throw stopped(signal, u);
    return res;
  }
}
