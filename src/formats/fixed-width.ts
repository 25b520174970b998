/**
 * The whitespace-aligned text export used by the purchases pipeline (Neoway `base_teste.txt`):
 *
 *   CPF                PRIVATE     INCOMPLETO  DATA DA ÚLTIMA COMPRA TICKET MÉDIO          ...
 *   041.091.641-25     0           0           NULL                  NULL                  ...
 *   866.315.609-00     0           0           2010-01-13            335,38                ...
 *
 * Data values never contain spaces (NULL stands for a missing value), so a data row is split on
 * whitespace runs: `line.trim().split(/\s+/)`. This is the hot loop of the import, and V8's
 * native regexp split measured faster than a hand-written charCodeAt scan (roughly 0.8-1.4M vs
 * 0.6-0.8M rows/s on this file, see bench/purchases-parse.ts), so the regexp stays.
 *
 * The header is harder: column names contain single spaces and are *usually* separated by two
 * or more, but not always. In the real file `DATA DA ÚLTIMA COMPRA TICKET MÉDIO` and
 * `TICKET DA ÚLTIMA COMPRA LOJA MAIS FREQUÊNTE LOJA DA ÚLTIMA COMPRA` are each two or three
 * names separated by one space, because the names fill their column exactly. The header alone
 * cannot tell those apart from multi-word names, so `parseFixedWidthHeader` takes an optional
 * sample data row: a header word that starts at the same offset as a field of that row starts
 * a new column too.
 */
import { InvalidFileError } from '../core/errors.ts';

export interface FixedWidthHeader {
  /** Column names as written (trimmed, inner single spaces kept, accents kept). */
  names: string[];
  /** Offset (UTF-16 code units, after a leading BOM is removed) where each column starts. */
  starts: number[];
}

/** Data lines read as samples for the header (HEADER_SAMPLE_ROWS first ones of the file). */
export const HEADER_SAMPLE_ROWS = 20;

/**
 * Column names and start offsets from the header line. Columns are separated by runs of two
 * or more whitespace characters (or any tab); with sample rows (data lines of the same file),
 * a header word starting exactly where a field starts in more than half of them also begins
 * a column. A majority, not the first row alone: one malformed first row (a missing value)
 * would otherwise shape every column of the file and get the good rows rejected.
 * Throws InvalidFileError when the line has no names.
 */
export function parseFixedWidthHeader(line: string, sampleRows?: string | readonly string[]): FixedWidthHeader {
  const header = stripBom(line);
  const rowStarts = sampleRows === undefined ? undefined : majorityStarts(typeof sampleRows === 'string' ? [sampleRows] : sampleRows);
  const starts: number[] = [];
  const ends: number[] = [];
  const n = header.length;
  let i = 0;
  while (i < n) {
    const wsStart = i;
    let tab = false;
    while (i < n && isWs(header.charCodeAt(i))) {
      if (header.charCodeAt(i) === 9) tab = true;
      i++;
    }
    if (i >= n) break;
    // i is the start of a word: it opens a column after a wide gap, at the line start, or
    // where the sample row has a field.
    const gap = i - wsStart;
    if (starts.length === 0 || gap >= 2 || tab || rowStarts?.has(i)) {
      if (starts.length > 0) ends.push(wsStart);
      starts.push(i);
    }
    while (i < n && !isWs(header.charCodeAt(i))) i++;
  }
  if (starts.length === 0) throw new InvalidFileError('the header line has no column names');
  ends.push(trimmedEnd(header));
  const names = starts.map((s, k) => header.slice(s, ends[k]).trimEnd());
  return { names, starts };
}

/** Offsets where a field starts in more than half of the non-blank `rows`. */
function majorityStarts(rows: readonly string[]): Set<number> {
  const counts = new Map<number, number>();
  let n = 0;
  for (const row of rows) {
    const starts = fieldStarts(stripBom(row));
    if (starts.length === 0) continue;
    n++;
    for (const s of starts) counts.set(s, (counts.get(s) ?? 0) + 1);
  }
  return new Set([...counts].filter(([, c]) => c * 2 > n).map(([s]) => s));
}

/**
 * The whitespace-separated fields of a data row, as `line.trim().split(/\s+/)` would give,
 * or `{ error: 'expected N fields, found M' }` when the count differs from `expected`
 * (an empty or blank line has 0 fields).
 */
export function splitFixedWidthRow(line: string, expected: number): string[] | { error: string } {
  const trimmed = line.trim();
  // ''.split(/\s+/) is [''], one empty field: a blank line has none.
  const fields = trimmed === '' ? [] : trimmed.split(WHITESPACE_RUN);
  if (fields.length !== expected) return { error: `expected ${expected} fields, found ${fields.length}` };
  return fields;
}

const WHITESPACE_RUN = /\s+/;

/** Offsets where the whitespace-separated fields of `line` start. */
function fieldStarts(line: string): number[] {
  const out: number[] = [];
  for (let i = 0; i < line.length; i++) {
    if (!isWs(line.charCodeAt(i)) && (i === 0 || isWs(line.charCodeAt(i - 1)))) out.push(i);
  }
  return out;
}

function trimmedEnd(s: string): number {
  let e = s.length;
  while (e > 0 && isWs(s.charCodeAt(e - 1))) e--;
  return e;
}

function stripBom(s: string): string {
  return s.charCodeAt(0) === 0xfeff ? s.slice(1) : s;
}

/**
 * Exactly the characters JavaScript's `\s` matches (ECMAScript WhiteSpace + LineTerminator),
 * so the header scan agrees with the row split. ASCII is decided in the first two comparisons.
 */
function isWs(c: number): boolean {
  if (c > 32 && c < 160) return false;
  if (c === 32 || (c >= 9 && c <= 13)) return true;
  if (c < 160) return false;
  return (
    c === 0xa0 ||
    c === 0x1680 ||
    (c >= 0x2000 && c <= 0x200a) ||
    c === 0x2028 ||
    c === 0x2029 ||
    c === 0x202f ||
    c === 0x205f ||
    c === 0x3000 ||
    c === 0xfeff
  );
}
