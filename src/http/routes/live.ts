/**
 * The live page: GET /live (static HTML, src/web/live.html), GET /live/stream (Server-Sent
 * Events, one snapshot a second, pushed) and GET /live/snapshot (the latest snapshot as JSON,
 * at most a second old, for scripts and tests). Read-only, so open like /healthz.
 */
import path from 'node:path';
import type { FastifyInstance } from 'fastify';
import { intEnv, repoRoot } from '../../config.ts';
import { LiveHub } from '../../pipelines/visits/live-view.ts';
import type { AppContext } from '../context.ts';
import { HttpError } from '../errors.ts';
import { loadStaticPage, sendStaticPage } from './dashboard.ts';
import { addOpenApi } from '../openapi.ts';
import { liveOpenApi } from './live-openapi.ts';

const PAGE = path.join(repoRoot, 'src', 'web', 'live.html');
/** Slow viewers are dropped rather than buffered without bound (about 100 snapshots). */
const MAX_BUFFERED_BYTES = 1 << 20;

export interface LiveRouteOptions {
  /** Most concurrent /live/stream connections of this process (default SLUICE_LIVE_MAX_STREAMS or 1,000). */
  maxStreams?: number;
}

export function liveRoutes(app: FastifyInstance, ctx: AppContext, options: LiveRouteOptions = {}): void {
  const maxStreams = options.maxStreams ?? intEnv('SLUICE_LIVE_MAX_STREAMS', 1000);
  // Inline script and style allowed by hash only: page paths and visitor ids come from the
  // public and must never run (the page also writes them only as text).
  const page = loadStaticPage(PAGE);
  addOpenApi(liveOpenApi);

  app.register(async (scope) => {
    const hub = new LiveHub(ctx.pool);
    // Streams never end by themselves: end them before the server waits for its connections.
    scope.addHook('preClose', async () => hub.close());

    scope.get('/live', async (_req, reply) => sendStaticPage(reply, page));

    // The hub's latest snapshot, not a query per request (see LiveHub.current).
    scope.get('/live/snapshot', async () => hub.current());

    scope.get('/live/stream', async (req, reply) => {
      if (hub.size >= maxStreams) throw new HttpError(503, 'unavailable', 'too many live viewers on this instance');
      reply.hijack();
      const res = reply.raw;
      res.writeHead(200, {
        'content-type': 'text/event-stream; charset=utf-8',
        'cache-control': 'no-cache, no-transform',
        connection: 'keep-alive',
        // Proxies (nginx) must pass events through as they come.
        'x-accel-buffering': 'no',
      });
      res.write('retry: 2000\n\n');
      const unsubscribe = hub.subscribe({
        send(data) {
          if (res.writableLength > MAX_BUFFERED_BYTES) {
            res.destroy();
            return;
          }
          res.write(`data: ${data}\n\n`);
        },
        end() {
          res.end();
        },
      });
      res.on('close', unsubscribe);
      req.raw.on('error', unsubscribe);
    });
  });
}
