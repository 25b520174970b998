/**
 * The dashboard (GET /) in headless Chromium against a real server with the job queue and
 * two workers: a leads CSV uploaded through the form is followed (the list refreshes by
 * itself) until its progress bar reads 100% and its status `completed`; its rejects open as
 * a table; uploaded text is only ever shown as text; a server with an API token makes the
 * page ask for it. Screenshots go to test-artifacts/dashboard*.png.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type { Browser, Page } from 'playwright-core';
import type { FastifyInstance } from 'fastify';
import { buildServer } from '../../src/http/server.ts';
import { artifactPath, launchBrowser, pageErrors } from '../helpers/browser.ts';
import { testDb, type TestDb } from '../helpers/db.ts';
import { leadsCsv, startIntake, type Intake } from './http-helpers.ts';

let db: TestDb;
let intake: Intake;
let app: FastifyInstance;
let base: string;
let browser: Browser;
before(async () => {
  process.env.SLUICE_PART_ROWS = '500';
  db = await testDb();
  intake = await startIntake(db, { workers: 2 });
  app = await buildServer(intake.ctx);
  base = await app.listen({ port: 0, host: '127.0.0.1' });
  browser = await launchBrowser();
});
after(async () => {
  await browser.close();
  await app.close();
  await intake.stop();
  await db.close();
});

// Page-side functions run in Chromium; the project's TypeScript has no DOM types. (String
// predicates would be eval'd in the page, which its Content-Security-Policy forbids.)
declare const document: any;

async function upload(page: Page, pipeline: string, name: string, content: string): Promise<void> {
  await page.selectOption('[data-testid=pipeline]', pipeline);
  await page.setInputFiles('[data-testid=file]', { name, mimeType: 'text/csv', buffer: Buffer.from(content) });
  await page.click('[data-testid=submit]');
}

/** Waits until the card of the import named `name` has finished; returns its status. */
async function waitFinished(page: Page, name: string): Promise<string> {
  await page.waitForFunction(
    (fileName: string) => [...document.querySelectorAll('[data-testid=import]')].some(
      (card: any) => card.querySelector('[data-f=name]').textContent === fileName && !['queued', 'running'].includes(card.dataset.status),
    ),
    name,
    { timeout: 60_000 },
  );
  return (await card(page, name).getAttribute('data-status'))!;
}

const card = (page: Page, name: string) => page.locator('[data-testid=import]', { has: page.locator(`[data-f=name]:text-is(${JSON.stringify(name)})`) });

test('an upload through the form is followed to 100% and completed, with its parts and rejects', async () => {
  const page = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
  const errors = pageErrors(page);
  await page.goto(base);
  await page.waitForFunction(() => Number(document.body.dataset.refreshes ?? 0) >= 1);
  assert.equal(await page.textContent('[data-testid=connection]'), 'live');
  assert.equal(await page.isVisible('#empty'), true, 'the empty list says so');

  await upload(page, 'leads', 'leads-2400.csv', leadsCsv(2400, 5, 'dash'));
  await page.waitForFunction(() => /^Queued leads-2400\.csv/.test(document.querySelector('[data-testid=upload-message]').textContent));
  const refreshesAtUpload = Number(await page.getAttribute('body', 'data-refreshes'));

  assert.equal(await waitFinished(page, 'leads-2400.csv'), 'completed');
  const c = card(page, 'leads-2400.csv');
  assert.ok(Number(await page.getAttribute('body', 'data-refreshes')) > refreshesAtUpload, 'the list refreshed by itself');
  assert.equal(await c.locator('[data-testid=status]').textContent(), 'completed');
  assert.equal(await c.locator('[data-testid=progress]').getAttribute('data-percent'), '100');
  assert.equal(await c.locator('[data-testid=progress]').getAttribute('aria-valuenow'), '100');
  assert.equal(await c.locator('[data-f=seg-done]').evaluate((el: any) => el.style.width), '100%');
  assert.equal(await c.locator('[data-testid=progress-label]').textContent(), '5 / 5 parts · 100%');
  assert.equal(await c.locator('[data-testid=rows-read]').textContent(), '2,405');
  assert.equal(await c.locator('[data-testid=rows-inserted]').textContent(), '2,400');
  assert.equal(await c.locator('[data-testid=rows-rejected]').textContent(), '5');
  assert.equal(await c.locator('[data-testid=parts] .chip').count(), 5);
  assert.equal(await c.locator('[data-testid=parts] .chip[data-status=completed]').count(), 5);
  assert.equal(await c.locator('.tag').textContent(), 'leads');

  // Rejects: the first 100 as a table, all of them as a CSV download.
  await c.locator('[data-testid=rejects-toggle]').click();
  await c.locator('[data-testid=rejects-table]').waitFor();
  assert.equal(await c.locator('[data-testid=rejects-table] tbody tr').count(), 5);
  const first = await c.locator('[data-testid=rejects-table] tbody tr').first().locator('td').allTextContents();
  assert.deepEqual(first, ['2,402', '(row)', 'email: not an email: "not-an-email-0"', 'not-an-email-0,"Bad, 0",Recife,PE']);
  const id = await c.getAttribute('data-id');
  assert.equal(await c.locator('[data-testid=rejects-csv]').getAttribute('href'), `/imports/${id}/rejects?format=csv`);
  assert.match((await c.locator('[data-testid=rejects-toggle]').textContent())!, /^hide rejects \(5\)$/);

  await page.screenshot({ path: artifactPath('dashboard.png'), fullPage: true });
  assert.deepEqual(errors, []);
  await page.close();
});

