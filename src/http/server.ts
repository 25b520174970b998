/**
 * The HTTP server (`sluice serve`): Fastify with one error handler, the routes of each
 * feature, and the background services (scheduled syncs, workers) that run beside it.
 */
import Fastify, { type FastifyInstance } from 'fastify';
import { SluiceError } from '../core/errors.ts';
import { handleError } from './errors.ts';
import { httpRequests } from './metrics.ts';
import type { AppContext } from './context.ts';
import { healthRoutes } from './routes/health.ts';
import { importsRoutes } from './routes/imports.ts';
import { dashboardRoutes } from './routes/dashboard.ts';
import { crmRoutes } from './routes/crm.ts';
import { visitsRoutes } from './routes/visits.ts';
import { liveRoutes } from './routes/live.ts';
import { searchRoutes } from './routes/search.ts';
import { openApiRoutes } from './openapi.ts';

export interface ServerOptions {
  logger?: boolean;
  /** Maximum request body in bytes for JSON bodies (uploads have their own limit). */
  bodyLimit?: number;
}

/** Builds the app without listening (tests use `app.inject`). */
export async function buildServer(ctx: AppContext, options: ServerOptions = {}): Promise<FastifyInstance> {
  const app = Fastify({
    // Request logging stays off by default (SLUICE_LOG_LEVEL=info turns it on): at thousands
    // of requests per second it would cost more than the requests.
    logger: options.logger ? { level: process.env.SLUICE_LOG_LEVEL ?? 'warn', redact: ['req.headers.authorization'] } : false,
    bodyLimit: options.bodyLimit ?? 1 << 20,
    // Fastify's own 503 while closing has its own body ({"error":"Service Unavailable",...}):
    // the hook below answers in Sluice's {"error":{"code","message"}} form instead.
    return503OnClosing: false,
  });
  app.setErrorHandler(handleError);
  // From the start of close() on, requests still arriving on open keep-alive connections get
  // 503 (Fastify adds Connection: close); those already in progress finish normally.
  let closing = false;
  app.addHook('preClose', async () => {
    closing = true;
  });
  app.addHook('onRequest', async () => {
    if (closing) throw new SluiceError('unavailable', 'the server is shutting down; retry on another instance');
  });
  app.setNotFoundHandler((req, reply) =>
    reply.status(404).send({ error: { code: 'not_found', message: `no route ${req.method} ${req.url.split('?')[0]}` } }),
  );
  app.addHook('onResponse', async (req, reply) => {
    httpRequests.inc({ route: req.routeOptions.url ?? 'unknown', status: String(reply.statusCode) });
  });
  healthRoutes(app, ctx);
  importsRoutes(app, ctx);
  dashboardRoutes(app, ctx);
  crmRoutes(app, ctx);
  visitsRoutes(app, ctx);
  liveRoutes(app, ctx);
  searchRoutes(app, ctx);
  openApiRoutes(app);
  return app;
}

