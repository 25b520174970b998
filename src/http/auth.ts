/**
 * Who may call what. Every route is either public or protected:
 *
 * - Public (PUBLIC_ROUTES, GET and HEAD only): `/healthz` (probes), the dashboard's page
 *   shell `/`, `/docs` and `/docs/openapi.json` (no data), `/search` (the public search of
 *   the provider events, issue 4) and `/live`, `/live/snapshot`, `/live/stream` (the public
 *   live page, issue 5). Nothing is checked, with or without a token.
 * - Protected: every other route and method (the imports API, `/crm/runs*`, `/metrics`,
 *   `/visits*`, an unknown path, and any route added later that is not listed here).
 *   - With SLUICE_API_TOKEN set (ctx.apiToken): `Authorization: Bearer <token>`, else 401
 *     `unauthorized` with `WWW-Authenticate`. Reads too: rejects hold the raw rows of the
 *     customers' files, the lists their file names, CRM failures their records.
 *   - Without a token (the server then listens on loopback only, src/cli/commands/serve.ts):
 *     the `Host` must be a loopback name, else 403 `forbidden`. A loopback Host stands in for
 *     the token: a browser page whose DNS name was rebound to 127.0.0.1 sends its own name,
 *     and cannot read or write through the operator's browser. Except the beacons
 *     (BEACON_ROUTES, POST /visits and /visits/batch): they take visits from any site by
 *     design, answer nothing worth reading, and any page can already post one to 127.0.0.1
 *     (a `text/plain` beacon needs no CORS preflight), so the Host would guard nothing.
 *
 * One server-level onRequest hook applies this to every route (guardRoutes, installed by
 * src/http/server.ts before any route), before any body is read.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { BlockList, isIP, type AddressInfo } from 'node:net';
import type { FastifyInstance, FastifyReply, FastifyRequest, HookHandlerDoneFunction } from 'fastify';
import type { AppContext } from './context.ts';
import { HttpError } from './errors.ts';

const READ_METHODS = new Set(['GET', 'HEAD']);

/**
 * The routes anyone may read (GET, HEAD), with or without a token, under any Host: by their
 * Fastify route pattern (`req.routeOptions.url`), never by the raw URL.
 */
export const PUBLIC_ROUTES: ReadonlySet<string> = new Set(['/healthz', '/', '/docs', '/docs/openapi.json', '/search', '/live', '/live/snapshot', '/live/stream']);

/** Protected routes whose Host is not checked on a server without a token (see the top). */
export const BEACON_ROUTES: ReadonlySet<string> = new Set(['/visits', '/visits/batch']);

/**
 * Compares two secrets in constant time. Both sides are hashed first so the comparison
 * takes the same time whatever their lengths (timingSafeEqual alone needs equal lengths,
 * and returning early on a length mismatch would leak the token's length).
 */
export function sameSecret(given: string, wanted: string): boolean {
  const a = createHash('sha256').update(given).digest();
  const b = createHash('sha256').update(wanted).digest();
  return timingSafeEqual(a, b);
}

/** The token of an `Authorization: Bearer <token>` header (RFC 6750 section 2.1), else undefined. */
export function bearerToken(header: string | undefined): string | undefined {
  if (!header) return undefined;
  const m = /^Bearer[ ]+(\S+)\s*$/i.exec(header);
  return m ? m[1] : undefined;
}

/** Throws 401 `unauthorized` unless the request carries `apiToken` (compared timing-safe). */
function checkToken(apiToken: string, req: FastifyRequest, reply: FastifyReply): void {
  const given = bearerToken(req.headers.authorization);
  if (given !== undefined && sameSecret(given, apiToken)) return;
  // RFC 6750 section 3: tell the client which scheme is expected.
  reply.header('www-authenticate', 'Bearer realm="sluice"');
  throw new HttpError(401, 'unauthorized', 'missing or wrong API token (send Authorization: Bearer <token>)');
}

/** Throws 403 `forbidden` when the `Host` header does not name a loopback address. */
function checkHost(req: FastifyRequest): void {
  const host = req.headers.host ?? '';
  if (isLoopback(hostName(host))) return;
  throw new HttpError(403, 'forbidden', `this server answers to its loopback names only (Host ${JSON.stringify(host.slice(0, 100))}); set SLUICE_API_TOKEN to serve other names`);
}

/** Whether a request is for a public route (PUBLIC_ROUTES, GET or HEAD). */
export function isPublicRoute(req: FastifyRequest): boolean {
  const url = req.routeOptions.url;
  return url !== undefined && PUBLIC_ROUTES.has(url) && READ_METHODS.has(req.method);
}

