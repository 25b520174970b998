/**
 * The feed reader's guards (src/formats/xml-events-reader.ts): a feed nested deeper than the
 * limit fails as an invalid file inside the chunk that goes too deep, before the parser's
 * stack can grow (30 MB of `<a>` once took 2.9 GB and killed `sluice serve`), and an HTML
 * page with a DOCTYPE is the maintenance-page case, retried like an HTTP 5xx, while other
 * DOCTYPEs are still refused.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { InvalidFileError } from '../../src/core/errors.ts';
import { generateFeed } from '../../src/dev/feed-generator.ts';
import { startProviderSimulator, type ProviderSimulator } from '../../src/dev/provider-simulator.ts';
import { FeedRootError, HtmlPageError, MAX_FEED_DEPTH, XmlEventsReader } from '../../src/formats/xml-events-reader.ts';
import { syncEvents } from '../../src/pipelines/events/sync.ts';
import { testDb, type TestDb } from '../helpers/db.ts';
import { RESPONSE_1 } from './feeds.ts';

let db: TestDb;
let sim: ProviderSimulator;
before(async () => {
  db = await testDb();
  sim = await startProviderSimulator();
});
after(async () => {
  await sim.close();
  await db.close();
});

/** `<eventList>` and `depth - 1` nested `<a>`, all closed: a well-formed document `depth` deep. */
const nested = (depth: number) => `<?xml version="1.0"?>\n<eventList>${'<a>'.repeat(depth - 1)}${'</a>'.repeat(depth - 1)}</eventList>\n`;

/** Reads `xml` to its end in chunks of `size` bytes. */
function guard(xml: string, size = Infinity, maxDepth?: number): void {
  const r = new XmlEventsReader(() => {}, { maxDepth });
  const bytes = Buffer.from(xml);
  const step = size === Infinity ? bytes.length : size;
  for (let i = 0; i < bytes.length; i += step) r.write(new Uint8Array(bytes.subarray(i, i + step)));
  r.end();
}

const tooDeep = new RegExp(`^the feed nests elements more than ${MAX_FEED_DEPTH} deep \\(at line \\d+; the event feed needs 5\\)`);

const stored = async () => (await db.pool.query<{ n: string; version: string }>('SELECT (SELECT count(*) FROM provider_events) AS n, (SELECT version FROM provider_feed_state) AS version')).rows[0];

test('the reader counts depth exactly: the real feed is 5 deep at any chunk boundary, the limit itself passes and one more fails', () => {
  for (const size of [Infinity, 1, 3, 64]) {
    guard(RESPONSE_1, size, 5); // eventList > output > base_event > event > zone (self-closing)
    assert.throws(() => guard(RESPONSE_1, size, 4), (err: Error) => err instanceof InvalidFileError && /more than 4 deep/.test(err.message));
  }
  // A generated feed: thousands of self-closing zones, each closed again.
  guard([...generateFeed({ events: 50, zones: 20 })].join(''), 1000, 5);
  // What is not a tag does not count: quoted `>` and `/>`, comments, CDATA, PIs, text.
  guard(
    '<?xml version="1.0"?><?pi <a><b> ?><eventList note="a > b /> c" other=\'x/>y\'>x > y /> z' +
      '<!-- <a><b><c> --><![CDATA[<a><b><c>]]><output><zone z="/"/></output></eventList>',
    1,
    3,
  );
  guard(nested(MAX_FEED_DEPTH));
  for (const size of [Infinity, 1, 7]) {
    assert.throws(() => guard(nested(MAX_FEED_DEPTH + 1), size), (err: Error) => err instanceof InvalidFileError && tooDeep.test(err.message));
  }
});

test('a feed nested one level past the limit fails the sync as an invalid file: not retried, nothing stored; the limit itself syncs', async () => {
  const before = await stored();
  sim.setResponses([nested(MAX_FEED_DEPTH + 1)]);
  const r = await syncEvents(db.pool, { url: sim.url, trigger: 'test', retries: 2, backoffMs: 5 });
  assert.equal(r.status, 'failed');
  assert.equal(r.attempts, 1, 'a bad feed is not retried');
  assert.match(r.error ?? '', tooDeep);
  assert.deepEqual(await stored(), before);

  sim.setResponses([nested(MAX_FEED_DEPTH)]);
  const ok = await syncEvents(db.pool, { url: sim.url, trigger: 'test', retries: 0 });
  assert.equal(ok.status, 'completed', ok.error);
  assert.equal(ok.eventsSeen, 0);
});