test('names and rejected lines from files are shown as text, never run as HTML', async () => {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const errors = pageErrors(page);
  await page.goto(base);
  const name = '<img src=x onerror=document.body.dataset.pwned=1>.csv';
  const evil = 'Email,Name\nok@example.com,Fine\n<script>document.body.dataset.pwned=2</script>,x\n';
  await upload(page, 'leads', name, evil);
  assert.equal(await waitFinished(page, name), 'completed');
  const c = card(page, name);
  await c.locator('[data-testid=rejects-toggle]').click();
  await c.locator('[data-testid=rejects-table]').waitFor();
  const raw = await c.locator('[data-testid=rejects-table] td.raw').first().textContent();
  assert.equal(raw, '<script>document.body.dataset.pwned=2</script>,x');
  assert.equal(await page.getAttribute('body', 'data-pwned'), null);
  assert.equal(await page.locator('[data-testid=imports] img, [data-testid=imports] script').count(), 0);
  assert.deepEqual(errors, []);
  await page.close();
});

test('a refused upload is reported on the page', async () => {
  const page = await browser.newPage();
  await page.goto(base);
  await upload(page, 'purchases', 'not-purchases.csv', 'Email,Name\na@example.com,A\n');
  await page.waitForFunction(() => /^Upload refused: /.test(document.querySelector('[data-testid=upload-message]').textContent));
  assert.equal(await page.getAttribute('[data-testid=upload-message]', 'class'), 'bad');
  await page.close();
});

test('with an API token on the server, the page asks for it and then uploads', async () => {
  const guarded = await buildServer({ ...intake.ctx, apiToken: 'dash-token' });
  const guardedBase = await guarded.listen({ port: 0, host: '127.0.0.1' });
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  try {
    await page.goto(guardedBase);
    assert.equal(await page.isVisible('#token'), false, 'the token field starts folded away');
    await upload(page, 'leads', 'guarded.csv', leadsCsv(10, 0, 'guarded'));
    await page.waitForFunction(() => /API token/.test(document.querySelector('[data-testid=upload-message]').textContent));
    assert.equal(await page.isVisible('#token'), true, 'a 401 unfolds the token field');
    await page.fill('#token', 'dash-token');
    await page.locator('#token').dispatchEvent('change');
    await upload(page, 'leads', 'guarded.csv', leadsCsv(10, 0, 'guarded'));
    assert.equal(await waitFinished(page, 'guarded.csv'), 'completed');
    // Kept in this browser for the next visit.
    await page.reload();
    assert.equal(await page.inputValue('#token'), 'dash-token');
    await page.screenshot({ path: artifactPath('dashboard-token.png') });
  } finally {
    await page.close();
    await guarded.close();
  }
});
