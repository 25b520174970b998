/**
 * Values in PostgreSQL's COPY text format: tab-separated, `\N` for null, and backslash,
 * tab, newline and carriage return escaped (https://www.postgresql.org/docs/current/sql-copy.html).
 * A NUL character cannot be stored in a Postgres text value at all (COPY fails the whole
 * statement on it): data values holding one are refused (copyData, the row is rejected),
 * and text Sluice records about them (a reject's raw line) shows it as U+2400 (␀).
 */
const NEEDS_ESCAPE = /[\\\t\n\r\0]/;

function escape(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/\t/g, '\\t').replace(/\n/g, '\\n').replace(/\r/g, '\\r');
}

/** `v` as COPY text; a NUL shown as ␀ (for text Sluice records, not data values: see copyData). */
export function copyValue(v: string): string {
  if (!NEEDS_ESCAPE.test(v)) return v;
  return escape(v.includes('\0') ? v.replace(/\0/g, '\u2400') : v);
}

/** A data value as COPY text, or undefined when it holds a NUL (Postgres cannot store it). */
export function copyData(v: string): string | undefined {
  if (!NEEDS_ESCAPE.test(v)) return v;
  return v.includes('\0') ? undefined : escape(v);
}

/** A text[] value: an array literal with every element quoted, then COPY-escaped. */
export function copyArray(items: string[]): string {
  const literal = `{${items.map((s) => `"${s.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`).join(',')}}`;
  return copyValue(literal);
}