/**
 * Installs the access rule at the server level: an onRequest hook on `app` (the root
 * instance, so it runs for every route, those registered in plugins and the 404 handler
 * included). Protected routes need the token when one is set, a loopback Host when none is
 * (the beacons aside). A callback hook rather than an async one: it runs on every request of
 * /search and /visits.
 */
export function guardRoutes(app: FastifyInstance, ctx: AppContext): void {
  app.addHook('onRequest', (req: FastifyRequest, reply: FastifyReply, done: HookHandlerDoneFunction) => {
    if (isPublicRoute(req)) return done();
    try {
      if (ctx.apiToken) checkToken(ctx.apiToken, req, reply);
      else if (!BEACON_ROUTES.has(req.routeOptions.url ?? '')) checkHost(req);
    } catch (err) {
      return done(err as Error);
    }
    done();
  });
}

/** IPv4 127.0.0.0/8 and IPv6 ::1; BlockList also matches IPv4-mapped IPv6 (::ffff:127.0.0.1). */
const LOOPBACK = new BlockList();
LOOPBACK.addSubnet('127.0.0.0', 8, 'ipv4');
LOOPBACK.addAddress('::1', 'ipv6');

/**
 * True for a loopback host: `localhost` (any case, with or without the trailing dot of a
 * fully qualified name) or a literal IP address in 127.0.0.0/8, `::1` (any spelling, in
 * brackets or not) or `::ffff:127.x.y.z`. Any other name is not loopback, whatever it
 * resolves to: `127.attacker.example` is a DNS name anyone can point anywhere.
 */
export function isLoopback(host: string): boolean {
  let h = host.toLowerCase();
  if (h.startsWith('[') && h.endsWith(']')) h = h.slice(1, -1);
  if (h === 'localhost' || h === 'localhost.') return true;
  const family = isIP(h);
  if (family === 0) return false;
  try {
    return LOOPBACK.check(h, family === 4 ? 'ipv4' : 'ipv6');
  } catch {
    return false; // an address BlockList does not take (an IPv6 zone id): not loopback
  }
}

/**
 * The addresses a server is listening on that are not loopback, as URLs (for `sluice serve`,
 * after `listen`, from `app.addresses()`: the name it was given may have resolved to
 * anything). A socket path is local to this machine, so never listed.
 */
export function nonLoopbackAddresses(addresses: Array<AddressInfo | string>): string[] {
  return addresses.filter((a): a is AddressInfo => typeof a !== 'string' && !isLoopback(a.address)).map(listenUrl);
}

/** `http://host:port` of a listening address (`[...]` around IPv6); a socket path as it is. */
export function listenUrl(a: AddressInfo | string): string {
  if (typeof a === 'string') return a;
  return `http://${a.family === 'IPv6' || a.address.includes(':') ? `[${a.address}]` : a.address}:${a.port}`;
}

/** The host name of a `Host` header value: no port, no IPv6 brackets, lower-cased. */
export function hostName(host: string): string {
  const h = host.toLowerCase();
  return h.startsWith('[') ? h.slice(1, h.indexOf(']')) : h.replace(/:\d+$/, '');
}

/**
 * A Fastify onRequest hook for the routes of the operators (imports): a browser page of
 * another site must not write through the browser of someone who can reach the server
 * (cross-site request forgery: a hidden `text/plain` form needs no CORS preflight, and
 * without a token the loopback server takes any write). A write is refused (403
 * `forbidden`) when the browser says it comes from another site (`Sec-Fetch-Site`
 * `cross-site` or `same-site`: another port of 127.0.0.1 is the same site) or names an
 * `Origin` that is not this server. Clients that are not browsers send neither header.
 * (The token and the loopback Host are guardRoutes' checks, for every protected route.)
 * Not for /visits: its beacons come from the customers' sites by design.
 */
export function refuseCrossSite() {
  return async function crossSiteGuard(req: FastifyRequest): Promise<void> {
    if (READ_METHODS.has(req.method)) return;
    const host = req.headers.host ?? '';
    const site = req.headers['sec-fetch-site'];
    const origin = req.headers.origin;
    let sameOrigin = origin === undefined;
    if (origin !== undefined) {
      try {
        // Compared as the URL parser writes them (a default port dropped for its scheme).
        const o = new URL(origin);
        sameOrigin = o.host === new URL(`${o.protocol}//${host}`).host;
      } catch {
        sameOrigin = false; // "null" (a sandboxed page, a file) or garbage
      }
    }
    if (site === 'cross-site' || site === 'same-site' || !sameOrigin) {
      throw new HttpError(403, 'forbidden', 'a write from a page of another site is refused (cross-site request)');
    }
  };
}
