/**
 * The CRM sync pipeline's configuration: a YAML file, validated in full so one run reports
 * every mistake at once, each with its path (`value.multiplier: expected a number`).
 * Secrets never live in the file: the Pipedrive token comes from PIPEDRIVE_API_TOKEN only.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse as parseYaml } from 'yaml';
import { env } from '../../config.ts';
import { InvalidInputError, errorMessage } from '../../core/errors.ts';
import { credentialsMasked, maskUrlPasswords, withoutPassword } from '../../core/url-credentials.ts';
import type { RateLimit, RetryPolicy } from '../../clients/pipedrive.ts';
import { parseDuration, parseSchedule, type Schedule } from './schedule.ts';

export const SOURCE_NAMES = ['customers', 'orders', 'payments'] as const;
export type SourceName = (typeof SOURCE_NAMES)[number];

export type DealStatus = 'open' | 'won' | 'lost';
const DEAL_STATUSES: readonly string[] = ['open', 'won', 'lost'];

export interface PipedriveDestinationConfig {
  type: 'pipedrive';
  /** API root including `/v1`; config, else PIPEDRIVE_BASE_URL, else api.pipedrive.com. */
  baseUrl: string;
  personKeyField: string;
  dealKeyField: string;
  /** Requests in flight at most (default 8). */
  concurrency: number;
  /** The account's limit (default 80 per 2 s); lowered at run time if the API says less. */
  rateLimit: RateLimit;
  /** Requests allowed per UTC day for this pipeline, all runs together (default none). */
  dailyRequestBudget: number | undefined;
  /**
   * 5xx/network retries: attempts (6), first backoff (250 ms, doubled, full jitter), ceiling
   * (10 s); the longest 429 pause waited out (5 min; a longer Retry-After ends the run).
   */
  retry: RetryPolicy;
  timeoutMs: number;
}

/** The config's `schedule`: when runs start, and how soon an unsuccessful run is followed up. */
export type CrmSchedule = Schedule & {
  /**
   * `schedule.retry_after`: after a failed run, or one that left failed or unconfirmed
   * records, the next run comes this long after it (doubled per consecutive unsuccessful
   * run, never later than the next slot). Default 5 min; undefined: off (`retry_after: off`).
   */
  retryAfterMs: number | undefined;
};

/** `schedule.retry_after` when the file does not set it. */
export const DEFAULT_RETRY_AFTER_MS = 5 * 60_000;

export interface PostgresDestinationConfig {
  type: 'postgres';
}

export interface CrmConfig {
  /** Pipeline name: keys staging, runs and links (default `crm`). */
  name: string;
  file: string | undefined;
  /** http(s) URLs (credentials included, sent as Basic auth) or absolute local paths. */
  sources: Record<SourceName, string>;
  /**
   * `sources.<name>.allow_empty`: a source that may legitimately have no data rows. Without
   * it, a source with none (a header alone: a truncated export) fails the run before the
   * destination is written to.
   */
  allowEmpty: Record<SourceName, boolean>;
  schedule: CrmSchedule | undefined;
  value: { multiplier: number; currency: string; decimals: number };
  statusMap: Record<string, DealStatus>;
  defaultStatus: DealStatus;
  destination: PipedriveDestinationConfig | PostgresDestinationConfig;
}

/** Jaffle's order statuses: shipped and pending returns are still open business. */
export const DEFAULT_STATUS_MAP: Record<string, DealStatus> = {
  placed: 'open',
  shipped: 'open',
  completed: 'won',
  return_pending: 'open',
  returned: 'lost',
};

export const DEFAULT_BASE_URL = 'https://api.pipedrive.com/v1';

type Obj = Record<string, unknown>;

/**
 * A source's location as it may be shown, logged or stored: an http(s) URL with its password
 * masked (`http://admin:***@host/x.csv`); a local path as it is.
 */
export function shownLocation(location: string): string {
  return /^https?:\/\//i.test(location) ? withoutPassword(location) : location;
}

/**
 * Which resource a source location names, as a SHA-256 (hex): of the URL without its
 * credentials (the password masked as in `shownLocation`, a user given alone, a token,
 * masked whole; the user of `user:password@` kept, it says which account) but with its
 * query as written (`?date=2024-01-01`, `?account=a`: a query names the resource, a
 * password never does); of a local path as given. Two locations are the same source when
 * their identities are equal (a rotated password is; another `?date=` is not): only then is
 * a request conditional on the last fetch's validators (crm_sources.location_sha256), and
 * the config's fingerprint changes with it. A digest, so the query's secrets
 * (`?access_token=`) are not stored in clear; equal identities imply equal shown locations.
 */
