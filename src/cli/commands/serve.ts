/** `sluice serve`: the HTTP server, plus the background services configured by env. */
import { lookup } from 'node:dns/promises';
import type { Command } from 'commander';
import type { FastifyInstance } from 'fastify';
import { checkSettings, env, intEnv } from '../../config.ts';
import { openDb } from '../../db/pool.ts';
import { isLoopback, listenUrl, nonLoopbackAddresses } from '../../http/auth.ts';
import { buildServer } from '../../http/server.ts';
import { InvalidInputError } from '../../core/errors.ts';
import { wholeNumber } from '../../core/whole-number.ts';
import type { AppContext } from '../../http/context.ts';
import { startServices, type RunningService, type Service } from '../../http/services.ts';
import { providerSyncService } from '../../pipelines/events/sync-service.ts';
import { visitsMaintenanceService } from '../../pipelines/visits/maintenance.ts';
import { crmSyncService } from '../../pipelines/crm/service.ts';
import { servePoolMinimum } from '../../intake/accept.ts';
import { intakeService, serveWorkers } from '../../intake/service.ts';
import { importsRetentionService } from '../../intake/retention.ts';
import { untilSignal } from '../until-signal.ts';

/** Background services of `sluice serve`, in start order (each reads its own config). */
const SERVICES: Service[] = [intakeService, providerSyncService, visitsMaintenanceService, crmSyncService, importsRetentionService];

export function registerServe(program: Command): void {
  program
    .command('serve')
    .description('run the HTTP server (dashboard, API, /healthz, /metrics)')
    .option('--port <port>', 'port to listen on (default SLUICE_PORT or 8080)')
    .option('--host <host>', 'address to listen on (default SLUICE_HOST or 127.0.0.1)')
    .action(async (opts: { port?: string; host?: string }) => {
      // Every setting before anything is opened: a bad value is bad usage (exit 2), and
      // nothing is left behind to keep the process alive.
      checkSettings('serve');
      const portText = opts.port ?? String(intEnv('SLUICE_PORT', 8080));
      const port = wholeNumber(portText);
      if (port === undefined || port > 65535) throw new InvalidInputError(`invalid port: ${JSON.stringify(portText)} (a whole number 0-65535)`);
      const host = opts.host ?? env('SLUICE_HOST') ?? '127.0.0.1';
      const apiToken = env('SLUICE_API_TOKEN');
      if (!isLoopback(host) && !apiToken) {
        throw new InvalidInputError(
          `refusing to listen on ${host} without SLUICE_API_TOKEN: only a loopback address (127.0.0.1, ::1 or localhost) may run open; set SLUICE_API_TOKEN or listen on 127.0.0.1`,
        );
      }
      // A name that does not resolve is bad usage, told before the pool, queue and workers
      // start (it failed at listen, exit 1, after all of them).
      await lookup(host, { all: true }).catch((err: NodeJS.ErrnoException) => {
        throw new InvalidInputError(`cannot listen on ${host}: the name does not resolve (${err.code ?? err.message})`);
      });
      const poolSize = intEnv('SLUICE_DB_POOL', 20);
      const needed = servePoolMinimum(serveWorkers());
      if (poolSize < needed) {
        throw new InvalidInputError(
          `SLUICE_DB_POOL must be at least ${needed} with SLUICE_WORKERS=${serveWorkers()} (a connection per part worker and up to three for a merge, four for other requests, one for an upload), got ${poolSize}`,
        );
      }
      // What the intake and one upload need stays open (openDb: keep).
      const pool = await openDb({ max: poolSize, keep: needed });
      const ctx: AppContext = { pool, apiToken };
      let app: FastifyInstance | undefined;
      let services: RunningService | undefined;
      // Each step runs even when the one before fails: a pool, queue or LISTEN connection
      // left open would keep the process alive.
      const stop = async () => {
        await app?.close().catch(() => {});
        await services?.stop();
        // A service that failed half-way through its start was not stopped by startServices:
        // the intake sets ctx.boss before starting its workers (a second stop is a no-op).
        await ctx.boss?.stop({ graceful: false }).catch(() => {});
        await pool.end().catch(() => {});
      };
      try {
        app = await buildServer(ctx, { logger: true, imports: { logUploads: true } });
        services = await startServices(SERVICES, ctx, app);
        void untilSignal().then(stop).then(() => process.exit(0));
        // Fails when the port is taken (or the address is not ours), or when a route's
        // plugin fails to load: the workers and services started above must stop, or they
        // would keep the process alive without a server.
        await app.listen({ port, host });
        // What was bound, not what was asked: `localhost` resolved by this machine's resolver
        // (a hosts file may say anything) must still give loopback addresses only.
        // (The main server's address first: Fastify lists it last.)
        const bound = app.addresses().reverse();
        const exposed = nonLoopbackAddresses(bound);
        if (exposed.length > 0 && !apiToken) {
          throw new InvalidInputError(`refusing to run without SLUICE_API_TOKEN: ${host} was bound to ${exposed.join(' and ')}, which is not loopback`);
        }
        process.stderr.write(`sluice: listening on ${bound.map(listenUrl).join(' and ')}\n`);
      } catch (err) {
        await stop();
        throw err;
      }
    });
}
