/**
 * The visits workload for the open-loop generator: page visits of a fixed pool of visitors
 * over a few dozen pages with a long tail (Zipf-like), as POST /visits (batch 1) or NDJSON
 * POST /visits/batch. Every visitor id starts with `lt-<runId>-`, so a run's visits can be
 * counted in the database afterwards (acknowledged must equal stored).
 */
import { randomBytes } from 'node:crypto';
import type { LoadRequest } from './open-loop.ts';

export const PAGES = [
  '/', '/pricing', '/features', '/blog', '/docs', '/signup', '/login', '/about', '/contact', '/careers',
  '/blog/postgres-at-scale', '/blog/group-commit', '/blog/live-dashboards', '/docs/getting-started',
  '/docs/api', '/docs/cli', '/docs/visits', '/docs/imports', '/customers', '/security', '/status',
  '/changelog', '/integrations', '/integrations/pipedrive', '/partners', '/press', '/legal/terms',
  '/legal/privacy', '/support', '/search?q=postgres',
];

export interface VisitsWorkloadOptions {
  /** Tags the run's visitor ids (default: 8 random hex digits). */
  runId?: string;
  /** Visits per request: 1 posts /visits, more posts NDJSON to /visits/batch (default 1). */
  batch?: number;
  /** Distinct visitors the visits are spread over (default 20,000). */
  visitors?: number;
  /** Extra request headers (Authorization...). */
  headers?: Record<string, string>;
}

export interface VisitsWorkload {
  runId: string;
  /** Prefix of every visitor id of this run. */
  visitorPrefix: string;
  visitsPerRequest: number;
  request: (seq: number) => LoadRequest;
}

export function visitsWorkload(opts: VisitsWorkloadOptions = {}): VisitsWorkload {
  const runId = opts.runId ?? randomBytes(4).toString('hex');
  const prefix = `lt-${runId}-`;
  const batch = Math.max(1, Math.floor(opts.batch ?? 1));
  const visitors = Math.max(1, Math.floor(opts.visitors ?? 20_000));
  // Zipf-like page popularity: page i has weight 1/(i+1).
  const cumulative: number[] = [];
  let sum = 0;
  for (let i = 0; i < PAGES.length; i++) cumulative.push((sum += 1 / (i + 1)));
  // xorshift32: cheap, deterministic per run, good enough to spread visits.
  let state = (parseInt(runId.slice(0, 8), 16) || 1) >>> 0;
  const random = () => {
    state ^= state << 13;
    state >>>= 0;
    state ^= state >>> 17;
    state ^= state << 5;
    state >>>= 0;
    return state / 4294967296;
  };
  const visit = () => {
    const r = random() * sum;
    let page = 0;
    while (cumulative[page]! < r) page++;
    return `{"page_path":${JSON.stringify(PAGES[page])},"visitor_id":"${prefix}${Math.floor(random() * visitors)}"}`;
  };
  const headers = { 'content-type': 'application/json', ...opts.headers };
  const ndjsonHeaders = { 'content-type': 'application/x-ndjson', ...opts.headers };
  return {
    runId,
    visitorPrefix: prefix,
    visitsPerRequest: batch,
    request: (): LoadRequest => {
      if (batch === 1) return { path: '/visits', headers, body: visit() };
      const lines = new Array<string>(batch);
      for (let i = 0; i < batch; i++) lines[i] = visit();
      return { path: '/visits/batch', headers: ndjsonHeaders, body: lines.join('\n') };
    },
  };
}
