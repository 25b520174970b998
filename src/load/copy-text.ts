/**
 * Values in PostgreSQL's COPY text format: tab-separated, `\N` for null, and backslash,
 * tab, newline and carriage return escaped (https://www.postgresql.org/docs/current/sql-copy.html).
 */
const NEEDS_ESCAPE = /[\\\t\n\r]/;

export function copyValue(v: string): string {
  if (!NEEDS_ESCAPE.test(v)) return v;
  return v.replace(/\\/g, '\\\\').replace(/\t/g, '\\t').replace(/\n/g, '\\n').replace(/\r/g, '\\r');
}

/** A text[] value: an array literal with every element quoted, then COPY-escaped. */
export function copyArray(items: string[]): string {
  const literal = `{${items.map((s) => `"${s.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`).join(',')}}`;
  return copyValue(literal);
}
