/**
 * `sluice`: the command-line entry point. Each command lives in src/cli/commands/ and
 * registers itself on the program. Only the modules of the command being run are loaded
 * (an import should not pay for the HTTP server's dependencies in startup time and RSS).
 * Exit codes: 0 success, 1 the work failed, 2 bad usage.
 */
import { Command, CommanderError } from 'commander';
import { SluiceError, errorMessage } from '../core/errors.ts';
import { maskUrlPasswords } from '../core/url-credentials.ts';

type Register = (program: Command) => void;

/** Top-level command name -> the registrations it needs. */
const COMMANDS: Record<string, Array<() => Promise<Register>>> = {
  serve: [async () => (await import('./commands/serve.ts')).registerServe],
  db: [async () => (await import('./commands/db.ts')).registerDb],
  import: [async () => (await import('./commands/import.ts')).registerImport],
  inspect: [async () => (await import('./commands/inspect.ts')).registerInspect],
  rejects: [async () => (await import('./commands/rejects.ts')).registerRejects],
  gen: [async () => (await import('./commands/gen.ts')).registerGen],
  worker: [async () => (await import('./commands/worker.ts')).registerWorker],
  loadtest: [async () => (await import('./commands/loadtest.ts')).registerLoadtest],
  sync: [
    async () => (await import('./commands/sync-events.ts')).registerSyncEvents,
    async () => (await import('./commands/sync-crm.ts')).registerSyncCrm,
  ],
  dev: [
    async () => (await import('./commands/dev-provider.ts')).registerDevProvider,
    async () => (await import('./commands/dev-pipedrive.ts')).registerDevPipedrive,
  ],
};

/**
 * Output to a reader that has gone (`sluice inspect f | head -1`): the write fails with
 * EPIPE, emitted as an 'error' on the stream, which nothing else handles (a stack trace,
 * exit 1). Stdout gone, the rest of the output has no reader: exit quietly, with the exit
 * code the command has set so far (0 if none). Stderr gone (progress, diagnostics), the work
 * goes on: an import is not abandoned half-way for its progress bar. Any other error on the
 * streams is thrown as before.
 */
process.stdout.on('error', (err: NodeJS.ErrnoException) => {
  if (err.code !== 'EPIPE') throw err;
  process.exit();
});
process.stderr.on('error', (err: NodeJS.ErrnoException) => {
  if (err.code !== 'EPIPE') throw err;
});

const program = new Command('sluice')
  .description('Big, messy data in; clean, queryable and fast inside PostgreSQL.')
  .showHelpAfterError()
  .exitOverride();

try {
  const name = process.argv[2];
  const wanted = name !== undefined && Object.hasOwn(COMMANDS, name) ? COMMANDS[name]! : Object.values(COMMANDS).flat();
  for (const load of wanted) (await load())(program);
  await program.parseAsync(process.argv);
} catch (err) {
  if (err instanceof CommanderError) {
    process.exitCode = err.exitCode === 0 ? 0 : 2;
  } else {
    const code = err instanceof SluiceError ? ` [${err.code}]` : '';
    // A URL in the message (a feed's, a CRM source's) is shown without its password.
    process.stderr.write(`sluice: ${maskUrlPasswords(errorMessage(err))}${code}\n`);
    process.exitCode = err instanceof SluiceError && err.code === 'invalid_input' ? 2 : 1;
  }
}
