/** The streaming feed reader and the event checks, without a database. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { InvalidFileError } from '../../src/core/errors.ts';
import { generateFeed } from '../../src/dev/feed-generator.ts';
import { FeedRootError, MAX_EVENT_CHARS, MAX_TOKEN_CHARS, XmlEventsReader, type RawFeedEvent } from '../../src/formats/xml-events-reader.ts';
import { checkFeedEvent, eventUuid, uuidV5 } from '../../src/pipelines/events/feed-event.ts';
import { RESPONSE_1, feedXml } from './feeds.ts';

function read(xml: string | Uint8Array, chunkSize = Infinity): RawFeedEvent[] {
  const out: RawFeedEvent[] = [];
  const reader = new XmlEventsReader((e) => out.push(e));
  const bytes = typeof xml === 'string' ? Buffer.from(xml) : xml;
  for (let i = 0; i < bytes.length; i += chunkSize === Infinity ? bytes.length : chunkSize) {
    reader.write(bytes.subarray(i, chunkSize === Infinity ? bytes.length : i + chunkSize));
  }
  reader.end();
  return out;
}

test('reads response_1: three events with their base events and zones', () => {
  const events = read(RESPONSE_1);
  assert.deepEqual(
    events.map((e) => [e.base.base_event_id, e.event.event_id, e.zones.length]),
    [
      ['291', '291', 3],
      ['322', '1642', 1],
      ['1591', '1642', 2],
    ],
  );
  assert.equal(events[1]!.base.title, 'Pantomima Full');
  assert.equal(events[0]!.line, 5);
});

test('chunk boundaries anywhere, even inside a multi-byte character, give the same events', () => {
  const xml = RESPONSE_1.replace('Camela en concierto', 'Camela en concierto — ñandú €');
  const whole = read(xml);
  for (const size of [1, 2, 3, 7, 64]) assert.deepEqual(read(xml, size), whole, `chunk size ${size}`);
  assert.equal(whole[0]!.base.title, 'Camela en concierto — ñandú €');
});

test('a DOCTYPE is refused: external entities (XXE) and entity expansion never run', () => {
  const xxe = `<?xml version="1.0"?><!DOCTYPE eventList [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<eventList><output><base_event base_event_id="1" sell_mode="online" title="&xxe;"></base_event></output></eventList>`;
  const laughs = `<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;"><!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<eventList title="&lol3;"/>`;
  for (const xml of [xxe, laughs, '<!DOCTYPE eventList SYSTEM "http://127.0.0.1:1/x.dtd"><eventList/>']) {
    assert.throws(() => read(xml), (err: Error) => err instanceof InvalidFileError && /DOCTYPE/.test(err.message));
  }
});

test('garbage, empty, truncated and non-UTF-8 feeds fail as invalid files', () => {
  const cases: Array<[string | Uint8Array, RegExp]> = [
    ['', /empty/],
    ['   \n', /empty/],
    ['this is not xml', /malformed/],
    [RESPONSE_1.slice(0, 900), /malformed/],
    [Buffer.concat([Buffer.from('<eventList title="'), Buffer.from([0xff, 0xfe]), Buffer.from('"/>')]), /UTF-8/],
    ['<eventList><output><base_event title="&undefined;"/></output></eventList>', /malformed/],
  ];
  for (const [xml, message] of cases) {
    assert.throws(() => read(xml), (err: Error) => err instanceof InvalidFileError && message.test(err.message), String(xml).slice(0, 40));
  }
});

test('a well-formed document whose root is not <eventList> (an error page) fails at its first tag, naming the root', () => {
  const cases: Array<[string, string]> = [
    ['<error>rate limited</error>', 'error'],
    ['<?xml version="1.0"?>\n<!-- a comment first --><html><body>Maintenance</body></html>', 'html'],
    ['<a><base_event base_event_id="1" sell_mode="online" title="T"><event event_id="1"/></base_event></a>', 'a'],
  ];
  for (const [xml, root] of cases) {
    const events: RawFeedEvent[] = [];
    const reader = new XmlEventsReader((e) => events.push(e));
    assert.throws(() => {
      reader.write(xml);
      reader.end();
    }, (err: Error) => err instanceof FeedRootError && err instanceof InvalidFileError && err.message.startsWith(`the document's root element is <${root}>, not <eventList>`), xml);
    assert.equal(events.length, 0, xml);
  }
  assert.equal(read('<eventList/>').length, 0);
});

test('memory stays bounded while streaming a 100 MB feed', () => {
  global.gc?.();
  const before = process.memoryUsage().heapUsed;
  let events = 0;
  let zones = 0;
  let peak = 0;
  let bytes = 0;
  const reader = new XmlEventsReader((e) => {
    events += 1;
    zones += e.zones.length;
  });
  for (const chunk of generateFeed({ events: 5300, zones: 200 })) {
    reader.write(Buffer.from(chunk));
    bytes += chunk.length;
    if (events % 100 === 0) peak = Math.max(peak, process.memoryUsage().heapUsed - before);
  }
  reader.end();
  assert.equal(events, 5300);
  assert.equal(zones, 1_060_000);
  assert.ok(bytes > 100e6, `feed is ${bytes} bytes`);
  // The feed is >100 MB; the reader holds one event and one chunk. Garbage not yet collected
  // shows up too, hence the generous bound.
  assert.ok(peak < 80e6, `heap grew by ${Math.round(peak / 1e6)} MB`);
});

test('UUID v5 follows RFC 4122 (DNS namespace, www.example.com) and is stable per pair', () => {
  assert.equal(uuidV5('6ba7b810-9dad-11d1-80b4-00c04fd430c8', 'www.example.com'), '2ed6657d-e927-568b-95e1-2665a8aea6a2');
  assert.equal(eventUuid('322', '1642'), eventUuid('322', '1642'));
  assert.notEqual(eventUuid('322', '1642'), eventUuid('1591', '1642'));
  assert.match(eventUuid('1', '2'), /^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
});

test('UUID names are unambiguous: ids without a colon keep their UUID; pairs joining to one text get two', () => {
  // The id response_1's event 322/1642 always had (name "322:1642").
  assert.equal(eventUuid('322', '1642'), '7c9d1417-e5a8-5896-9676-088d2f5b6d35');
  const pairs: Array<[string, string]> = [['a:b', 'c'], ['a', 'b:c'], ['a:', 'b:c'], ['a', ':b:c'], ['a:b:', 'c'], ['1', 'a:b'], ['\u00001', ':a:b']];
  const ids = new Set(pairs.map(([b, e]) => eventUuid(b, e)));
  assert.equal(ids.size, pairs.length);
  // None is the id the old form ("base:event") gave any of them, which stored events keep.
  for (const [b, e] of pairs) assert.notEqual(eventUuid(b, e), uuidV5('6f1c2b9e-3d4a-4e8f-a2b7-5c0d9e8f1a23', `${b}:${e}`));
});

/** Writes `head`, then `size` characters of `fill` in 64 KiB chunks, then `tail`; the bytes read when it failed, or null. */
function feedWithLongToken(head: string, fill: string, size: number, tail: string): number | null {
  const reader = new XmlEventsReader(() => {});
  const chunk = Buffer.from(fill.repeat(65_536 / fill.length));
  try {
    reader.write(Buffer.from(head));
    for (let sent = 0; sent < size; sent += chunk.length) reader.write(chunk.subarray(0, Math.min(chunk.length, size - sent)));
    reader.write(Buffer.from(tail));
    reader.end();
    return null;
  } catch (err) {
    assert.ok(err instanceof InvalidFileError, String(err));
    assert.match(err.message, new RegExp(`a tag of the feed \\(with the text or comments before it\\) is longer than ${MAX_TOKEN_CHARS} characters`));
    return reader.bytes;
  }
}