export function sourceIdentity(location: string): string {
  // Not a URL after all: hashed as written (never stored, never shown).
  const text = /^https?:\/\//i.test(location) ? (credentialsMasked(location)?.toString() ?? location) : location;
  return createHash('sha256').update(text).digest('hex');
}

/** The keys only a Pipedrive destination takes (refused, saying so, for `type: postgres`). */
const PIPEDRIVE_KEYS = ['base_url', 'person_key_field', 'deal_key_field', 'concurrency', 'rate_limit', 'daily_request_budget', 'retry', 'timeout_ms'];

/** Collects every problem with its path, then throws them together. */
class Problems {
  readonly list: string[] = [];
  add(where: string, what: string): void {
    this.list.push(`${where}: ${what}`);
  }
}

function isObj(v: unknown): v is Obj {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function checkKeys(o: Obj, where: string, allowed: string[], p: Problems): void {
  for (const k of Object.keys(o)) {
    if (k === 'api_token' || k === 'token') {
      p.add(`${where}${k}`, 'secrets do not belong in the config file; set PIPEDRIVE_API_TOKEN in the environment');
    } else if (!allowed.includes(k)) {
      p.add(`${where}${k}`, `unknown key (allowed: ${allowed.join(', ')})`);
    }
  }
}

function num(o: Obj, key: string, where: string, p: Problems, def: number, min: number, integer = false): number {
  const v = o[key];
  if (v === undefined || v === null) return def;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < min || (integer && !Number.isInteger(v))) {
    p.add(`${where}${key}`, `expected ${integer ? 'an integer' : 'a number'} >= ${min}, got ${JSON.stringify(v)}`);
    return def;
  }
  return v;
}

function str(o: Obj, key: string, where: string, p: Problems, def?: string): string | undefined {
  const v = o[key];
  if (v === undefined || v === null) return def;
  if (typeof v !== 'string' || v.trim() === '') {
    p.add(`${where}${key}`, `expected a non-empty string, got ${JSON.stringify(v)}`);
    return def;
  }
  return v.trim();
}

/** `80/2s` -> 80 requests per 2000 ms. */
export function parseRateLimit(text: string): RateLimit | undefined {
  const m = /^\s*(\d+)\s*\/\s*(\d+(?:\.\d+)?)?\s*(ms|s|m)?\s*$/.exec(text);
  if (!m) return undefined;
  const limit = Number(m[1]);
  const amount = m[2] === undefined ? 1 : Number(m[2]);
  const unit = m[3] ?? 's';
  const windowMs = amount * (unit === 'ms' ? 1 : unit === 's' ? 1000 : 60_000);
  if (limit < 1 || windowMs <= 0) return undefined;
  return { limit, windowMs };
}

function resolveSource(v: string, baseDir: string): string | undefined {
  if (/^https?:\/\//i.test(v)) {
    try {
      return new URL(v).toString();
    } catch {
      return undefined;
    }
  }
  if (/^file:\/\//i.test(v)) {
    // Percent-decoded (`my%20dir` is "my dir"); a host other than localhost is refused.
    try {
      return fileURLToPath(v);
    } catch {
      return undefined;
    }
  }
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(v)) return undefined;
  return path.resolve(baseDir, v);
}

function validDestination(raw: unknown, p: Problems): CrmConfig['destination'] {
  const where = 'destination.';
  const d: Obj = isObj(raw) ? raw : {};
  if (raw !== undefined && !isObj(raw)) p.add('destination', 'expected a mapping');
  const type = str(d, 'type', where, p, 'pipedrive');
  if (type === 'postgres') {
    // Keys left over from a Pipedrive destination (`type` changed alone) say why they are refused.
    const leftover = Object.keys(d).filter((k) => PIPEDRIVE_KEYS.includes(k));
    for (const k of leftover) p.add(`${where}${k}`, 'only for the pipedrive destination (type: postgres takes no other key)');
    checkKeys(Object.fromEntries(Object.entries(d).filter(([k]) => !leftover.includes(k))), where, ['type'], p);
    return { type: 'postgres' };
  }
  if (type !== 'pipedrive') p.add(`${where}type`, `expected "pipedrive" or "postgres", got ${JSON.stringify(type)}`);
  checkKeys(d, where, ['type', ...PIPEDRIVE_KEYS], p);
  const baseUrl = str(d, 'base_url', where, p) ?? env('PIPEDRIVE_BASE_URL') ?? DEFAULT_BASE_URL;
  if (!/^https?:\/\/[^/]+/i.test(baseUrl)) p.add(`${where}base_url`, `expected an http(s) URL, got ${JSON.stringify(baseUrl)}`);
  let rateLimit: RateLimit = { limit: 80, windowMs: 2000 };
  if (d.rate_limit !== undefined) {
    const r = typeof d.rate_limit === 'string' ? parseRateLimit(d.rate_limit) : undefined;
    if (r) rateLimit = r;
    else p.add(`${where}rate_limit`, `expected "<requests>/<seconds>s" like "80/2s", got ${JSON.stringify(d.rate_limit)}`);
  }
  const retryRaw = d.retry ?? {};
  if (!isObj(retryRaw)) p.add(`${where}retry`, 'expected a mapping');
  const r: Obj = isObj(retryRaw) ? retryRaw : {};
  checkKeys(r, `${where}retry.`, ['max_attempts', 'base_ms', 'max_ms', 'max_retry_after_ms'], p);
  const budget = d.daily_request_budget;
  return {
    type: 'pipedrive',
    baseUrl: baseUrl.replace(/\/+$/, ''),
    personKeyField: str(d, 'person_key_field', where, p, 'CustomerID') as string,
    dealKeyField: str(d, 'deal_key_field', where, p, 'OrderID') as string,
    concurrency: num(d, 'concurrency', where, p, 8, 1, true),
    rateLimit,
    dailyRequestBudget: budget === undefined || budget === null ? undefined : num(d, 'daily_request_budget', where, p, 0, 1, true),
    retry: {
      maxAttempts: num(r, 'max_attempts', `${where}retry.`, p, 6, 1, true),
      baseMs: num(r, 'base_ms', `${where}retry.`, p, 250, 0),
      maxMs: num(r, 'max_ms', `${where}retry.`, p, 10_000, 0),
      maxRetryAfterMs: num(r, 'max_retry_after_ms', `${where}retry.`, p, 300_000, 0),
    },
    timeoutMs: num(d, 'timeout_ms', where, p, 30_000, 1),
  };
}

