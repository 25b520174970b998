/** The file argument of `sluice import` and `sluice inspect`. */
import fs from 'node:fs';
import { InvalidInputError } from '../core/errors.ts';

/**
 * Checks that `file` is a readable regular file and returns its stats. A path that is not
 * one is a clear usage error (InvalidInputError: exit 2), not a raw ENOENT or EISDIR.
 */
export function fileArgument(file: string): fs.Stats {
  let stat: fs.Stats;
  try {
    stat = fs.statSync(file);
  } catch (err) {
    throw new InvalidInputError(`cannot read ${JSON.stringify(file)}: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (err as Error).message}`, { cause: err });
  }
  if (!stat.isFile()) throw new InvalidInputError(`${JSON.stringify(file)} is not a file${stat.isDirectory() ? ' (a directory)' : ''}`);
  return stat;
}
