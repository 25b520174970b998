/**
 * GET /healthz (database reachable: open to probes) and GET /metrics (Prometheus text
 * format: protected like every route that is not public, src/http/auth.ts).
 */
import type { FastifyInstance } from 'fastify';
import { registry } from '../metrics.ts';
import type { AppContext } from '../context.ts';
import { addOpenApi } from '../openapi.ts';
import { healthOpenApi } from './health-openapi.ts';

export function healthRoutes(app: FastifyInstance, ctx: AppContext): void {
  addOpenApi(healthOpenApi);
  app.get('/healthz', async (_req, reply) => {
    try {
      await ctx.pool.query('SELECT 1');
      return { status: 'ok' };
    } catch {
      return reply.status(503).send({ status: 'unavailable', error: { code: 'unavailable', message: 'database unreachable' } });
    }
  });
  app.get('/metrics', async (_req, reply) => {
    reply.header('content-type', registry.contentType);
    return registry.metrics();
  });
}
