/**
 * The dashboard (GET /) in headless Chromium against a real server with the job queue and
 * two workers: a leads CSV uploaded through the form is followed (the list refreshes by
 * itself) until its progress bar reads 100% and its status `completed`; its rejects open as
 * a table; uploaded text is only ever shown as text; a server with an API token makes the
 * page ask for it, then list, follow and download (rejects CSV, metrics) with it; an encoding and a delimiter chosen on the form reach the server (a
 * Windows-1252 file detection would misread), and the delimiter is off for a fixed-width
 * pipeline; rejects that fail to load show the server's message (a wrong token's 401, a
 * deleted import's 404). Screenshots go to test-artifacts/dashboard*.png.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { after, before, test } from 'node:test';
import type { Browser, Page } from 'playwright-core';
import type { FastifyInstance } from 'fastify';
import { buildServer } from '../../src/http/server.ts';
import { pipelines } from '../../src/pipelines/index.ts';
import { purchases } from '../../src/pipelines/purchases.ts';
import { artifactPath, launchBrowser, pageErrors } from '../helpers/browser.ts';
import { testDb, type TestDb } from '../helpers/db.ts';
import { leadsCsv, leadsWithCity, startIntake, type Intake } from './http-helpers.ts';

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

async function upload(page: Page, pipeline: string, name: string, content: string | Buffer): Promise<void> {
  await page.selectOption('[data-testid=pipeline]', pipeline);
  await page.setInputFiles('[data-testid=file]', { name, mimeType: 'text/csv', buffer: Buffer.isBuffer(content) ? content : Buffer.from(content) });
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

  // 5 rejected rows, and one state refused alone (its row imported).
  await upload(page, 'leads', 'leads-2400.csv', `${leadsCsv(2400, 5, 'dash')}dash-state@example.com,Lead S,Recife,Pernambuco\n`);
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
  assert.equal(await c.locator('[data-testid=rows-read]').textContent(), '2,406');
  assert.equal(await c.locator('[data-testid=rows-inserted]').textContent(), '2,401');
  assert.equal(await c.locator('[data-testid=rows-rejected]').textContent(), '5');
  assert.equal(await c.locator('[data-testid=parts] .chip').count(), 5);
  assert.equal(await c.locator('[data-testid=parts] .chip[data-status=completed]').count(), 5);
  assert.equal(await c.locator('.tag').textContent(), 'leads');

  // Rejects: the first 100 as a table, all of them as a CSV download.
  await c.locator('[data-testid=rejects-toggle]').click();
  await c.locator('[data-testid=rejects-table]').waitFor();
  assert.equal(await c.locator('[data-testid=rejects-table] tbody tr').count(), 6);
  const first = await c.locator('[data-testid=rejects-table] tbody tr').first().locator('td').allTextContents();
  assert.deepEqual(first, ['2,402', '(row)', 'email: not an email: "not-an-email-0"', 'not-an-email-0,"Bad, 0",Recife,PE']);
  const id = await c.getAttribute('data-id');
  assert.equal(await c.locator('[data-testid=rejects-csv]').getAttribute('href'), `/imports/${id}/rejects?format=csv`);
  assert.match((await c.locator('[data-testid=rejects-toggle]').textContent())!, /^hide rejects \(6: 5 rows, 1 value\)$/);

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

test('with an API token on the server, the page asks for it, then lists, uploads, follows and downloads with it', async () => {
  const guarded = await buildServer({ ...intake.ctx, apiToken: 'dash-token' });
  const guardedBase = await guarded.listen({ port: 0, host: '127.0.0.1' });
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const errors = pageErrors(page);
  try {
    await page.goto(guardedBase);
    // Reads need the token too: the first refresh of the list gets 401, which unfolds the field.
    await page.waitForFunction(() => Number(document.body.dataset.refreshes ?? 0) >= 1);
    assert.match((await page.textContent('[data-testid=connection]'))!, /^offline: missing or wrong API token/);
    assert.equal(await page.isVisible('#token'), true, 'a 401 unfolds the token field');
    assert.equal(await page.locator('[data-testid=import]').count(), 0, 'no import listed without the token');
    await upload(page, 'leads', 'guarded.csv', leadsCsv(10, 2, 'guarded'));
    await page.waitForFunction(() => /^Upload refused: .*API token/.test(document.querySelector('[data-testid=upload-message]').textContent));

    await page.fill('#token', 'dash-token');
    await page.locator('#token').dispatchEvent('change');
    // Entering the token refreshes the list at once: the imports of the tests above appear.
    await page.waitForFunction(() => document.querySelector('[data-testid=connection]').textContent === 'live');
    const { rows } = await db.pool.query<{ n: number }>('SELECT count(*)::int AS n FROM imports');
    await page.waitForFunction((n: number) => document.querySelectorAll('[data-testid=import]').length === n, Math.min(rows[0]!.n, 20));

    await upload(page, 'leads', 'guarded.csv', leadsCsv(10, 2, 'guarded'));
    assert.match(await uploadAnswer(page), /^Queued guarded\.csv/);
    // Followed by the status polls, which carry the token.
    assert.equal(await waitFinished(page, 'guarded.csv'), 'completed');
    const c = card(page, 'guarded.csv');
    assert.equal(await c.locator('[data-testid=progress]').getAttribute('data-percent'), '100');
    assert.equal(await c.locator('[data-testid=progress-label]').textContent(), '1 / 1 parts · 100%');
    assert.equal(await c.locator('[data-testid=rows-inserted]').textContent(), '10');
    assert.equal(await c.locator('[data-testid=rows-rejected]').textContent(), '2');

    // The rejects table and the CSV download (a link cannot carry the header: fetched, then saved).
    await c.locator('[data-testid=rejects-toggle]').click();
    await c.locator('[data-testid=rejects-table]').waitFor();
    assert.equal(await c.locator('[data-testid=rejects-table] tbody tr').count(), 2);
    const id = await c.getAttribute('data-id');
    const [download] = await Promise.all([page.waitForEvent('download'), c.locator('[data-testid=rejects-csv]').click()]);
    assert.equal(download.suggestedFilename(), `rejects-${id}.csv`);
    const csv = fs.readFileSync((await download.path())!, 'utf8');
    assert.deepEqual(csv.split('\r\n'), [
      'line,field,reason,raw',
      '12,,"email: not an email: ""not-an-email-0""","not-an-email-0,""Bad, 0"",Recife,PE"',
      '13,,"email: not an email: ""not-an-email-1""","not-an-email-1,""Bad, 1"",Recife,PE"',
      '',
    ]);
    // The metrics link too, shown in a new tab.
    const [tab] = await Promise.all([page.waitForEvent('popup'), page.click('[data-testid=metrics]')]);
    await tab.waitForFunction(() => /sluice_http_requests_total/.test(document.body?.textContent ?? ''));
    await tab.close();

    // Kept in this browser for the next visit, and used at once.
    await page.reload();
    assert.equal(await page.inputValue('#token'), 'dash-token');
    await card(page, 'guarded.csv').waitFor();
    assert.equal(await page.textContent('[data-testid=connection]'), 'live');
    await page.screenshot({ path: artifactPath('dashboard-token.png') });
    // The 401s of the first refresh and upload are the only errors the page saw.
    assert.deepEqual(errors.filter((e) => !/status of 401/.test(e)), []);
  } finally {
    await page.close();
    await guarded.close();
  }
});

/** Waits for the server's answer to an upload; returns the form's message (Queued… or Upload refused: …). */
async function uploadAnswer(page: Page): Promise<string> {
  await page.waitForFunction(() => /^(Queued|Upload refused)/.test(document.querySelector('[data-testid=upload-message]').textContent));
  return (await page.textContent('[data-testid=upload-message]'))!;
}

