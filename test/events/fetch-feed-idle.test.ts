/**
 * fetchFeed's idle timeout starts again when the response headers arrive, and its message says
 * which wait ran out. It used to run on from the request: with an idle timeout of 3 s, headers
 * at 0.1 s and the first chunk at 3.5 s failed as "no response headers within 3000 ms".
 * A local node:http server plays the provider; its delays are the scenario under test.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import { after, before, test } from 'node:test';
import { fetchFeed, ProviderError } from '../../src/pipelines/events/fetch-feed.ts';

/** How the server answers: ms before the headers, before the first chunk, between chunks. */
interface Plan {
  headersAfter: number;
  bodyAfter: number;
  gap?: number;
}

let server: http.Server;
let base: string;
const plans = new Map<string, Plan>();
const timers = new Set<NodeJS.Timeout>();
const later = (ms: number, fn: () => void) => {
  const t = setTimeout(() => {
    timers.delete(t);
    fn();
  }, ms);
  timers.add(t);
};

before(async () => {
  server = http.createServer((req, res) => {
    const plan = plans.get(req.url ?? '')!;
    later(plan.headersAfter, () => {
      res.writeHead(200, { 'content-type': 'application/xml' });
      res.flushHeaders(); // the headers now, the body later
      later(plan.bodyAfter, () => {
        if (plan.gap === undefined) return void res.end('<eventList/>');
        res.write('<eventList>');
        later(plan.gap, () => res.end('</eventList>'));
      });
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
});
after(async () => {
  for (const t of timers) clearTimeout(t);
  server.closeAllConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
});

async function fetchAll(path: string, plan: Plan, idleTimeoutMs: number): Promise<string> {
  plans.set(path, plan);
  let text = '';
  for await (const chunk of fetchFeed(`${base}${path}`, { idleTimeoutMs, timeoutMs: 30_000 })) text += Buffer.from(chunk).toString();
  return text;
}

test('headers early and the body late, each within the idle timeout: the fetch succeeds (the timer restarts at the headers)', async () => {
  // 600 ms to the headers, 600 ms more to the body: 1.2 s in all, each wait under 1 s.
  assert.equal(await fetchAll('/restart', { headersAfter: 600, bodyAfter: 600 }, 1000), '<eventList/>');
});

test('headers at once, no body within the idle timeout: fails naming the wait after the headers, not the headers', async () => {
  await assert.rejects(fetchAll('/late-body', { headersAfter: 0, bodyAfter: 1500 }, 500), (err: Error) => {
    assert.ok(err instanceof ProviderError && err.retryable);
    assert.match(err.message, /the body stalled for 500 ms after the response headers/);
    assert.doesNotMatch(err.message, /no response headers/);
    return true;
  });
});

test('no headers within the idle timeout, and a stall between two chunks: each named', async () => {
  await assert.rejects(fetchAll('/late-headers', { headersAfter: 1500, bodyAfter: 0 }, 500), /no response headers within 500 ms/);
  await assert.rejects(fetchAll('/gap', { headersAfter: 0, bodyAfter: 0, gap: 1500 }, 500), /the body stalled for 500 ms between two chunks/);
});