test('5 MB of unclosed <a> fails at once, in its first chunk, instead of growing the parser stack with the body', async () => {
  const before = await stored();
  const body = `<eventList>${'<a>'.repeat((5 << 20) / 3)}`;
  sim.setResponses([body]);
  const r = await syncEvents(db.pool, { url: sim.url, trigger: 'test', retries: 0 });
  assert.equal(r.status, 'failed');
  assert.match(r.error ?? '', tooDeep);
  // The reader never got the chunk that went too deep (nor any later one).
  assert.ok(r.bytes < 1 << 20, `the reader read ${r.bytes} bytes`);
  assert.deepEqual(await stored(), before);
});

test('the real feed still syncs', async () => {
  sim.setResponses([RESPONSE_1]);
  const r = await syncEvents(db.pool, { url: sim.url, trigger: 'test', retries: 0 });
  assert.equal(r.status, 'completed', r.error);
  assert.deepEqual([r.eventsSeen, r.eventsRejected], [3, 0]);
});

const XHTML_PAGE = `<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN" "http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd">
<html xmlns="http://www.w3.org/1999/xhtml"><head><title>Maintenance</title></head><body><p>Back soon.</p></body></html>
`;
const HTML5_PAGE = '<!DOCTYPE html><html><head><title>Maintenance</title></head><body>Back soon.</body></html>';

test('a DOCTYPE naming html is a maintenance page (FeedRootError, retried); any other DOCTYPE is refused', () => {
  for (const page of [XHTML_PAGE, HTML5_PAGE, '<!doctype html><html></html>', '<!DOCTYPE HTML PUBLIC "-//W3C//DTD HTML 4.01//EN"><HTML></HTML>']) {
    for (const size of [Infinity, 1]) {
      assert.throws(() => guard(page, size), (err: Error) => err instanceof HtmlPageError && err instanceof FeedRootError && /declares <!DOCTYPE html>: an HTML page/i.test(err.message), page.slice(0, 60));
    }
  }
  // XXE and friends: refused, and not mistaken for a page.
  for (const refused of ['<?xml version="1.0"?><!DOCTYPE eventList [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><eventList>&xxe;</eventList>', '<!DOCTYPE htmlx><htmlx/>']) {
    assert.throws(() => guard(refused), (err: Error) => !(err instanceof HtmlPageError) && /the feed declares a DOCTYPE: DTDs and entities are refused/.test(err.message));
  }
});

test('an HTML maintenance page with a DOCTYPE, then the feed: retried, the sync completes at its 2nd attempt', async () => {
  for (const page of [XHTML_PAGE, HTML5_PAGE]) {
    sim.setResponses([page, RESPONSE_1]);
    const r = await syncEvents(db.pool, { url: sim.url, trigger: 'test', retries: 2, backoffMs: 5 });
    assert.equal(r.status, 'completed', r.error);
    assert.equal(r.attempts, 2);
    assert.equal(r.eventsSeen, 3);
  }
  // Every attempt a page: the sync fails, naming it.
  sim.setResponses([XHTML_PAGE]);
  const failed = await syncEvents(db.pool, { url: sim.url, trigger: 'test', retries: 1, backoffMs: 5 });
  assert.equal(failed.status, 'failed');
  assert.equal(failed.attempts, 2);
  assert.match(failed.error ?? '', /declares <!DOCTYPE html>: an HTML page, not the event feed/);
});

test('any other DOCTYPE is still refused at its first attempt (XXE safety), not retried as a page', async () => {
  sim.setResponses(['<?xml version="1.0"?><!DOCTYPE eventList [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><eventList>&xxe;</eventList>', RESPONSE_1]);
  const r = await syncEvents(db.pool, { url: sim.url, trigger: 'test', retries: 2, backoffMs: 5 });
  assert.equal(r.status, 'failed');
  assert.equal(r.attempts, 1);
  assert.match(r.error ?? '', /the feed declares a DOCTYPE: DTDs and entities are refused/);
});
