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
