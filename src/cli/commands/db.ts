/** `sluice db url|stop`: the database Sluice uses. */
import type { Command } from 'commander';
import { env } from '../../config.ts';
import { stopEmbedded } from '../../db/embedded.ts';
import { databaseUrl } from '../../db/pool.ts';

export function registerDb(program: Command): void {
  const db = program.command('db').description('the database Sluice uses');
  db.command('url')
    .description('print the connection URL (starts the embedded server if needed)')
    .action(async () => {
      process.stdout.write(`${await databaseUrl()}\n`);
    });
  db.command('stop')
    .description('stop the embedded server of SLUICE_HOME (no-op with DATABASE_URL)')
    .action(() => {
      if (env('DATABASE_URL')) {
        process.stderr.write('DATABASE_URL is set: Sluice does not manage that server\n');
        return;
      }
      process.stderr.write(stopEmbedded() ? 'embedded Postgres stopped\n' : 'embedded Postgres was not running\n');
    });
}