test('a tag (or comment, or text) longer than 1 Mi characters fails the feed before more than a chunk past the limit is held', () => {
  const open = '<eventList><output><base_event base_event_id="1" sell_mode="online" title="';
  const close = '"><event event_id="1"/></base_event></output></eventList>';
  const cases: Array<[string, string, string, string]> = [
    ['attribute', open, 'a', close],
    ['attribute of ">" characters', open, '>', close],
    ['comment', '<eventList><!--', 'a', '--></eventList>'],
    ['text', '<eventList>', 'a', '</eventList>'],
    ['entity name in text', '<eventList>&', 'a', ';</eventList>'],
    ['tag name', '<eventList><', 'a', '/></eventList>'],
  ];
  for (const [name, head, fill, tail] of cases) {
    // 50 MB of it: read only until a chunk past the limit.
    const failedAt = feedWithLongToken(head, fill, 50e6, tail);
    assert.ok(failedAt !== null && failedAt <= MAX_TOKEN_CHARS + 65_536 + head.length, `${name}: failed after ${failedAt} bytes`);
    // Just past the limit, ending inside the chunk that crosses it: checked as it ends.
    assert.notEqual(feedWithLongToken(head, fill, MAX_TOKEN_CHARS + 1, tail), null, `${name}: one character over`);
  }
  // Under the limit: read as usual.
  assert.equal(feedWithLongToken(open, 'a', MAX_TOKEN_CHARS - 200, close), null);
});

