/**
 * Query (and path) parameters, read strictly: a parameter given twice (`?limit=1&limit=2`,
 * which Fastify hands over as an array) is refused rather than one of them picked, and a
 * number is plain decimal digits (`1e2`, `0x10`, ` 7` are refused, though `Number` takes them).
 */
import { InvalidInputError } from '../core/errors.ts';
import { wholeNumber } from '../core/whole-number.ts';

export type Query = Record<string, unknown>;

/** The parameter's text, undefined when absent or empty. */
export function stringParam(query: Query, name: string): string | undefined {
  const v = query[name];
  if (v === undefined || v === '') return undefined;
  if (typeof v !== 'string') throw new InvalidInputError(`${name} must be given once`);
  return v;
}

/** The parameter as an integer within `range`, undefined when absent or empty. */
export function intParam(query: Query, name: string, range: { min: number; max: number }): number | undefined {
  const v = stringParam(query, name);
  if (v === undefined) return undefined;
  const n = wholeNumber(v);
  if (n === undefined || n < range.min || n > range.max) {
    throw new InvalidInputError(range.max === Number.MAX_SAFE_INTEGER ? `${name} must be an integer >= ${range.min}` : `${name} must be an integer from ${range.min} to ${range.max}`);
  }
  return n;
}
