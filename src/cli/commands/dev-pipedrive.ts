/**
 * `sluice dev pipedrive [--port P] [--rate-limit 80/2s|none] [--token T] [--latency MS]`:
 * the local Pipedrive simulator (src/dev/pipedrive-simulator.ts) in the foreground. Prints
 * its API root on stdout (`http://127.0.0.1:P/v1`), to use as PIPEDRIVE_BASE_URL.
 */
import type { Command } from 'commander';
import { env } from '../../config.ts';
import { InvalidInputError } from '../../core/errors.ts';
import { wholeNumber } from '../../core/whole-number.ts';
import { PipedriveSimulator } from '../../dev/pipedrive-simulator.ts';
import { isLoopback } from '../../http/auth.ts';
import { parseRateLimit } from '../../pipelines/crm/config.ts';
import { devCommand } from './dev-provider.ts';
import { untilSignal } from '../until-signal.ts';

interface Opts {
  port: string;
  host: string;
  rateLimit: string;
  token?: string;
  latency: string;
}

export function registerDevPipedrive(program: Command): void {
  devCommand(program)
    .command('pipedrive')
    .description('run a local Pipedrive API v1 simulator (in-memory, rate limited) for tests and demos')
    .option('--port <port>', 'port (0 = any free port)', '0')
    .option('--host <host>', 'loopback address to listen on', '127.0.0.1')
    .option('--rate-limit <limit>', 'requests per window, e.g. 80/2s, or "none"', '80/2s')
    .option('--token <token>', 'required API token (default PIPEDRIVE_API_TOKEN; unset = any)')
    .option('--latency <ms>', 'added to every response', '0')
    .action(async (opts: Opts) => {
      const port = wholeNumber(opts.port);
      if (port === undefined || port > 65535) throw new InvalidInputError(`invalid port: ${opts.port}`);
      if (!isLoopback(opts.host)) throw new InvalidInputError(`the simulator listens on loopback only, not ${opts.host}`);
      const rateLimit = opts.rateLimit === 'none' ? undefined : parseRateLimit(opts.rateLimit);
      if (opts.rateLimit !== 'none' && !rateLimit) throw new InvalidInputError(`--rate-limit: expected like 80/2s or none, got ${opts.rateLimit}`);
      const latencyMs = Number(opts.latency);
      if (!Number.isFinite(latencyMs) || latencyMs < 0) throw new InvalidInputError(`--latency: expected milliseconds, got ${opts.latency}`);
      const sim = new PipedriveSimulator({ rateLimit, token: opts.token ?? env('PIPEDRIVE_API_TOKEN'), latencyMs });
      const url = await sim.listen(port, opts.host);
      process.stdout.write(`${url}\n`);
      process.stderr.write(`pipedrive simulator on ${url} (rate limit ${opts.rateLimit}; control: ${url.replace(/\/v1$/, '')}/_sim/stats)\n`);
      await untilSignal();
      await sim.close();
    });
}