test('an event longer than 16 Mi characters keeps no more zones and is rejected, quoting none of its long values', () => {
  const name = 'n'.repeat(MAX_TOKEN_CHARS - 100);
  const zones = Array.from({ length: Math.ceil(MAX_EVENT_CHARS / name.length) + 1 }, (_, i) => `<zone zone_id="${i}" price="1" name="${name}"/>`);
  const xml = `<eventList><output><base_event base_event_id="1" sell_mode="online" title="T"><event event_id="big" event_start_date="2021-01-01T00:00:00" event_end_date="2021-01-01T01:00:00">${zones.join('')}</event></base_event></output></eventList>`;
  const [event] = read(xml, 65_536);
  assert.ok(event!.oversized);
  // The zones that end within the limit (they follow the <event> tag directly).
  let end = 0;
  assert.equal(event!.zones.length, zones.filter((z) => (end += z.length) <= MAX_EVENT_CHARS).length);
  assert.ok(event!.zones.length < zones.length);
  const checked = checkFeedEvent(event!);
  assert.ok(!checked.ok);
  assert.equal(checked.reject.reason, `the event is longer than ${MAX_EVENT_CHARS.toLocaleString('en-US')} characters of XML`);
  assert.ok(checked.reject.raw.length <= 4001, `raw is ${checked.reject.raw.length} characters`);
});

test('impossible dates, bad prices and missing zones are rejected with a reason; good events pass', () => {
  const xml = feedXml([
    {
      base_event_id: '1',
      sell_mode: 'online',
      title: 'T',
      events: [
        { event_id: 'ok', start: '2021-09-30T20:00:00', end: '2021-09-30T21:00:00', zones: [{ zone_id: '1', price: '10.50' }, { zone_id: '1', price: '8' }] },
        { event_id: 'sept31', start: '2021-09-31T20:00:00', end: '2021-09-31T22:00:00', zones: [{ zone_id: '1', price: '1' }] },
        { event_id: 'feb29', start: '2021-02-29T20:00:00', end: '2021-03-01T22:00:00', zones: [{ zone_id: '1', price: '1' }] },
        { event_id: 'hour25', start: '2021-01-01T25:00:00', end: '2021-01-02T01:00:00', zones: [{ zone_id: '1', price: '1' }] },
        { event_id: 'backwards', start: '2021-01-02T00:00:00', end: '2021-01-01T00:00:00', zones: [{ zone_id: '1', price: '1' }] },
        { event_id: 'price', start: '2021-01-01T00:00:00', end: '2021-01-01T01:00:00', zones: [{ zone_id: '1', price: '-3' }] },
        { event_id: 'nozones', start: '2021-01-01T00:00:00', end: '2021-01-01T01:00:00', zones: [] },
      ],
    },
    { base_event_id: '2', sell_mode: 'sometimes', title: 'T', events: [{ event_id: '1', start: '2021-01-01T00:00:00', end: '2021-01-01T01:00:00', zones: [{ zone_id: '1', price: '1' }] }] },
  ]);
  const checked = read(xml).map(checkFeedEvent);
  const ok = checked.filter((c) => c.ok);
  assert.equal(ok.length, 1);
  const first = checked[0]!;
  assert.ok(first.ok);
  assert.equal(first.event.minPrice, 8);
  assert.equal(first.event.maxPrice, 10.5);
  assert.equal(first.event.zones.length, 2, 'a duplicated zone_id keeps both zones');
  const reasons = checked.flatMap((c) => (c.ok ? [] : [`${c.reject.eventId}: ${c.reject.reason}`]));
  assert.deepEqual(reasons, [
    'sept31: event_start_date is an impossible date: 2021-09-31T20:00:00',
    'feb29: event_start_date is an impossible date: 2021-02-29T20:00:00',
    'hour25: event_start_date is an impossible date: 2021-01-01T25:00:00',
    'backwards: event_end_date 2021-01-01T00:00:00 is before event_start_date 2021-01-02T00:00:00',
    'price: zone 1 has no valid price: "-3"',
    'nozones: the event has no zones, so no price',
    '1: sell_mode is not online/offline: "sometimes"',
  ]);
  const rejected = checked[1]!;
  assert.ok(!rejected.ok);
  assert.match(rejected.reject.raw, /event_id="sept31"/);
});
