/**
 * Typed values from the text fields of Brazilian exports. Each parser returns the value in
 * the form PostgreSQL accepts (numeric text, ISO date text, boolean), `null` for the literal
 * `NULL`, or `{ error }` describing the problem: a per-row reject, never an exception.
 *
 * `NULL` is matched exactly (upper case, as the exports write it); an empty string is an error,
 * not a null, because an empty field in a whitespace-separated row cannot occur silently.
 */

export interface ValueError {
  error: string;
}

/**
 * Brazilian decimal (comma as decimal separator) -> numeric text with a dot.
 *
 * Accepted: an optional `-`, then either
 *   - plain digits with an optional comma fraction: `399` -> `399`, `399,00` -> `399.00`,
 *     `1969,9` -> `1969.9`;
 *   - grouped thousands, only in the exact form d{1,3}(.ddd)+,dd: `1.234,56` -> `1234.56`,
 *     `12.345.678,90` -> `12345678.90`.
 * Anything else is malformed, notably `1.234` (thousands or decimals? ambiguous), `1.234,5`,
 * `12.34,56`, `1,234.56` (US style), `399,`, `,50`, spaces and `NaN`.
 */
export function parseDecimalComma(s: string): string | null | ValueError {
  if (s === 'NULL') return null;
  const n = s.length;
  let i = s.charCodeAt(0) === 45 /* - */ ? 1 : 0;
  const intStart = i;
  while (i < n && isDigit(s.charCodeAt(i))) i++;
  const intEnd = i;
  if (intEnd === intStart) return malformedNumber(s);
  if (i === n) return s; // plain integer, already numeric text
  const c = s.charCodeAt(i);
  if (c === 44 /* , */) {
    i++;
    const fracStart = i;
    while (i < n && isDigit(s.charCodeAt(i))) i++;
    if (i !== n || i === fracStart) return malformedNumber(s);
    return `${s.slice(0, intEnd)}.${s.slice(fracStart)}`;
  }
  if (c === 46 /* . */) return parseGrouped(s, intStart);
  return malformedNumber(s);
}

// d{1,3}(.ddd)+,dd starting at `from` (after the optional sign).
function parseGrouped(s: string, from: number): string | ValueError {
  const n = s.length;
  let i = from;
  while (i < n && isDigit(s.charCodeAt(i))) i++;
  const lead = i - from;
  if (lead < 1 || lead > 3) return malformedNumber(s);
  let groups = 0;
  while (i < n && s.charCodeAt(i) === 46) {
    if (i + 3 >= n) return malformedNumber(s);
    if (!isDigit(s.charCodeAt(i + 1)) || !isDigit(s.charCodeAt(i + 2)) || !isDigit(s.charCodeAt(i + 3))) {
      return malformedNumber(s);
    }
    i += 4;
    groups++;
  }
  // Exactly ",dd" must remain.
  if (groups === 0 || n - i !== 3 || s.charCodeAt(i) !== 44) return malformedNumber(s);
  if (!isDigit(s.charCodeAt(i + 1)) || !isDigit(s.charCodeAt(i + 2))) return malformedNumber(s);
  return `${s.slice(0, i).replaceAll('.', '')}.${s.slice(i + 1)}`;
}

/**
 * ISO 8601 calendar date `YYYY-MM-DD` -> the same text, once it is a real date of the
 * Gregorian calendar (month 1-12, day within the month, 29 February only in leap years:
 * divisible by 4 and not by 100, or by 400; year 0000 does not exist). `NULL` -> null.
 * Wrong shape -> `malformed date: ...`; right shape, no such day -> `impossible date: ...`.
 */
export function parseIsoDate(s: string): string | null | ValueError {
  if (s === 'NULL') return null;
  if (s.length !== 10 || s.charCodeAt(4) !== 45 || s.charCodeAt(7) !== 45) return { error: `malformed date: ${show(s)}` };
  for (const i of DATE_DIGITS) if (!isDigit(s.charCodeAt(i))) return { error: `malformed date: ${show(s)}` };
  const year = num(s, 0, 4);
  const month = num(s, 5, 7);
  const day = num(s, 8, 10);
  if (!storableYear(year) || !realDateTime(year, month, day)) {
    return { error: `impossible date: ${s}` };
  }
  return s;
}

/** `0` -> false, `1` -> true, `NULL` -> null; anything else -> `malformed bit: ...`. */
export function parseBit(s: string): boolean | null | ValueError {
  if (s === '0') return false;
  if (s === '1') return true;
  if (s === 'NULL') return null;
  return { error: `malformed bit: ${show(s)}` };
}

/** True when a parser result is an error (narrows the union). */
export function isValueError(v: unknown): v is ValueError {
  return typeof v === 'object' && v !== null && 'error' in v;
}

const DATE_DIGITS = [0, 1, 2, 3, 5, 6, 8, 9];
const MONTH_DAYS = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

/**
 * True when `y-m-d h:mi:s` names a real instant of the proleptic Gregorian calendar (no
 * 2021-09-31, no 29 February outside leap years, no 25:00, no leap second). One check for
 * every date Sluice reads: purchases' dates, the provider feed, /search bounds, visits.
 */
export function realDateTime(y: number, m: number, d: number, h = 0, mi = 0, s = 0): boolean {
  return m >= 1 && m <= 12 && d >= 1 && d <= daysInMonth(y, m) && h >= 0 && h <= 23 && mi >= 0 && mi <= 59 && s >= 0 && s <= 59;
}

/**
 * A reject ratio (`--max-reject-ratio`, `max_reject_ratio=`): a number from 0 to 1 written
 * in decimal (`0`, `0.05`, `.5`, `1`); undefined for anything else (`''`, `1e-1`, `-0`).
 */
export function parseRatio(text: string): number | undefined {
  if (!/^(?:\d+(?:\.\d*)?|\.\d+)$/.test(text)) return undefined;
  const n = Number(text);
  return n >= 0 && n <= 1 ? n : undefined;
}

/** A UTC offset that exists: hours 00-23, minutes 00-59 (`+24:00`, `+25:00` do not). */
export function realOffset(hours: number, minutes: number): boolean {
  return hours >= 0 && hours <= 23 && minutes >= 0 && minutes <= 59;
}

/** The years Postgres stores in a date or timestamp written as 4 digits: it has no year 0. */
export function storableYear(year: number): boolean {
  return year >= 1 && year <= 9999;
}

function daysInMonth(year: number, month: number): number {
  if (month === 2 && (year % 4 === 0 && (year % 100 !== 0 || year % 400 === 0))) return 29;
  return MONTH_DAYS[month - 1]!;
}

function isDigit(c: number): boolean {
  return c >= 48 && c <= 57;
}

function num(s: string, from: number, to: number): number {
  let v = 0;
  for (let i = from; i < to; i++) v = v * 10 + (s.charCodeAt(i) - 48);
  return v;
}

function malformedNumber(s: string): ValueError {
  return { error: `malformed number: ${show(s)}` };
}

// Error text ends up in reject reasons: keep a runaway field from bloating them
// (the full raw row is stored with the reject anyway).
function show(s: string): string {
  return s.length > 40 ? `${s.slice(0, 40)}…` : s;
}
