/**
 * Fetching a file by URL for POST /imports: the address policy (no loopback, private,
 * link-local... addresses unless SLUICE_FETCH_ALLOW_PRIVATE=1), checked for literal
 * addresses, for names on what they resolve to, and on every hop of a redirect chain,
 * before anything is sent; redirects, errors, the size limit and the minimum rate, against
 * a real local HTTP server that counts the requests it gets.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, test } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';
import { InvalidInputError } from '../../src/core/errors.ts';
import { fetchRemote, isNonPublicAddress } from '../../src/intake/remote.ts';
import { withDeadline } from '../helpers/processes.ts';
import { waitFor } from './http-helpers.ts';

let server: http.Server;
let port: number;
const seen: string[] = [];
/** The authorization header of each request, by path. */
const authorizations: Array<[string, string | undefined]> = [];
/** Another origin (another port): records the authorization it gets. */
let other: http.Server;
let otherPort: number;
/** One per request of /hang or /endless.csv: resolved when the server sees its response closed. */
const closes: Array<Promise<void>> = [];

before(async () => {
  other = http.createServer((req, res) => {
    authorizations.push([`other${req.url}`, req.headers.authorization]);
    res.writeHead(200).end('Email\nb@example.com\n');
  });
  await new Promise<void>((resolve) => other.listen(0, '127.0.0.1', resolve));
  otherPort = (other.address() as AddressInfo).port;
  server = http.createServer((req, res) => {
    seen.push(req.url!);
    authorizations.push([req.url!, req.headers.authorization]);
    const hops = /^\/hops\/(\d+)$/.exec(req.url!);
    if (hops) {
      const n = Number(hops[1]);
      res.writeHead(302, { location: n === 0 ? '/file.csv' : `/hops/${n - 1}` }).end();
    } else if (req.url === '/file.csv') {
      res.writeHead(200, { 'content-type': 'text/csv' }).end('Email\na@example.com\n');
    } else if (req.url === '/big.csv') {
      res.writeHead(200, { 'content-length': '5000' }).end('x'.repeat(5000));
    } else if (req.url === '/slow.csv' || req.url === '/stalls.csv') {
      // 8 lines 50 ms apart (0.4 s in all); /stalls.csv pauses 0.6 s after the fourth.
      res.writeHead(200);
      let i = 0;
      const line = () => {
        res.write(`line ${i}\n`);
        if (++i === 8) return void res.end();
        setTimeout(line, req.url === '/stalls.csv' && i === 4 ? 600 : 50);
      };
      line();
    } else if (req.url!.startsWith('/trickle.csv')) {
      // A line every 10 ms, for as long as the client reads: about 1 KiB/s.
      res.writeHead(200);
      let i = 0;
      const timer = setInterval(() => res.write(`line ${i++}\n`), 10);
      res.on('close', () => clearInterval(timer));
    } else if (req.url === '/steady.csv') {
      // 8 KiB every 10 ms for 0.5 s: 800 KiB/s, many windows of the test's minimum rate.
      res.writeHead(200);
      let i = 0;
      const timer = setInterval(() => {
        res.write(Buffer.alloc(8192, 'x'));
        if (++i === 50) {
          clearInterval(timer);
          res.end();
        }
      }, 10);
      res.on('close', () => clearInterval(timer));
    } else if (req.url === '/hang' || req.url === '/endless.csv') {
      // /hang never answers; /endless.csv sends 4 KiB every 10 ms for as long as it is read.
      closes.push(new Promise((resolve) => res.on('close', () => resolve())));
      if (req.url === '/hang') return;
      res.writeHead(200);
      const timer = setInterval(() => res.write(Buffer.alloc(4096, 'z')), 10);
      res.on('close', () => clearInterval(timer));
    } else if (req.url === '/burst.csv') {
      res.writeHead(200).end(Buffer.alloc(1 << 20, 'y'));
    } else if (req.url === '/same-origin') {
      res.writeHead(302, { location: '/to-other-origin' }).end();
    } else if (req.url === '/to-other-origin') {
      res.writeHead(302, { location: `http://127.0.0.1:${otherPort}/file.csv` }).end();
    } else if (req.url === '/to-other-loopback') {
      res.writeHead(307, { location: `http://127.0.0.2:${port}/file.csv` }).end();
    } else {
      res.writeHead(404).end('no');
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  port = (server.address() as AddressInfo).port;
});
after(async () => {
  server.closeAllConnections();
  await new Promise((resolve) => server.close(resolve));
  await new Promise((resolve) => other.close(resolve));
});

async function text(stream: NodeJS.ReadableStream): Promise<string> {
  let s = '';
  for await (const chunk of stream) s += chunk.toString();
  return s;
}

async function refused(url: string, message: RegExp, options?: Parameters<typeof fetchRemote>[2]): Promise<void> {
  await assert.rejects(fetchRemote(url, 1 << 20, options), (err: Error) => {
    assert.ok(err instanceof InvalidInputError, `${err.name}: ${err.message}`);
    assert.match(err.message, message);
    return true;
  });
}

test('non-public addresses: loopback, private, shared, link-local, reserved, multicast, IPv6 and IPv4-mapped forms', () => {
  for (const a of [
    '127.0.0.1', '127.255.0.9', '10.1.2.3', '172.16.0.1', '172.31.255.255', '192.168.1.1', '169.254.169.254', '100.64.0.1',
    '0.0.0.0', '192.0.2.10', '198.18.0.1', '224.0.0.1', '255.255.255.255', '::', '::1', 'fe80::1', 'fc00::1', 'fd12:3456::1',
    'ff02::1', 'fe80::1%eth0', '::ffff:127.0.0.1', '::ffff:7f00:1', '::ffff:169.254.169.254', '64:ff9b::a9fe:a9fe', '2002:7f00:1::', 'localhost', '',
  ]) assert.equal(isNonPublicAddress(a), true, a);
  for (const a of ['8.8.8.8', '1.1.1.1', '172.32.0.1', '100.128.0.1', '93.184.216.34', '2606:4700:4700::1111', '::ffff:8.8.8.8']) {
    assert.equal(isNonPublicAddress(a), false, a);
  }
});

test('IPv6 forms embedding an IPv4 address: mapped checked as that address, the others refused whole', () => {
  const table: Array<[string, boolean, string]> = [
    // IPv4-mapped ::ffff:0:0/96: the socket connects to the IPv4 address itself.
    ['::ffff:127.0.0.1', true, 'mapped loopback'],
    ['::ffff:7f00:1', true, 'mapped loopback, hex'],
    ['::ffff:10.0.0.1', true, 'mapped private'],
    ['::ffff:8.8.8.8', false, 'mapped public'],
    // IPv4-translated ::ffff:0:0:0/96 (SIIT): the reviewer's bypass.
    ['::ffff:0:7f00:1', true, 'translated loopback'],
    ['::ffff:0:127.0.0.1', true, 'translated loopback, dotted'],
    ['::ffff:0:a9fe:a9fe', true, 'translated metadata'],
    ['::ffff:0:808:808', true, 'translated public: refused whole'],
    // IPv4-compatible ::/96 (deprecated).
    ['::7f00:1', true, 'compatible loopback'],
    ['::127.0.0.1', true, 'compatible loopback, dotted'],
    ['::808:808', true, 'compatible public: refused whole'],
    // NAT64.
    ['64:ff9b::7f00:1', true, 'NAT64 loopback'],
    ['64:ff9b::808:808', true, 'NAT64 public: refused whole'],
    ['64:ff9b:1::a00:1', true, 'local-use NAT64'],
    // 6to4 and Teredo.
    ['2002:7f00:1::1', true, '6to4 loopback'],
    ['2002:a00:1::1', true, '6to4 private'],
    ['2002:808:808::1', true, '6to4 public: refused whole'],
    ['2001:0:4136:e378:8000:63bf:3fff:fdd2', true, 'Teredo'],
    // Outside global unicast 2000::/3, and the new documentation prefix.
    ['::ffff:1:7f00:1', true, 'not global unicast'],
    ['4000::1', true, 'not global unicast'],
    ['3fff::1', true, 'documentation 3fff::/20'],
    ['2001:db8::1', true, 'documentation'],
    ['2001:4860:4860::8888', false, 'public'],
    ['2a00:1450:4001::200e', false, 'public'],
  ];
  for (const [address, refused, what] of table) assert.equal(isNonPublicAddress(address), refused, `${address} (${what})`);
});

test('a URL to an IPv4-translated loopback is refused before any request', async () => {
  const before = seen.length;
  await refused(`http://[::ffff:0:7f00:1]:${port}/file.csv`, /^"url" leads to ::ffff:0:7f00:1, a loopback, private or otherwise non-public address/);
  assert.equal(seen.length, before);
});

test('credentials in the URL follow a same-origin redirect, not one to another origin', async () => {
  const any = { allowed: () => true };
  authorizations.length = 0;
  assert.equal(await text(await fetchRemote(`http://u:pw@127.0.0.1:${port}/same-origin`, 1 << 20, any)), 'Email\nb@example.com\n');
  const basic = `Basic ${Buffer.from('u:pw').toString('base64')}`;
  assert.deepEqual(authorizations, [['/same-origin', basic], ['/to-other-origin', basic], ['other/file.csv', undefined]]);
});

test('by default a URL leading to this machine is refused before any request: a literal address, [::1], a name', async () => {
  const before = seen.length;
  await refused(`http://127.0.0.1:${port}/file.csv`, /^"url" leads to 127\.0\.0\.1, a loopback, private or otherwise non-public address: refused \(SLUICE_FETCH_ALLOW_PRIVATE=1 allows it\)$/);
  await refused(`http://[::1]:${port}/file.csv`, /leads to ::1, /);
  await refused(`http://localhost:${port}/file.csv`, /leads to localhost, /);
  await refused(`http://169.254.169.254/latest/meta-data/`, /leads to 169\.254\.169\.254, /);
  assert.equal(seen.length, before, 'the server got no request');
});

test('every hop of a redirect chain is checked: a redirect to a refused address stops there', async () => {
  const only = (a: string) => a === '127.0.0.1';
  const before = seen.length;
  await refused(`http://127.0.0.1:${port}/to-other-loopback`, /leads to 127\.0\.0\.2, /, { allowed: only });
  assert.deepEqual(seen.slice(before), ['/to-other-loopback']);
});

test('allowed addresses: redirects followed (5 at most), statuses and the size limit reported', async () => {
  const any = { allowed: () => true };
  assert.equal(await text(await fetchRemote(`http://127.0.0.1:${port}/hops/4`, 1 << 20, any)), 'Email\na@example.com\n');
  await refused(`http://127.0.0.1:${port}/hops/5`, /^fetching http:\/\/127\.0\.0\.1:\d+\/hops\/0: more than 5 redirects$/, any);
  await refused(`http://127.0.0.1:${port}/missing.csv?token=secret`, /^fetching http:\/\/127\.0\.0\.1:\d+\/missing\.csv answered 404$/, any);
  await assert.rejects(fetchRemote(`http://127.0.0.1:${port}/big.csv`, 4000, any), /remote file is 5000 bytes, above the limit of 4000/);
  await refused(`http://127.0.0.1:1/file.csv`, /^could not fetch http:\/\/127\.0\.0\.1:1\/file\.csv: /, any);
});

test('the timeout bounds the wait for an answer and each pause in the body, not the whole download', async () => {
  const o = { allowed: () => true, timeoutMs: 300 };
  const slow = await text(await fetchRemote(`http://127.0.0.1:${port}/slow.csv`, 1 << 20, o));
  assert.equal(slow.split('\n').length, 9, 'a download longer than the timeout, without long pauses, completes');
  const stalls = await fetchRemote(`http://127.0.0.1:${port}/stalls.csv`, 1 << 20, o);
  await assert.rejects(text(stalls), (err: Error) => err instanceof InvalidInputError && /^fetching http:\/\/127\.0\.0\.1:\d+\/stalls\.csv: no data for 0\.3 s$/.test(err.message));
});

test('a body slower than the minimum rate fails the fetch, with a clear error', async () => {
  // The reviewer's server sent a line every 20 s, within the 30 s pause: scaled down here.
  const o = { allowed: () => true, timeoutMs: 5000, minRate: { bytes: 4096, windowMs: 200 } };
  const t0 = performance.now();
  const stream = await fetchRemote(`http://127.0.0.1:${port}/trickle.csv?token=secret`, 1 << 20, o);
  await assert.rejects(text(stream), (err: Error) => {
    assert.ok(err instanceof InvalidInputError, `${err.name}: ${err.message}`);
    assert.match(err.message, /^fetching http:\/\/127\.0\.0\.1:\d+\/trickle\.csv: too slow, \d+ bytes in 0\.2 s \(at least 4096 bytes per 0\.2 s are required\): the server is trickling or stalled$/);
    return true;
  });
  assert.ok(performance.now() - t0 < 3000, 'failed within a few windows');
});

test('the minimum rate: a steady body over many windows completes; time the reader is behind is not counted', async () => {
  // 160 KiB per window sent, 16 KiB required: a margin for a busy machine's late timers.
  const o = { allowed: () => true, timeoutMs: 5000, minRate: { bytes: 16 * 1024, windowMs: 200 } };
  assert.equal((await text(await fetchRemote(`http://127.0.0.1:${port}/steady.csv`, 1 << 20, o))).length, 50 * 8192);
  // The whole body sent at once, then the reader does not read for three windows (the
  // database slow to take a part): its own delay, not the server's slowness. (A delay on
  // purpose: what is tested is time passing without a read.)
  const burst = await fetchRemote(`http://127.0.0.1:${port}/burst.csv`, 2 << 20, o);
  await delay(600);
  assert.equal((await text(burst)).length, 1 << 20);
});

test('SLUICE_FETCH_ALLOW_PRIVATE=1 allows private addresses', async () => {
  process.env.SLUICE_FETCH_ALLOW_PRIVATE = '1';
  try {
    assert.equal(await text(await fetchRemote(`http://localhost:${port}/file.csv`, 1 << 20)), 'Email\na@example.com\n');
  } finally {
    delete process.env.SLUICE_FETCH_ALLOW_PRIVATE;
  }
});

test('an abort signal stops the fetch: before any request, waiting for the answer, or mid-body (the server sees its response closed)', async () => {
  const any = { allowed: () => true };
  // Aborted already: nothing is requested.
  const requests = seen.length;
  await refused(`http://127.0.0.1:${port}/file.csv?token=secret`, /^fetching http:\/\/127\.0\.0\.1:\d+\/file\.csv was stopped: /, { ...any, signal: AbortSignal.abort() });
  assert.equal(seen.length, requests);

  // Waiting for the answer's headers: the request is destroyed, the error is the signal's reason when a SluiceError.
  const waiting = new AbortController();
  const n = closes.length;
  const pending = fetchRemote(`http://127.0.0.1:${port}/hang`, 1 << 20, { ...any, signal: waiting.signal });
  await waitFor('request of /hang', async () => (closes.length > n ? true : undefined), 10_000, 10);
  waiting.abort(new InvalidInputError('the client left'));
  await assert.rejects(pending, (err: Error) => err instanceof InvalidInputError && err.message === 'the client left');
  await withDeadline(closes[n]!, 10_000, 'close of /hang seen by the server');

  // Mid-body: the stream fails with the reason (a 400 for any other reason), the server's response closes.
  const reading = new AbortController();
  const body = await fetchRemote(`http://127.0.0.1:${port}/endless.csv`, 1 << 30, { ...any, signal: reading.signal });
  const chunks = body[Symbol.asyncIterator]();
  assert.equal((await chunks.next()).done, false);
  reading.abort();
  await assert.rejects(chunks.next(), (err: Error) => {
    assert.ok(err instanceof InvalidInputError, `${err.name}: ${err.message}`);
    assert.match(err.message, /^fetching http:\/\/127\.0\.0\.1:\d+\/endless\.csv was stopped: /);
    return true;
  });
  await withDeadline(closes[n + 1]!, 10_000, 'close of /endless.csv seen by the server');

  // A signal aborted after the body was read whole changes nothing: no listener left on it
  // throws, and the server is fetched from as before.
  const done = new AbortController();
  assert.equal(await text(await fetchRemote(`http://127.0.0.1:${port}/file.csv`, 1 << 20, { ...any, signal: done.signal })), 'Email\na@example.com\n');
  assert.doesNotThrow(() => done.abort());
  assert.equal(await text(await fetchRemote(`http://127.0.0.1:${port}/file.csv`, 1 << 20, any)), 'Email\na@example.com\n');
});
