/**
 * The HTTP server (`sluice serve`): Fastify with one error handler, the routes of each
 * feature, and the background services (scheduled syncs, workers) that run beside it.
 */
import Fastify, { type FastifyInstance } from 'fastify';
import { env } from '../config.ts';
import { SluiceError } from '../core/errors.ts';
import { guardRoutes } from './auth.ts';
import { clientErrorHandler, trackUnanswered } from './client-errors.ts';
import { handleError } from './errors.ts';
import { httpRequests } from './metrics.ts';
import type { AppContext } from './context.ts';
import { healthRoutes } from './routes/health.ts';
import { importsRoutes, isFileUpload, type ImportsRouteOptions } from './routes/imports.ts';
import { deferContinue } from './continue.ts';
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
  /** How long close() lets requests in progress finish before their connections are cut (default CLOSE_GRACE_MS). */
  closeGraceMs?: number;
  /** Options of the imports routes (tests: a shorter upload idle timeout). */
  imports?: ImportsRouteOptions;
  /** How long /healthz waits for the database (default HEALTH_TIMEOUT_MS; tests use less). */
  healthTimeoutMs?: number;
}

/**
 * How long close() (`serve` stopping on SIGTERM) waits for the requests in progress before it
 * destroys their connections: an upload still arriving, or one whose client stalled, kept
 * the process from ever stopping. 10 s: a short request finishes well within it, and the
 * whole stop stays bounded (an orchestrator's SIGKILL usually comes after 30 s). An upload
 * cut this way fails as one whose client hung up: nothing of it stays.
 */
export const CLOSE_GRACE_MS = 10_000;

/** Builds the app without listening (tests use `app.inject`). */
export async function buildServer(ctx: AppContext, options: ServerOptions = {}): Promise<FastifyInstance> {
  const app = Fastify({
    // Request logging stays off by default (SLUICE_LOG_LEVEL=info turns it on): at thousands
    // of requests per second it would cost more than the requests.
    // The token never reaches the log: the request's headers, and @fastify/multipart's trace
    // line of its busboy options (which hold the request's headers too).
    logger: options.logger
      ? { level: env('SLUICE_LOG_LEVEL') ?? 'warn', redact: ['req.headers.authorization', 'busboyOptions.headers.authorization'] }
      : false,
    bodyLimit: options.bodyLimit ?? 1 << 20,
    // Fastify's own 503 while closing has its own body ({"error":"Service Unavailable",...}):
    // the hook below answers in Sluice's {"error":{"code","message"}} form instead.
    return503OnClosing: false,
    // Requests the HTTP parser cannot read: answered in Sluice's error form, or, behind a
    // request still unanswered (a pipelined upload), by cutting the connection.
    clientErrorHandler,
  });
  trackUnanswered(app);
  // `100 Continue` once a body is about to be read, not before the checks (continue.ts).
  deferContinue(app, isFileUpload);
  app.setErrorHandler(handleError);
  // From the start of close() on, requests still arriving on open keep-alive connections get
  // 503 (Fastify adds Connection: close); those already in progress finish normally, within
  // the grace period.
  let closing = false;
  app.addHook('preClose', async () => {
    closing = true;
    // Connections still open after the grace period are destroyed: the server's close (and
    // so close()) then ends, and their requests fail where they are.
    const force = setTimeout(() => app.server.closeAllConnections(), options.closeGraceMs ?? CLOSE_GRACE_MS);
    force.unref();
    app.server.once('close', () => clearTimeout(force));
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
  // Who may call what (src/http/auth.ts), on the root instance: every route, those of the
  // plugins below and the 404 handler included, goes through it.
  guardRoutes(app, ctx);
  healthRoutes(app, ctx, options.healthTimeoutMs);
  importsRoutes(app, ctx, options.imports);
  dashboardRoutes(app, ctx);
  crmRoutes(app, ctx);
  visitsRoutes(app, ctx);
  liveRoutes(app, ctx);
  searchRoutes(app, ctx);
  openApiRoutes(app);
  return app;
}