/** `schedule.retry_after`: a duration ("5m", "30s"), or `off` / `false` for none; default 5 min. */
function retryAfter(v: unknown, p: Problems): number | undefined {
  if (v === undefined || v === null) return DEFAULT_RETRY_AFTER_MS;
  // `off` is a string in YAML 1.2 (this parser) and a boolean in YAML 1.1: take both.
  if (v === false || v === 'off') return undefined;
  try {
    if (typeof v === 'string') return parseDuration(v);
  } catch {
    // reported below, with the way to turn it off
  }
  p.add('schedule.retry_after', `expected a duration like "5m" or "1h30m", or off, got ${JSON.stringify(v)}`);
  return DEFAULT_RETRY_AFTER_MS;
}

/** Validates a parsed document; `file` names it in errors and anchors relative paths. */
export function validateCrmConfig(doc: unknown, file?: string): CrmConfig {
  const p = new Problems();
  const o: Obj = isObj(doc) ? doc : {};
  if (!isObj(doc)) p.add('(top)', 'expected a YAML mapping');
  checkKeys(o, '', ['name', 'sources', 'schedule', 'value', 'status_map', 'default_status', 'destination'], p);
  const name = str(o, 'name', '', p, 'crm') as string;
  if (!/^[A-Za-z0-9_.-]{1,64}$/.test(name)) p.add('name', `expected letters, digits, "_", "-" or "." (1-64), got ${JSON.stringify(name)}`);

  const baseDir = file ? path.dirname(path.resolve(file)) : process.cwd();
  const sources = {} as Record<SourceName, string>;
  const allowEmpty = Object.fromEntries(SOURCE_NAMES.map((k) => [k, false])) as Record<SourceName, boolean>;
  const s: Obj = isObj(o.sources) ? o.sources : {};
  if (!isObj(o.sources)) p.add('sources', 'required: a mapping with customers, orders and payments (URLs or paths)');
  else checkKeys(s, 'sources.', [...SOURCE_NAMES], p);
  for (const k of SOURCE_NAMES) {
    if (!isObj(o.sources)) break;
    let v = s[k];
    // Either the location alone, or `{location, allow_empty}`.
    if (isObj(v)) {
      const entry = v;
      checkKeys(entry, `sources.${k}.`, ['location', 'allow_empty'], p);
      if (entry.allow_empty !== undefined && entry.allow_empty !== null) {
        if (typeof entry.allow_empty === 'boolean') allowEmpty[k] = entry.allow_empty;
        else p.add(`sources.${k}.allow_empty`, `expected true or false, got ${JSON.stringify(entry.allow_empty)}`);
      }
      v = entry.location;
      if (typeof v !== 'string' || v.trim() === '') {
        p.add(`sources.${k}.location`, 'required: an http(s) URL or a file path');
        continue;
      }
    }
    if (typeof v !== 'string' || v.trim() === '') {
      p.add(`sources.${k}`, 'required: an http(s) URL or a file path, or a mapping with `location` and `allow_empty`');
      continue;
    }
    const resolved = resolveSource(v.trim(), baseDir);
    if (!resolved) p.add(`sources.${k}`, `expected an http(s) URL or a file path, got ${JSON.stringify(v)}`);
    else sources[k] = resolved;
  }

  let schedule: CrmSchedule | undefined;
  if (o.schedule !== undefined && o.schedule !== null) {
    const sc: Obj = isObj(o.schedule) ? o.schedule : {};
    if (!isObj(o.schedule)) p.add('schedule', 'expected a mapping with `cron` or `interval`');
    checkKeys(sc, 'schedule.', ['cron', 'interval', 'retry_after'], p);
    const retryAfterMs = retryAfter(sc.retry_after, p);
    if ((sc.cron === undefined) === (sc.interval === undefined)) {
      p.add('schedule', 'set exactly one of `cron` ("0 3 * * *") or `interval` ("24h")');
    } else {
      const key = sc.cron !== undefined ? 'cron' : 'interval';
      try {
        schedule = { ...parseSchedule(key, String(sc[key])), retryAfterMs };
      } catch (err) {
        p.add(`schedule.${key}`, errorMessage(err));
      }
    }
  }

  const vr: Obj = isObj(o.value) ? o.value : {};
  if (o.value !== undefined && !isObj(o.value)) p.add('value', 'expected a mapping');
  checkKeys(vr, 'value.', ['rule', 'multiplier', 'currency', 'decimals'], p);
  const rule = str(vr, 'rule', 'value.', p, 'total_paid');
  if (rule !== 'total_paid') p.add('value.rule', `only "total_paid" (sum of the order's payments, in currency units) is known, got ${JSON.stringify(rule)}`);
  const currency = str(vr, 'currency', 'value.', p, 'USD') as string;
  if (!/^[A-Z]{3}$/.test(currency)) p.add('value.currency', `expected an ISO 4217 code like "USD", got ${JSON.stringify(currency)}`);
  const value = {
    multiplier: num(vr, 'multiplier', 'value.', p, 1, 0),
    currency,
    decimals: num(vr, 'decimals', 'value.', p, 2, 0, true),
  };
  if (value.decimals > 6) p.add('value.decimals', `expected at most 6, got ${value.decimals}`);

  const statusMap = { ...DEFAULT_STATUS_MAP };
  if (o.status_map !== undefined) {
    if (!isObj(o.status_map)) p.add('status_map', 'expected a mapping of order status to open, won or lost');
    else {
      for (const [k, v] of Object.entries(o.status_map)) {
        if (typeof v === 'string' && DEAL_STATUSES.includes(v)) statusMap[k] = v as DealStatus;
        else p.add(`status_map.${k}`, `expected open, won or lost, got ${JSON.stringify(v)}`);
      }
    }
  }
  const defaultStatus = str(o, 'default_status', '', p, 'open') as string;
  if (!DEAL_STATUSES.includes(defaultStatus)) p.add('default_status', `expected open, won or lost, got ${JSON.stringify(defaultStatus)}`);

  const destination = validDestination(o.destination, p);
  if (p.list.length) {
    const label = file ? `config ${file}` : 'config';
    // A problem may quote a URL written with its password (a source, base_url): masked.
    throw new InvalidInputError(maskUrlPasswords(`${label} is invalid:\n  ${p.list.join('\n  ')}`));
  }
  return { name, file, sources, allowEmpty, schedule, value, statusMap, defaultStatus: defaultStatus as DealStatus, destination };
}