/** The encoding and delimiter the server recorded for the import on the card of `name`. */
async function recordedFormat(page: Page, name: string): Promise<{ encoding: string; delimiter: string | null }> {
  const id = await card(page, name).getAttribute('data-id');
  const { rows } = await db.pool.query<{ encoding: string; delimiter: string | null }>('SELECT encoding, delimiter FROM imports WHERE id = $1', [id]);
  return rows[0]!;
}

test('an encoding and a delimiter chosen on the form are sent: a Windows-1252 ;-file whose first accent is past 64 KiB completes with its accents', async () => {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const errors = pageErrors(page);
  await page.goto(base);
  // ASCII for 2,000 rows, then accents: detected from the first 64 KiB this reads as UTF-8
  // and fails (http-e2e.test.ts). Names hold commas, unquoted: read with ',' they would split.
  const lines = ['Email;Name;Cidade;UF'];
  for (let i = 0; i < 2000; i++) lines.push(`win${i}@example.com;Silva, Ana ${i};Recife;PE`);
  for (let i = 2000; i < 2010; i++) lines.push(`win${i}@example.com;Conceição, João ${i};Florianópolis;SC`);
  const bytes = Buffer.from(`${lines.join('\r\n')}\r\n`, 'latin1'); // Windows-1252 and Latin-1 agree on ç ã ó
  assert.ok(bytes.findIndex((b) => b >= 0x80) > 64 * 1024, 'the first non-ASCII byte lies past the first 64 KiB');

  assert.equal(await page.isDisabled('[data-testid=delimiter]'), false);
  await page.selectOption('[data-testid=encoding]', 'windows-1252');
  await page.selectOption('[data-testid=delimiter]', ';');
  await upload(page, 'leads', 'win-semicolon.csv', bytes);
  assert.match(await uploadAnswer(page), /^Queued win-semicolon\.csv/);
  assert.equal(await waitFinished(page, 'win-semicolon.csv'), 'completed', (await card(page, 'win-semicolon.csv').locator('[data-f=error]').textContent()) ?? '');
  const c = card(page, 'win-semicolon.csv');
  assert.equal(await c.locator('[data-testid=rows-inserted]').textContent(), '2,010');
  assert.equal(await c.locator('[data-testid=rows-rejected]').textContent(), '0');
  assert.deepEqual(await recordedFormat(page, 'win-semicolon.csv'), { encoding: 'windows-1252', delimiter: ';' });
  assert.deepEqual(await leadsWithCity(db, ['win0@example.com', 'win2000@example.com', 'win2009@example.com']), [
    { email: 'win0@example.com', name: 'Silva, Ana 0', city: 'Recife' },
    { email: 'win2000@example.com', name: 'Conceição, João 2000', city: 'Florianópolis' },
    { email: 'win2009@example.com', name: 'Conceição, João 2009', city: 'Florianópolis' },
  ]);
  // The choices stay for the next upload.
  assert.equal(await page.inputValue('[data-testid=encoding]'), 'windows-1252');
  assert.equal(await page.inputValue('[data-testid=delimiter]'), ';');
  await page.screenshot({ path: artifactPath('dashboard-format.png') });
  assert.deepEqual(errors, []);
  await page.close();
});

