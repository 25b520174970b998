/** `sluice serve`: the HTTP server, plus the background services configured by env. */
import type { Command } from 'commander';
import { env, intEnv } from '../../config.ts';
import { openDb } from '../../db/pool.ts';
import { buildServer, isLoopback } from '../../http/server.ts';
import { InvalidInputError } from '../../core/errors.ts';
import { startServices, type Service } from '../../http/services.ts';
import { providerSyncService } from '../../pipelines/events/sync-service.ts';
import { visitsMaintenanceService } from '../../pipelines/visits/maintenance.ts';
import { crmSyncService } from '../../pipelines/crm/service.ts';
import { intakeService } from '../../intake/service.ts';

/** Background services of `sluice serve`, in start order (each reads its own config). */
const SERVICES: Service[] = [intakeService, providerSyncService, visitsMaintenanceService, crmSyncService];

export function registerServe(program: Command): void {
  program
    .command('serve')
    .description('run the HTTP server (dashboard, API, /healthz, /metrics)')
    .option('--port <port>', 'port to listen on (default SLUICE_PORT or 8080)')
    .option('--host <host>', 'address to listen on (default SLUICE_HOST or 127.0.0.1)')
    .action(async (opts: { port?: string; host?: string }) => {
      const portText = opts.port ?? String(intEnv('SLUICE_PORT', 8080));
      const port = Number(portText);
      if (!/^\d+$/.test(portText) || port > 65535) throw new InvalidInputError(`invalid port: ${JSON.stringify(portText)} (a whole number 0-65535)`);
      const host = opts.host ?? env('SLUICE_HOST') ?? '127.0.0.1';
      const apiToken = env('SLUICE_API_TOKEN');
      if (!isLoopback(host) && !apiToken) {
        throw new InvalidInputError(`refusing to listen on ${host} without SLUICE_API_TOKEN (only loopback may run open)`);
      }
      const pool = await openDb({ max: intEnv('SLUICE_DB_POOL', 20) });
      const ctx = { pool, apiToken };
      const app = await buildServer(ctx, { logger: true });
      const services = await startServices(SERVICES, ctx, app);
      const stop = async () => {
        await app.close();
        await services.stop();
        await pool.end();
      };
      process.once('SIGINT', () => void stop().then(() => process.exit(0)));
      process.once('SIGTERM', () => void stop().then(() => process.exit(0)));
      let address: string;
      try {
        address = await app.listen({ port, host });
      } catch (err) {
        // The port is taken (or the address is not ours): stop the workers and services
        // started above and fail, so a supervisor sees it; they would otherwise keep the
        // process alive without a server.
        await stop().catch(() => {});
        throw err;
      }
      process.stderr.write(`sluice: listening on ${address}\n`);
    });
}
