/**
 * Background services that run inside `sluice serve` beside the HTTP server (scheduled
 * syncs, queue workers, visit flushers). Each is started once and stopped on shutdown.
 */
import type { FastifyInstance } from 'fastify';
import type { AppContext } from './context.ts';

export interface RunningService {
  stop(): Promise<void>;
}

export interface Service {
  name: string;
  /** Returns undefined when the service is disabled by configuration. */
  start(ctx: AppContext, app: FastifyInstance): Promise<RunningService | undefined>;
}

/** Starts every service in order; if one fails, the ones started are stopped again. */
export async function startServices(services: Service[], ctx: AppContext, app: FastifyInstance): Promise<RunningService> {
  const running: RunningService[] = [];
  try {
    for (const s of services) {
      const r = await s.start(ctx, app);
      if (r) running.push(r);
    }
  } catch (err) {
    for (const r of running.reverse()) await r.stop().catch(() => {});
    throw err;
  }
  return {
    async stop() {
      for (const r of running.reverse()) await r.stop().catch(() => {});
    },
  };
}