test('the delimiter control is disabled, and not sent, for a fixed-width pipeline (purchases)', async () => {
  const page = await browser.newPage();
  const errors = pageErrors(page);
  await page.goto(base);
  // The page names each pipeline's file format next to its name: it must match src/pipelines.
  const options = await page.$$eval('[data-testid=pipeline] option', (os: any[]) => os.map((o) => [o.value, o.dataset.format]));
  assert.deepEqual(options, Object.values(pipelines).map((p) => [p.name, p.format.kind]));

  const delimiter = '[data-testid=delimiter]';
  assert.equal(await page.inputValue('[data-testid=pipeline]'), 'leads');
  assert.equal(await page.isDisabled(delimiter), false);
  await page.selectOption(delimiter, 'tab');
  await page.selectOption('[data-testid=pipeline]', 'purchases');
  assert.equal(await page.isDisabled(delimiter), true);
  assert.equal(await page.getAttribute(delimiter, 'title'), 'not used: purchases reads fixed-width files');
  await page.selectOption('[data-testid=pipeline]', 'leads');
  assert.equal(await page.isDisabled(delimiter), false, 'enabled again for a CSV pipeline');
  assert.equal(await page.getAttribute(delimiter, 'title'), '');

  // Uploaded with 'tab' still chosen but disabled: the server would refuse a delimiter here.
  await upload(page, 'purchases', 'purchases-sample.txt', `${purchases.sample!}\n`);
  assert.match(await uploadAnswer(page), /^Queued purchases-sample\.txt/);
  assert.equal(await page.isDisabled(delimiter), true);
  assert.equal(await page.inputValue(delimiter), 'tab');
  assert.equal(await waitFinished(page, 'purchases-sample.txt'), 'completed');
  assert.equal(await card(page, 'purchases-sample.txt').locator('[data-testid=rows-inserted]').textContent(), '4');
  assert.deepEqual(await recordedFormat(page, 'purchases-sample.txt'), { encoding: 'utf-8', delimiter: null });
  assert.deepEqual(errors, []);
  await page.close();
});

