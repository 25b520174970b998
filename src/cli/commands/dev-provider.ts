/**
 * `sluice dev provider`: the local provider simulator (src/dev/provider-simulator.ts).
 * `devCommand(program)` is the shared `dev` parent for other development helpers.
 */
import fs from 'node:fs';
import type { Command } from 'commander';
import { InvalidInputError } from '../../core/errors.ts';
import { wholeNumber } from '../../core/whole-number.ts';
import { SIMULATOR_MODES, startProviderSimulator, type SimulatorMode } from '../../dev/provider-simulator.ts';
import { untilSignal } from '../until-signal.ts';

/** The `dev` command, created on first use. */
export function devCommand(program: Command): Command {
  return program.commands.find((c) => c.name() === 'dev') ?? program.command('dev').description('development helpers (simulators, generators)');
}

interface Opts {
  port: string;
  responses?: string;
  generate?: string;
  mode: string;
  slowMs: string;
  basicAuth?: string;
}

export function registerDevProvider(program: Command): void {
  devCommand(program)
    .command('provider')
    .description('run a local provider feed simulator on 127.0.0.1 (see /_control for failures)')
    .option('--port <port>', 'port to listen on (0: any free port)', '8090')
    .option('--responses <files>', 'comma-separated XML files served in order (the last repeats)')
    .option('--generate <NxM>', 'serve a generated feed of N events x M zones, e.g. 5000x200')
    .option('--mode <mode>', `start in this mode: ${SIMULATOR_MODES.join(', ')}`, 'ok')
    .option('--slow-ms <ms>', 'delay between chunks in slow mode', '1000')
    .option('--basic-auth <user:password>', 'require HTTP Basic authorization for the feed (401 without it)')
    .action(async (opts: Opts) => {
      const port = wholeNumber(opts.port);
      if (port === undefined || port > 65535) throw new InvalidInputError(`invalid port: ${opts.port}`);
      if (!SIMULATOR_MODES.includes(opts.mode as SimulatorMode)) throw new InvalidInputError(`--mode must be one of ${SIMULATOR_MODES.join(', ')}`);
      const slowMs = wholeNumber(opts.slowMs);
      if (slowMs === undefined) throw new InvalidInputError(`--slow-ms must be a whole number of milliseconds, got ${JSON.stringify(opts.slowMs)}`);
      let basicAuth: { user: string; password: string } | undefined;
      if (opts.basicAuth !== undefined) {
        const at = opts.basicAuth.indexOf(':');
        if (at < 1) throw new InvalidInputError('--basic-auth takes user:password');
        basicAuth = { user: opts.basicAuth.slice(0, at), password: opts.basicAuth.slice(at + 1) };
      }
      let generate: { events: number; zones: number } | undefined;
      if (opts.generate) {
        const m = /^(\d+)x(\d+)$/.exec(opts.generate);
        if (!m) throw new InvalidInputError('--generate takes NxM, e.g. 5000x200');
        generate = { events: Number(m[1]), zones: Number(m[2]) };
      }
      const responses = opts.responses?.split(',').map((f) => {
        try {
          return fs.readFileSync(f, 'utf8');
        } catch (err) {
          throw new InvalidInputError(`cannot read ${f}: ${(err as Error).message}`);
        }
      });
      if (!generate && !responses) throw new InvalidInputError('give --responses <files> or --generate NxM');
      const sim = await startProviderSimulator({
        port,
        slowMs,
        ...(basicAuth ? { basicAuth } : {}),
        ...(responses ? { responses } : {}),
        ...(generate ? { generate } : {}),
      });
      sim.setMode(opts.mode as SimulatorMode);
      process.stderr.write(`sluice: provider simulator serving ${sim.url} (control: ${sim.url.replace(/\/feed$/, '/_control')})\n`);
      await untilSignal();
      await sim.close();
    });
}
