/** Rejects as CSV (RFC 4180 quoting, formula-safe cells) or NDJSON, shared by the CLI and HTTP. */
import type { RejectRow } from '../db/sql/imports.ts';

export type RejectFormat = 'csv' | 'ndjson';

export const rejectsCsvHeader = 'line,field,reason,raw\r\n';

/**
 * A cell a spreadsheet would read as a formula (`=`, `+`, `-`, `@`, tab, CR first: rejects
 * quote the file's raw text, which anyone may have written) gets a `'` in front, as OWASP
 * advises for CSV downloads; the NDJSON form keeps the exact text.
 */
const FORMULA_START = /^[=+\-@\t\r]/;

function csvField(v: string): string {
  const safe = FORMULA_START.test(v) ? `'${v}` : v;
  return /[",\r\n]/.test(safe) ? `"${safe.replace(/"/g, '""')}"` : safe;
}

export function formatReject(r: RejectRow, fmt: RejectFormat): string {
  if (fmt === 'ndjson') return `${JSON.stringify({ line: r.line, field: r.field, reason: r.reason, raw: r.raw })}\n`;
  return `${r.line},${csvField(r.field ?? '')},${csvField(r.reason)},${csvField(r.raw)}\r\n`;
}
