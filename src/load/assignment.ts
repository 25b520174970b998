/**
 * What one merge policy does to one stored column: the SET expression of an UPDATE and the
 * predicate "this changes the stored value" (merge-sql.ts, chunk-sql.ts).
 */
import type { MergePolicy } from '../engine/pipeline.ts';

/** A character JavaScript's trim() keeps (the white space it removes, as a regular-expression class). */
const NOT_SPACE = '[^[:space:]\\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000\\ufeff]';

/**
 * SET expression and "this changes the stored value" predicate for one field of an
 * UPDATE: `incoming` is the merged value, `stored` the record's.
 */
export function assignment(merge: MergePolicy, incoming: string, stored: string, text: boolean): { set: string; changes: string } | undefined {
  // Blank as incoming cells are (trimmed by JavaScript, then empty): NULL, or text of white
  // space only. The pattern runs only on a value starting with a space or a non-ASCII
  // character: a stored value starting with a visible ASCII character is never blank.
  const isBlank = text
    ? `(CASE WHEN ${stored} IS NULL OR ${stored} = '' THEN true WHEN ascii(${stored}) BETWEEN 33 AND 126 THEN false ELSE ${stored} !~ '${NOT_SPACE}' END)`
    : `${stored} IS NULL`;
  switch (merge) {
    case 'overwrite':
      return {
        set: `COALESCE(${incoming}, ${stored})`,
        changes: `(${incoming} IS NOT NULL AND ${incoming} IS DISTINCT FROM ${stored})`,
      };
    case 'fill-if-blank':
      return { set: `CASE WHEN ${isBlank} AND ${incoming} IS NOT NULL THEN ${incoming} ELSE ${stored} END`, changes: `(${isBlank} AND ${incoming} IS NOT NULL)` };
    case 'add-to-set':
      // Staged sets are already de-duplicated (per row in Node, RowMapper; per key in the
      // fold). array_position, not <> ALL: a stored set holding a NULL (written outside
      // Sluice) would make every comparison NULL and keep every new member out.
      return {
        set: `CASE WHEN ${incoming} <@ ${stored} THEN ${stored} ELSE ${stored} || ARRAY(SELECT x FROM unnest(${incoming}) WITH ORDINALITY u(x, i) WHERE array_position(${stored}, x) IS NULL ORDER BY i) END`,
        changes: `NOT (${incoming} <@ ${stored})`,
      };
    case 'keep-first':
      return undefined;
  }
}
