/**
 * Page visits: the type and the validation of what clients send.
 *
 * Terminology
 * - visit: one page view (visited_at, visitor_id, page_path), stamped `received_at` by the
 *   Sluice process that took the request.
 * - visitor: whoever holds a visitor id (the original app's session UUID, or our cookie).
 * - flush: one transaction that COPYs many buffered visits and updates the rollups (group
 *   commit); a request is acknowledged (202) only after its flush committed.
 * - rollup: per-second / per-minute counts kept in the same transaction as the visits, so
 *   the live page reads a few hundred rows whatever the traffic.
 * - lag: from receipt to committed (visible to every reader).
 */
import { InvalidInputError } from '../../core/errors.ts';
import { realDateTime, realOffset } from '../../validate/values.ts';

/** A validated visit; times are epoch milliseconds (cheaper than Date objects at 100k/s). */
export interface Visit {
  visitedAt: number;
  visitorId: string;
  pagePath: string;
  receivedAt: number;
}

export interface VisitLimits {
  /** Longest page_path accepted (default 2048). */
  maxPathLength: number;
  /** Longest visitor_id accepted (default 128). */
  maxVisitorLength: number;
  /** Oldest visited_at accepted, in ms before receipt (default 7 days): older data is a backfill, not live. */
  maxAgeMs: number;
  /** Largest clock skew accepted for a visited_at in the future (default 5 minutes). */
  maxFutureMs: number;
}

export const DEFAULT_LIMITS: VisitLimits = {
  maxPathLength: 2048,
  maxVisitorLength: 128,
  maxAgeMs: 7 * 86_400_000,
  maxFutureMs: 5 * 60_000,
};

const FIELDS = new Set(['page_path', 'visitor_id', 'visited_at']);
// Control characters (C0, DEL and C1) would corrupt logs and the live page; no page path or
// visitor id needs them.
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;
// With the u flag a regex reads code points: only a surrogate that is not half of a pair is one
// (String.prototype.isWellFormed, which the project's ES2023 lib does not declare).
const LONE_SURROGATE = /\p{Cs}/u;
// RFC 3339 date-time (what JSON clients send; lower-case t/z and a space allowed, as its
// section 5.6 notes). Date.parse alone accepts far too much, and rolls impossible dates over.
const RFC3339 = /^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?(?:[Zz]|([+-])(\d{2}):(\d{2}))$/;

/**
 * Validates one visit object. `visitorId` supplies the id when the object has none (the
 * cookie visitor); it is called lazily so a cookie is only minted when needed.
 * Throws InvalidInputError with the reason, prefixed by `where` ("line 3: ...").
 */
export function parseVisit(
  raw: unknown,
  receivedAt: number,
  visitorId: () => string,
  limits: VisitLimits = DEFAULT_LIMITS,
  where = '',
): Visit {
  const fail = (reason: string): never => {
    throw new InvalidInputError(`${where}${reason}`);
  };
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) fail('a visit must be a JSON object');
  const obj = raw as Record<string, unknown>;
  for (const key of Object.keys(obj)) {
    if (!FIELDS.has(key)) fail(`unknown field ${JSON.stringify(key)} (expected page_path, visitor_id, visited_at)`);
  }

  const path = obj.page_path;
  if (path === undefined || path === null) fail('page_path is required');
  if (typeof path !== 'string') fail('page_path must be a string');
  const p = path as string;
  if (!p.startsWith('/')) fail('page_path must start with "/"');
  if (p.length > limits.maxPathLength) fail(`page_path is longer than ${limits.maxPathLength} characters`);
  if (CONTROL.test(p)) fail('page_path contains control characters');
  // A lone surrogate (JSON allows "\ud800") cannot be stored as UTF-8: it would become U+FFFD.
  if (LONE_SURROGATE.test(p)) fail('page_path is not well-formed Unicode (lone surrogate)');

  let visitor: string;
  if (obj.visitor_id === undefined || obj.visitor_id === null) {
    visitor = visitorId();
  } else {
    if (typeof obj.visitor_id !== 'string') fail('visitor_id must be a string');
    visitor = obj.visitor_id as string;
    if (visitor.length === 0) fail('visitor_id must not be empty');
    if (visitor.length > limits.maxVisitorLength) fail(`visitor_id is longer than ${limits.maxVisitorLength} characters`);
    if (CONTROL.test(visitor)) fail('visitor_id contains control characters');
    // Stored as U+FFFD, "\ud800" and "\udfff" would be the same visitor.
    if (LONE_SURROGATE.test(visitor)) fail('visitor_id is not well-formed Unicode (lone surrogate)');
  }

  let visitedAt = receivedAt;
  if (obj.visited_at !== undefined && obj.visited_at !== null) {
    const m = typeof obj.visited_at === 'string' ? RFC3339.exec(obj.visited_at) : null;
    if (!m) fail('visited_at must be an RFC 3339 date-time such as "2025-01-31T12:00:00Z"');
    visitedAt = rfc3339Time(m!);
    if (!Number.isFinite(visitedAt)) fail(`visited_at is not a valid date: ${obj.visited_at as string}`);
    if (visitedAt < receivedAt - limits.maxAgeMs) fail(`visited_at is more than ${Math.round(limits.maxAgeMs / 86_400_000)} days in the past`);
    if (visitedAt > receivedAt + limits.maxFutureMs) fail('visited_at is in the future');
  }
  return { visitedAt, visitorId: visitor, pagePath: p, receivedAt };
}

