/**
 * `sluice`: the command-line entry point. Each command lives in src/cli/commands/ and
 * registers itself on the program. Exit codes: 0 success, 1 the work failed, 2 bad usage.
 */
import { Command, CommanderError } from 'commander';
import { SluiceError, errorMessage } from '../core/errors.ts';
import { registerDb } from './commands/db.ts';
import { registerServe } from './commands/serve.ts';

const program = new Command('sluice')
  .description('Big, messy data in; clean, queryable and fast inside PostgreSQL.')
  .showHelpAfterError()
  .exitOverride();

registerServe(program);
registerDb(program);

try {
  await program.parseAsync(process.argv);
} catch (err) {
  if (err instanceof CommanderError) {
    process.exitCode = err.exitCode === 0 ? 0 : 2;
  } else {
    const code = err instanceof SluiceError ? ` [${err.code}]` : '';
    process.stderr.write(`sluice: ${errorMessage(err)}${code}\n`);
    process.exitCode = err instanceof SluiceError && err.code === 'invalid_input' ? 2 : 1;
  }
}
