/**
 * The API token check. With SLUICE_API_TOKEN set (ctx.apiToken), every request that can
 * change something (any method but GET and HEAD) must carry `Authorization: Bearer <token>`;
 * reads stay open like /healthz. Without a token the server only listens on loopback
 * (src/cli/commands/serve.ts refuses anything else), so nothing is checked.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { AppContext } from './context.ts';
import { HttpError } from './errors.ts';

const READ_METHODS = new Set(['GET', 'HEAD']);

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

/**
 * A Fastify hook (usable as onRequest or preHandler) that answers 401 `unauthorized` for
 * a write request without the right bearer token. Routes that take uploads install it as
 * onRequest, so the body of an unauthorised upload is never read.
 */
export function requireApiToken(ctx: AppContext) {
  return async function apiTokenGuard(req: FastifyRequest, reply: FastifyReply): Promise<void> {
    if (!ctx.apiToken || READ_METHODS.has(req.method)) return;
    const given = bearerToken(req.headers.authorization);
    if (given !== undefined && sameSecret(given, ctx.apiToken)) return;
    // RFC 6750 section 3: tell the client which scheme is expected.
    reply.header('www-authenticate', 'Bearer realm="sluice"');
    throw new HttpError(401, 'unauthorized', 'missing or wrong API token (send Authorization: Bearer <token>)');
  };
}

/** True for 127.0.0.0/8, ::1 and localhost. */
export function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || host.startsWith('127.');
}

/** The host name of a `Host` header value: no port, no IPv6 brackets, lower-cased. */
function hostName(host: string): string {
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
 * Without a token (loopback only) the `Host` must also be a loopback name, so a page whose
 * DNS name was rebound to 127.0.0.1 cannot read the imports either.
 * Not for /visits: its beacons come from the customers' sites by design.
 */
export function refuseCrossSite(ctx: AppContext) {
  return async function crossSiteGuard(req: FastifyRequest): Promise<void> {
    const host = req.headers.host ?? '';
    if (!ctx.apiToken && !isLoopback(hostName(host))) {
      throw new HttpError(403, 'forbidden', `this server answers to its loopback names only (Host ${JSON.stringify(host.slice(0, 100))}); set SLUICE_API_TOKEN to serve other names`);
    }
    if (READ_METHODS.has(req.method)) return;
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
