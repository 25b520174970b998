/** Rejects as CSV (RFC 4180 quoting) or NDJSON, shared by the CLI and HTTP. */
import type { RejectRow } from '../db/sql/imports.ts';

export type RejectFormat = 'csv' | 'ndjson';

export const rejectsCsvHeader = 'line,field,reason,raw\r\n';

function csvField(v: string): string {
  return /[",\r\n]/.test(v) ? `"${v.replace(/"/g, '""')}"` : v;
}

export function formatReject(r: RejectRow, fmt: RejectFormat): string {
  if (fmt === 'ndjson') return `${JSON.stringify({ line: r.line, field: r.field, reason: r.reason, raw: r.raw })}\n`;
  return `${r.line},${csvField(r.field ?? '')},${csvField(r.reason)},${csvField(r.raw)}\r\n`;
}
