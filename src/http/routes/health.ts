/**
 * GET /healthz (database reachable: open to probes) and GET /metrics (Prometheus text
 * format: protected like every route that is not public, src/http/auth.ts).
 */
import type { FastifyInstance } from 'fastify';
import { registry } from '../metrics.ts';
import type { AppContext } from '../context.ts';
import { DATABASE_UNAVAILABLE, HttpError } from '../errors.ts';
import { addOpenApi } from '../openapi.ts';
import { healthOpenApi } from './health-openapi.ts';

export function healthRoutes(app: FastifyInstance, ctx: AppContext): void {
  addOpenApi(healthOpenApi);
  app.get('/healthz', async () => {
    try {
      await ctx.pool.query('SELECT 1');
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
