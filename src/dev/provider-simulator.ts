/**
 * A local stand-in for the external provider (`sluice dev provider`), on loopback only.
 * It serves a sequence of feed responses (each fetch takes the next; the last repeats) or a
 * generated feed (N events x M zones, changing a little per fetch), and fails on demand:
 *   error    HTTP 500
 *   timeout  accepts and never answers
 *   slow     the feed, one chunk every `slowMs`
 *   garbage  HTTP 200 with bytes that are not XML
 *   empty    HTTP 200 with an empty body
 *   truncated the feed cut off in the middle
 * With `basicAuth`, a fetch without that user and password gets HTTP 401 (control requests
 * need none).
 * Control over HTTP (for a simulator run from the CLI):
 *   GET  /_control                         state as JSON
 *   POST /_control/mode?mode=error&count=2 fail the next 2 fetches (no count: until changed;
 *                                          a count that is not a whole number >= 1: HTTP 400)
 *   PUT  /_control/responses               body = one feed; replaces the sequence
 *   POST /_control/responses               body = one feed; appends it to the sequence
 * Any other GET is a fetch of the feed.
 */
import { timingSafeEqual } from 'node:crypto';
import http from 'node:http';
import { Readable } from 'node:stream';
import { wholeNumber } from '../core/whole-number.ts';
import { setTimeout as sleep } from 'node:timers/promises';
import { generateFeed, type GenerateOptions } from './feed-generator.ts';

export type SimulatorMode = 'ok' | 'error' | 'timeout' | 'slow' | 'garbage' | 'empty' | 'truncated';
export const SIMULATOR_MODES: SimulatorMode[] = ['ok', 'error', 'timeout', 'slow', 'garbage', 'empty', 'truncated'];

export interface SimulatorOptions {
  /** Port on 127.0.0.1 (default 0: any free port). */
  port?: number;
  /** Feeds served in order, one per fetch; the last repeats. */
  responses?: string[];
  /** A generated feed instead of `responses`; its `round` advances per fetch. */
  generate?: Omit<GenerateOptions, 'round'>;
  /** Delay between chunks in `slow` mode (default 1,000 ms). */
  slowMs?: number;
  /** Fetches must carry HTTP Basic authorization with this user and password (else 401). */
  basicAuth?: { user: string; password: string };
}

export interface ProviderSimulator {
  url: string;
  /** Feed fetches received (control requests excluded). */
  readonly fetches: number;
  /** Fails (or serves) in `mode` for the next `count` fetches (a whole number >= 1; default: until changed). */
  setMode(mode: SimulatorMode, count?: number): void;
  setResponses(feeds: string[]): void;
  close(): Promise<void>;
}

/** What is wrong with a mode's count, undefined when it is fine. */
function countProblem(count: number): string | undefined {
  return count === Infinity || (Number.isSafeInteger(count) && count >= 1) ? undefined : 'count must be a whole number of at least 1 (no count: until the mode is changed)';
}

const GARBAGE = Buffer.concat([Buffer.from('HTTP/1.1 502 <html><body>upstream error</body'), Buffer.from([0xff, 0xfe, 0x00])]);

