/**
 * The /live page in headless Chromium: while an open-loop load runs, the counters and the
 * chart move (pushed over SSE, no reload), nothing breaks (no page errors, no CSP
 * violations), and a screenshot is kept in test-artifacts/live-page.png.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type { Browser } from 'playwright-core';
import type { FastifyInstance } from 'fastify';
import { buildServer } from '../../src/http/server.ts';
import { runOpenLoop } from '../../src/loadgen/open-loop.ts';
import { visitsWorkload } from '../../src/loadgen/visits-workload.ts';
import { artifactPath, launchBrowser, pageErrors } from '../helpers/browser.ts';
import { testDb, type TestDb } from '../helpers/db.ts';

let db: TestDb;
let app: FastifyInstance;
let base: string;
let browser: Browser;
// This test is about the page, not latency: on a loaded machine (the whole suite at once)
// a flush passed the 5 s deadline and 36 visits of the load got 503. 30 s here.
const savedTimeout = process.env.SLUICE_VISITS_TIMEOUT_MS;
before(async () => {
  process.env.SLUICE_VISITS_TIMEOUT_MS = '30000';
  db = await testDb();
  app = await buildServer({ pool: db.pool });
  base = await app.listen({ port: 0, host: '127.0.0.1' });
  browser = await launchBrowser();
});
after(async () => {
  if (savedTimeout === undefined) delete process.env.SLUICE_VISITS_TIMEOUT_MS;
  else process.env.SLUICE_VISITS_TIMEOUT_MS = savedTimeout;
  await browser.close();
  await app.close();
  await db.close();
});

// Page-side functions run in Chromium; the project's TypeScript has no DOM types. (String
// predicates would be eval'd in the page, which its Content-Security-Policy rightly forbids.)
declare const document: any;

const number = (text: string | null) => Number((text ?? '').replace(/[^0-9]/g, '') || 'NaN');

test('counters and chart move while a load runs', async (t) => {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const errors = pageErrors(page);
  await page.goto(`${base}/live`);
  await page.waitForFunction(() => Number(document.body.dataset.updates ?? 0) >= 1, undefined, { timeout: 30_000 });
  assert.equal(await page.textContent('[data-testid=status]'), 'live', 'connected');
  assert.equal(number(await page.textContent('[data-testid=visits-today]')), 0, 'no visits yet');

  // A generous timeout: this test is about the page, not latency on a busy machine. The
  // load goes on until the page has shown what is checked below (at most 60 s), so a slow
  // machine cannot end it before the page has seen the visits grow twice.
  const stop = new AbortController();
  t.after(() => stop.abort());
  const load = runOpenLoop({ url: base, rate: 300, durationMs: 60_000, timeoutMs: 60_000, signal: stop.signal, request: visitsWorkload({ visitors: 500 }).request });

  // The page is never reloaded: every change below arrived over /live/stream.
  await page.waitForFunction(() => Number(document.querySelector('[data-testid=chart]').dataset.total) > 0, undefined, { timeout: 30_000 });
  const first = number(await page.textContent('[data-testid=visits-today]'));
  assert.ok(first > 0, 'visits today went up');
  const updates = Number(await page.getAttribute('body', 'data-updates'));
  // Current visitors come from visitor_seconds, which the visitor applier fills shortly
  // after the flushes (off the acknowledgement path): they may trail visits by an update.
  await page.waitForFunction(
    ([before, seen]) =>
      Number(document.querySelector('[data-testid=visits-today]').textContent.replace(/[^0-9]/g, '')) > before &&
      Number(document.body.dataset.updates) >= seen + 2 &&
      Number(document.querySelector('[data-testid=current-visitors]').textContent.replace(/[^0-9]/g, '') || 0) > 0,
    [first, updates] as const,
    { timeout: 30_000 },
  );
  assert.ok(number(await page.textContent('[data-testid=current-visitors]')) > 0, 'current visitors');
  assert.ok(number(await page.textContent('[data-testid=rate]')) > 0, 'visits per second');
  assert.match((await page.textContent('[data-testid=lag]')) ?? '', /^\d[\d,]* ms$/, 'ingestion lag shown');
  assert.ok((await page.locator('[data-testid=top-pages] tr').count()) > 0, 'top pages');
  assert.equal(await page.locator('[data-testid=recent] tr').count(), 20, '20 most recent visits');
  assert.ok(Number(await page.getAttribute('[data-testid=chart]', 'data-max')) > 0, 'chart has bars');

  await page.screenshot({ path: artifactPath('live-page.png'), fullPage: true });
  stop.abort();
  const result = await load;
  assert.equal(result.failed, 0, `load failures: ${JSON.stringify(result.errors)} ${result.sampleErrors.join(' | ')}`);
  assert.deepEqual(errors, []);
  await page.close();
});

test('page paths are shown as text, never run as HTML', async () => {
  const evil = '/"><img src=x onerror="document.body.dataset.pwned=1">';
  const res = await fetch(`${base}/visits`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ page_path: evil, visitor_id: '<b>v</b>' }),
  });
  assert.equal(res.status, 202);
  const page = await browser.newPage();
  await page.goto(`${base}/live`);
  await page.waitForFunction(
    (p) => [...document.querySelectorAll('[data-testid=recent] td')].some((td: { textContent: string }) => td.textContent === p),
    evil,
    { timeout: 30_000 },
  );
  assert.equal(await page.getAttribute('body', 'data-pwned'), null);
  assert.equal(await page.locator('[data-testid=recent] img').count(), 0);
  await page.close();
});
