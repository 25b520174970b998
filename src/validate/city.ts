/** City names of the lead pipeline, as they are matched and stored in `cities`. */
import { collapseWhitespace } from './sanitize.ts';

/**
 * Longest city name accepted, in UTF-16 code units (`String.length`). `cities` has a unique
 * B-tree index on (name, state_id), whose entries may not exceed 2,704 bytes (a third of a
 * page): a longer name failed the whole import with Postgres's "index row size ... exceeds
 * btree version 4 maximum". 200 units are at most 600 bytes of UTF-8, far below that, and
 * above any real place name: Brazil's municipalities have names under 40 characters, the
 * longest name of a city in use (Bangkok's ceremonial one) about 170.
 */
export const MAX_CITY_CHARS = 200;

/**
 * A city cell (trimmed, non-blank, NFC: the row mapper composes every cell), each run of
 * whitespace one space, so the same city written in NFD (macOS exports), in NFC or with a
 * doubled space is one row of `cities`.
 * Case is kept (`SÃO PAULO` stays its own city: a product decision). Over MAX_CITY_CHARS:
 * an error (a field reject: the row imports without its place's city).
 */
export function cityName(v: string): string | { error: string } {
  const c = collapseWhitespace(v);
  if (c.length > MAX_CITY_CHARS) {
    // "<class>: <value>", as every reason (see stateAcronym); the value cut, the raw row is stored whole.
    return { error: `city longer than ${MAX_CITY_CHARS} characters: ${JSON.stringify(`${c.slice(0, 40)}…`)}` };
  }
  return c;
}