/**
 * Epoch ms of an RFC3339 match, or NaN for a date or time that does not exist (2026-02-30,
 * 24:00, 12:60, a +24:00 offset, a leap second: Date cannot represent one), which Date.parse
 * would roll over into the next day or month.
 */
function rfc3339Time(m: RegExpExecArray): number {
  const [year, month, day, hour, minute, second] = m.slice(1, 7).map(Number) as [number, number, number, number, number, number];
  const offsetHours = m[9] === undefined ? 0 : Number(m[9]);
  const offsetMinutes = m[10] === undefined ? 0 : Number(m[10]);
  if (!realDateTime(year, month, day, hour, minute, second) || !realOffset(offsetHours, offsetMinutes)) return Number.NaN;
  const utc = new Date(Date.UTC(year, month - 1, day, hour, minute, second));
  // Date.UTC maps years 0-99 to 1900-1999; setUTCFullYear does not.
  utc.setUTCFullYear(year);
  // Milliseconds: the first three fractional digits (Sluice stores milliseconds).
  const ms = m[7] ? Number(m[7].slice(1, 4).padEnd(3, '0')) : 0;
  const offset = (m[8] === '-' ? -1 : 1) * (offsetHours * 60 + offsetMinutes) * 60_000;
  return utc.getTime() + ms - offset;
}

/**
 * Validates a batch given as a parsed JSON array (see parseBatchText for text). All or nothing: the
 * first bad item fails the batch with its position, so a client never has to work out which
 * half of a batch was stored.
 */
export function parseBatch(
  body: unknown,
  receivedAt: number,
  visitorId: () => string,
  maxItems: number,
  limits: VisitLimits = DEFAULT_LIMITS,
): Visit[] {
  if (!Array.isArray(body)) throw new InvalidInputError('a batch must be a JSON array or NDJSON (one visit object per line)');
  if (body.length === 0) throw new InvalidInputError('the batch is empty');
  if (body.length > maxItems) throw new InvalidInputError(`the batch has ${body.length} visits; the limit is ${maxItems}`);
  const out = new Array<Visit>(body.length);
  for (let i = 0; i < body.length; i++) out[i] = parseVisit(body[i], receivedAt, visitorId, limits, `item ${i}: `);
  return out;
}

/** Validates a batch sent as text: NDJSON (one visit object per line) or a JSON array. */
export function parseBatchText(
  text: string,
  receivedAt: number,
  visitorId: () => string,
  maxItems: number,
  limits: VisitLimits = DEFAULT_LIMITS,
): Visit[] {
  const trimmed = text.trimStart();
  if (trimmed.startsWith('[')) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(trimmed);
    } catch (err) {
      throw new InvalidInputError(`the body is not valid JSON: ${(err as Error).message}`, { cause: err });
    }
    return parseBatch(parsed, receivedAt, visitorId, maxItems, limits);
  }
  const out: Visit[] = [];
  let line = 0;
  let start = 0;
  while (start <= text.length) {
    let end = text.indexOf('\n', start);
    if (end < 0) end = text.length;
    line++;
    const raw = text.slice(start, end).trim();
    start = end + 1;
    if (raw === '') continue;
    if (out.length >= maxItems) throw new InvalidInputError(`the batch has more than ${maxItems} visits (the limit)`);
    let parsed: unknown;
    try {
      parsed = JSON.parse(raw);
    } catch {
      throw new InvalidInputError(`line ${line}: not valid JSON`);
    }
    out.push(parseVisit(parsed, receivedAt, visitorId, limits, `line ${line}: `));
  }
  if (out.length === 0) throw new InvalidInputError('the batch is empty');
  return out;
}
