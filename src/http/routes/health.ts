/**
 * GET /healthz (database reachable: open to probes) and GET /metrics (Prometheus text
 * format: protected like every route that is not public, src/http/auth.ts).
 */
import type { FastifyInstance } from 'fastify';
import type { QueryConfig } from 'pg';
import { registry } from '../metrics.ts';
import type { AppContext } from '../context.ts';
import { DATABASE_UNAVAILABLE, HttpError } from '../errors.ts';
import { addOpenApi } from '../openapi.ts';
import { healthOpenApi } from './health-openapi.ts';

/**
 * How long /healthz waits for the database's answer (a connection from the pool, then
 * `SELECT 1`) before it answers 503: a database whose packets are dropped (a network
 * partition) made it hang, each probe holding a connection until TCP gave up.
 */
export const HEALTH_TIMEOUT_MS = 5000;

export function healthRoutes(app: FastifyInstance, ctx: AppContext, timeoutMs = HEALTH_TIMEOUT_MS): void {
  addOpenApi(healthOpenApi);
  app.get('/healthz', async () => {
    try {
      // query_timeout ends a query that got a connection and no answer (the pool then drops
      // that connection); the timer also bounds the wait for a connection.
      // (pg reads query_timeout per query too; its types list it for the client only.)
      const config = { text: 'SELECT 1', query_timeout: timeoutMs };
      const check = ctx.pool.query(config as QueryConfig);
      check.catch(() => {}); // answered below, or given up on by the timer
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs);
      });
      await Promise.race([check, late]).finally(() => clearTimeout(timer));
    } catch {
      // Any failure of the check is the 503, never a 500, and in the one error form
      // (src/http/errors.ts) the server's other 503 uses too, that of a server shutting
      // down (src/http/server.ts); a client tells them apart by the message.
      throw new HttpError(503, 'unavailable', DATABASE_UNAVAILABLE);
    }
    return { status: 'ok' };
  });
  app.get('/metrics', async (_req, reply) => {
    reply.header('content-type', registry.contentType);
    return registry.metrics();
  });
}
