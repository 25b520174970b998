/**
 * Aggregates one flush's visits in memory into the arrays the rollup statements take
 * (src/db/sql/visits.ts): a few hundred rows per flush instead of one per visit. Buckets
 * are computed here on epoch milliseconds, so they never depend on a session time zone;
 * times travel as ISO strings (node-pg's Date formatting costs more at 20,000 values).
 */
import type { Visit } from './visit.ts';

export interface BatchRollup {
  seconds: { at: string[]; visits: number[] };
  minutes: { at: string[]; visits: number[] };
  /** Per minute and page (pageOf: the path without query string and fragment). */
  pages: { at: string[]; path: string[]; visits: number[] };
  /** Per visitor: first and last visit (epoch ms, visited_at but never after the receipt) and visits in this batch. */
  visitors: { id: string[]; first: number[]; last: number[]; visits: number[] };
  /** UTC days (YYYY-MM-DD) that need a partition of `visits`. */
  days: string[];
  /** The batch's newest visits (its last ones: batches are in arrival order), oldest first. */
  recent: { received: string[]; visited: string[]; visitor: string[]; path: string[] };
}

/** Visits per flush kept for the live page's "most recent" list, which shows this many. */
export const RECENT_PER_FLUSH = 20;

/**
 * The page a visit counts for in page_minutes (top pages): its path without the query string
 * and fragment. Otherwise every distinct query string (tracking ids, cache busters) would be a
 * page of its own, and the rows the live page sums would grow with the traffic. `visits` and
 * `recent_visits` keep the path as sent.
 */
export function pageOf(path: string): string {
  const end = path.search(/[?#]/);
  return end < 0 ? path : path.slice(0, end);
}

interface VisitorAgg {
  first: number;
  last: number;
  visits: number;
}

export function rollup(batch: readonly Visit[]): BatchRollup {
  const seconds = new Map<number, number>();
  const minutes = new Map<number, number>();
  const pages = new Map<number, Map<string, number>>();
  const visitors = new Map<string, VisitorAgg>();
  const days = new Set<number>();
  // Visits of a flush mostly share a second and a minute: remember the current ones and
  // touch the maps only when they change (Map operations dominate this loop otherwise).
  let sec = Number.NaN;
  let secCount = 0;
  let min = Number.NaN;
  let minCount = 0;
  let byPath = new Map<string, number>();
  for (const v of batch) {
    const at = v.visitedAt;
    const s = at - (((at % 1000) + 1000) % 1000);
    if (s !== sec) {
      if (secCount) seconds.set(sec, (seconds.get(sec) ?? 0) + secCount);
      sec = s;
      secCount = 0;
      const m = at - (((at % 60_000) + 60_000) % 60_000);
      if (m !== min) {
        if (minCount) minutes.set(min, (minutes.get(min) ?? 0) + minCount);
        min = m;
        minCount = 0;
        days.add(Math.floor(at / 86_400_000));
        let p = pages.get(m);
        if (!p) pages.set(m, (p = new Map()));
        byPath = p;
      }
    }
    secCount++;
    minCount++;
    const page = pageOf(v.pagePath);
    byPath.set(page, (byPath.get(page) ?? 0) + 1);
    // Visitors are seen at most at the receipt: a visited_at in the allowed future (clock skew)
    // would pin last_seen_at ahead of every "now", outside the current-visitors window,
    // until real time caught up with it.
    const seen = at > v.receivedAt ? v.receivedAt : at;
    const agg = visitors.get(v.visitorId);
    if (agg) {
      if (seen < agg.first) agg.first = seen;
      if (seen > agg.last) agg.last = seen;
      agg.visits++;
    } else {
      visitors.set(v.visitorId, { first: seen, last: seen, visits: 1 });
    }
  }
  if (secCount) seconds.set(sec, (seconds.get(sec) ?? 0) + secCount);
  if (minCount) minutes.set(min, (minutes.get(min) ?? 0) + minCount);

  const out: BatchRollup = {
    seconds: { at: [], visits: [] },
    minutes: { at: [], visits: [] },
    pages: { at: [], path: [], visits: [] },
    visitors: { id: [], first: [], last: [], visits: [] },
    days: [...days].sort((a, b) => a - b).map((d) => new Date(d * 86_400_000).toISOString().slice(0, 10)),
    recent: { received: [], visited: [], visitor: [], path: [] },
  };
  for (let i = Math.max(0, batch.length - RECENT_PER_FLUSH); i < batch.length; i++) {
    const v = batch[i]!;
    out.recent.received.push(iso(v.receivedAt));
    out.recent.visited.push(iso(v.visitedAt));
    out.recent.visitor.push(v.visitorId);
    out.recent.path.push(v.pagePath);
  }
  for (const [at, n] of seconds) {
    out.seconds.at.push(iso(at));
    out.seconds.visits.push(n);
  }
  for (const [at, n] of minutes) {
    out.minutes.at.push(iso(at));
    out.minutes.visits.push(n);
  }
  for (const [at, byPath] of pages) {
    const date = iso(at);
    for (const [path, n] of byPath) {
      out.pages.at.push(date);
      out.pages.path.push(path);
      out.pages.visits.push(n);
    }
  }
  for (const [id, agg] of visitors) {
    out.visitors.id.push(id);
    out.visitors.first.push(agg.first);
    out.visitors.last.push(agg.last);
    out.visitors.visits.push(agg.visits);
  }
  return out;
}

function iso(ms: number): string {
  return new Date(ms).toISOString();
}