/** Reads and validates a YAML config file. */
export function loadCrmConfig(file: string): CrmConfig {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new InvalidInputError(`cannot read config ${file}: ${(err as NodeJS.ErrnoException).code ?? errorMessage(err)}`, { cause: err });
  }
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (err) {
    // The parser quotes the offending line, maybe a URL with its password: masked.
    throw new InvalidInputError(`config ${file} is not valid YAML: ${maskUrlPasswords(errorMessage(err))}`);
  }
  return validateCrmConfig(doc, file);
}

/**
 * A fingerprint of everything that shapes the output: when it changes (a new multiplier,
 * another account), unchanged sources are processed again.
 */
export function configHash(c: CrmConfig): string {
  const d = c.destination;
  const shape = {
    // Each source's identity: its URL without the password (a new password changes nothing
    // in the output) but with its query (another `?date=` is another source: processed
    // again). Its digest, not the URL with its query secrets, even in this unstored shape.
    sources: Object.fromEntries(SOURCE_NAMES.map((k) => [k, sourceIdentity(c.sources[k])])),
    value: c.value,
    statusMap: c.statusMap,
    defaultStatus: c.defaultStatus,
    destination: d.type === 'pipedrive' ? [d.type, d.baseUrl, d.personKeyField, d.dealKeyField] : [d.type],
  };
  return createHash('sha256').update(JSON.stringify(shape)).digest('hex').slice(0, 16);
}
