/**
 * When the scheduled sync runs: a fixed interval ("24h", "90m") or a five-field cron
 * expression (minute hour day-of-month month day-of-week, in UTC; `*`, lists, ranges and
 * steps as in crontab(5); when both day fields are restricted, either may match).
 */
export type Schedule =
  | { kind: 'interval'; text: string; intervalMs: number }
  | { kind: 'cron'; text: string; fields: CronFields };

interface CronFields {
  minute: Set<number>;
  hour: Set<number>;
  dom: Set<number>;
  month: Set<number>;
  dow: Set<number>;
  domAny: boolean;
  dowAny: boolean;
}

const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** "24h" | "30m" | "1h30m" | "45s" -> milliseconds. */
export function parseDuration(text: string): number {
  const t = text.trim();
  const re = /(\d+(?:\.\d+)?)(ms|s|m|h|d)/gy;
  let total = 0;
  let end = 0;
  for (let m = re.exec(t); m; m = re.exec(t)) {
    total += Number(m[1]) * (UNITS[m[2] as string] as number);
    end = re.lastIndex;
  }
  if (end !== t.length || t.length === 0 || total <= 0) {
    throw new Error(`expected a duration like "24h", "30m" or "1h30m", got ${JSON.stringify(text)}`);
  }
  return total;
}

function field(text: string, min: number, max: number, name: string): Set<number> {
  const out = new Set<number>();
  for (const part of text.split(',')) {
    const m = /^(\*|\d+(?:-\d+)?)(?:\/(\d+))?$/.exec(part);
    if (!m) throw new Error(`bad cron ${name} field ${JSON.stringify(text)}`);
    const range = m[1] === '*' ? [min, max] : (m[1] as string).split('-').map(Number);
    const from = range[0] as number;
    // "5/15" means 5 to max every 15, as in Vixie cron.
    const to = range[1] ?? (m[2] && m[1] !== '*' ? max : from);
    const step = m[2] ? Number(m[2]) : 1;
    if (from < min || to > max || from > to || step < 1) {
      throw new Error(`cron ${name} field ${JSON.stringify(text)} is out of range ${min}-${max}`);
    }
    for (let v = from; v <= to; v += step) out.add(name === 'day-of-week' && v === 7 ? 0 : v);
  }
  return out;
}

export function parseCron(text: string): CronFields {
  const parts = text.trim().split(/\s+/);
  if (parts.length !== 5) throw new Error(`expected 5 cron fields (minute hour day month weekday), got ${JSON.stringify(text)}`);
  const [mi, h, dom, mo, dow] = parts as [string, string, string, string, string];
  return {
    minute: field(mi, 0, 59, 'minute'),
    hour: field(h, 0, 23, 'hour'),
    dom: field(dom, 1, 31, 'day-of-month'),
    month: field(mo, 1, 12, 'month'),
    dow: field(dow, 0, 7, 'day-of-week'),
    domAny: dom === '*',
    dowAny: dow === '*',
  };
}

export function parseSchedule(kind: 'cron' | 'interval', text: string): Schedule {
  if (kind === 'interval') return { kind, text, intervalMs: parseDuration(text) };
  const s: Schedule = { kind, text, fields: parseCron(text) };
  nextRun(s, new Date()); // refuses an expression that never matches ("0 0 31 2 *")
  return s;
}

function dayMatches(f: CronFields, d: Date): boolean {
  const dom = f.dom.has(d.getUTCDate());
  const dow = f.dow.has(d.getUTCDay());
  if (f.domAny || f.dowAny) return (f.domAny || dom) && (f.dowAny || dow);
  return dom || dow;
}

/** The next time strictly after `from` (for an interval: `from` + interval). */
export function nextRun(s: Schedule, from: Date): Date {
  if (s.kind === 'interval') return new Date(from.getTime() + s.intervalMs);
  const f = s.fields;
  const d = new Date(from.getTime());
  d.setUTCSeconds(0, 0);
  d.setUTCMinutes(d.getUTCMinutes() + 1);
  // Skip whole days/hours that cannot match, so a yearly expression needs few steps.
  for (let guard = 0; guard < 600_000; guard++) {
    if (!f.month.has(d.getUTCMonth() + 1) || !dayMatches(f, d)) {
      d.setUTCHours(0, 0, 0, 0);
      d.setUTCDate(d.getUTCDate() + 1);
      continue;
    }
    if (!f.hour.has(d.getUTCHours())) {
      d.setUTCMinutes(0);
      d.setUTCHours(d.getUTCHours() + 1);
      continue;
    }
    if (!f.minute.has(d.getUTCMinutes())) {
      d.setUTCMinutes(d.getUTCMinutes() + 1);
      continue;
    }
    return d;
  }
  throw new Error(`cron ${JSON.stringify(s.text)} never matches`);
}