/** Opens the rejects of the card `c` and waits until they failed to load; returns the text shown. */
async function failedRejects(c: ReturnType<typeof card>): Promise<string> {
  await c.locator('[data-testid=rejects-toggle]').click();
  const box = c.locator('[data-testid=rejects]');
  await box.locator('p', { hasText: /^could not load rejects: / }).waitFor();
  return (await box.textContent())!;
}

test("a failed rejects request shows the server's message: a wrong API token (401)", async () => {
  const guarded = await buildServer({ ...intake.ctx, apiToken: 'rejects-token' });
  const guardedBase = await guarded.listen({ port: 0, host: '127.0.0.1' });
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const errors = pageErrors(page);
  try {
    await page.goto(guardedBase);
    await page.fill('#token', 'rejects-token');
    await page.locator('#token').dispatchEvent('change');
    await page.waitForFunction(() => document.querySelector('[data-testid=connection]').textContent === 'live');
    await upload(page, 'leads', 'rejects-401.csv', leadsCsv(5, 2, 'rejects401'));
    assert.match(await uploadAnswer(page), /^Queued rejects-401\.csv/);
    assert.equal(await waitFinished(page, 'rejects-401.csv'), 'completed');
    const c = card(page, 'rejects-401.csv');
    assert.equal(await c.locator('[data-testid=rows-rejected]').textContent(), '2');

    // A wrong token: the refresh it starts gets 401 (the card stays, the page goes offline).
    await page.fill('#token', 'not-the-token');
    await page.locator('#token').dispatchEvent('change');
    await page.waitForFunction(() => /^offline: missing or wrong API token/.test(document.querySelector('[data-testid=connection]').textContent));
    // (Whether this 401 unfolds the token field cannot be told apart here: the list's own
    // refresh, every second or ten, gets 401 too and unfolds it.)
    assert.equal(await failedRejects(c), 'could not load rejects: missing or wrong API token (send Authorization: Bearer <token>)');
    assert.equal(await page.isVisible('#token'), true, 'the token field is open');
    assert.equal(await c.locator('[data-testid=rejects-table]').count(), 0);
    await page.screenshot({ path: artifactPath('dashboard-rejects-401.png') });
    assert.deepEqual(errors.filter((e) => !/status of 401/.test(e)), []);
  } finally {
    await page.close();
    await guarded.close();
  }
});

test("a failed rejects request shows the server's message: an import deleted (as retention does) before its rejects are opened (404)", async () => {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const errors = pageErrors(page);
  try {
    await page.goto(base);
    await upload(page, 'leads', 'rejects-404.csv', leadsCsv(5, 2, 'rejects404'));
    assert.match(await uploadAnswer(page), /^Queued rejects-404\.csv/);
    assert.equal(await waitFinished(page, 'rejects-404.csv'), 'completed');
    const c = card(page, 'rejects-404.csv');
    const id = (await c.getAttribute('data-id'))!;
    // Its rejects and parts go with it (ON DELETE CASCADE); its card stays (a refresh only adds and updates cards).
    const { rowCount } = await db.pool.query('DELETE FROM imports WHERE id = $1', [id]);
    assert.equal(rowCount, 1);

    assert.equal(await failedRejects(c), `could not load rejects: no import ${id}`);
    assert.deepEqual(errors.filter((e) => !/status of 404/.test(e)), []);
  } finally {
    await page.close();
  }
});