export async function startProviderSimulator(options: SimulatorOptions = {}): Promise<ProviderSimulator> {
  let responses = options.responses ?? [];
  let next = 0;
  let round = 0;
  let mode: SimulatorMode = 'ok';
  let modeCount = Infinity;
  let fetches = 0;
  const slowMs = options.slowMs ?? 1000;

  const setMode = (m: SimulatorMode, count = Infinity) => {
    // NaN (count=abc) never counted down: the mode stayed on forever.
    const problem = countProblem(count);
    if (problem) throw new RangeError(`${problem}, got ${count}`);
    if (!SIMULATOR_MODES.includes(m)) throw new RangeError(`mode must be one of ${SIMULATOR_MODES.join(', ')}`);
    mode = m;
    modeCount = count;
  };

  /** The body of the next successful fetch, as chunks. */
  const nextFeed = (): Iterable<string | Buffer> => {
    if (options.generate) return generateFeed({ ...options.generate, round: round++ });
    const body = Buffer.from(responses[Math.min(next, responses.length - 1)] ?? '');
    next += 1;
    // Chunks of 16 KiB, so slow and truncated modes have something to space out or cut. Cut
    // as bytes: a string cut at a code-unit count may split a surrogate pair (an emoji), and
    // each half would go out as U+FFFD.
    const chunks: Buffer[] = [];
    for (let i = 0; i < body.length; i += 16_384) chunks.push(body.subarray(i, i + 16_384));
    return chunks;
  };

  const serveFeed = async (res: http.ServerResponse, current: SimulatorMode) => {
    res.writeHead(200, { 'content-type': 'application/xml; charset=utf-8' });
    if (current === 'ok') {
      Readable.from(nextFeed()).pipe(res);
      return;
    }
    if (current === 'truncated') {
      // Half of the first chunk, then the connection drops mid-body.
      const first = Buffer.from(nextFeed()[Symbol.iterator]().next().value ?? '');
      res.write(first.subarray(0, Math.ceil(first.length / 2)), () => res.destroy());
      return;
    }
    for (const chunk of nextFeed()) {
      if (res.destroyed) return;
      await sleep(slowMs);
      if (!res.write(chunk)) await new Promise((r) => res.once('drain', r));
    }
    res.end();
  };

  const control = async (req: http.IncomingMessage, res: http.ServerResponse, url: URL) => {
    const reply = (status: number, body: unknown) => {
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(body));
    };
    if (url.pathname === '/_control' && req.method === 'GET') {
      return reply(200, { mode, remaining: modeCount === Infinity ? null : modeCount, fetches, responses: responses.length, next });
    }
    if (url.pathname === '/_control/mode' && req.method === 'POST') {
      const m = url.searchParams.get('mode') as SimulatorMode;
      if (!SIMULATOR_MODES.includes(m)) return reply(400, { error: `mode must be one of ${SIMULATOR_MODES.join(', ')}` });
      const countText = url.searchParams.get('count');
      const count = countText === null ? Infinity : (wholeNumber(countText) ?? Number.NaN);
      const problem = countProblem(count);
      if (problem) return reply(400, { error: `${problem}, got ${JSON.stringify(countText)}` });
      setMode(m, count);
      return reply(200, { mode, remaining: count === Infinity ? null : count });
    }
    if (url.pathname === '/_control/responses' && (req.method === 'PUT' || req.method === 'POST')) {
      const parts: Buffer[] = [];
      for await (const c of req) parts.push(c as Buffer);
      const body = Buffer.concat(parts).toString('utf8');
      if (req.method === 'PUT') {
        responses = [body];
        next = 0;
      } else responses = [...responses, body];
      return reply(200, { responses: responses.length });
    }
    return reply(404, { error: 'unknown control request' });
  };

  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://localhost');
    if (url.pathname.startsWith('/_control')) {
      control(req, res, url).catch(() => res.destroy());
      return;
    }
    fetches += 1;
    if (options.basicAuth && !authorized(req.headers.authorization, options.basicAuth)) {
      res.writeHead(401, { 'content-type': 'text/plain', 'www-authenticate': 'Basic realm="provider feed", charset="UTF-8"' }).end('unauthorized');
      return;
    }
    const current = mode;
    if (modeCount !== Infinity && --modeCount <= 0) setMode('ok');
    switch (current) {
      case 'error':
        res.writeHead(500, { 'content-type': 'text/plain' }).end('provider error');
        return;
      case 'timeout':
        return; // never answered; the socket closes with the client or the server
      case 'garbage':
        res.writeHead(200, { 'content-type': 'application/xml' }).end(GARBAGE);
        return;
      case 'empty':
        res.writeHead(200, { 'content-type': 'application/xml' }).end();
        return;
      default:
        serveFeed(res, current).catch(() => res.destroy());
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? 0, '127.0.0.1', () => resolve());
  });
  const addr = server.address() as { port: number };
  return {
    url: `http://127.0.0.1:${addr.port}/feed`,
    get fetches() {
      return fetches;
    },
    setMode,
    setResponses(feeds: string[]) {
      responses = feeds;
      next = 0;
    },
    close() {
      return new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
    },
  };
}

/** Whether an `authorization` header carries exactly `expected` as HTTP Basic credentials (UTF-8). */
function authorized(header: string | undefined, expected: { user: string; password: string }): boolean {
  const m = /^Basic\s+([A-Za-z0-9+/=]+)\s*$/i.exec(header ?? '');
  if (!m) return false;
  const given = Buffer.from(m[1]!, 'base64');
  const wanted = Buffer.from(`${expected.user}:${expected.password}`, 'utf8');
  return given.length === wanted.length && timingSafeEqual(given, wanted);
}
