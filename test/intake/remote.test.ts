/**
 * Fetching a file by URL for POST /imports: the address policy (no loopback, private,
 * link-local... addresses unless SLUICE_FETCH_ALLOW_PRIVATE=1), checked for literal
 * addresses, for names on what they resolve to, and on every hop of a redirect chain,
 * before anything is sent; redirects, errors and the size limit, against a real local
 * HTTP server that counts the requests it gets.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, test } from 'node:test';
import { InvalidInputError } from '../../src/core/errors.ts';
import { fetchRemote, isNonPublicAddress } from '../../src/intake/remote.ts';

let server: http.Server;
let port: number;
const seen: string[] = [];

before(async () => {
  server = http.createServer((req, res) => {
    seen.push(req.url!);
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
    } else if (req.url === '/to-other-loopback') {
      res.writeHead(307, { location: `http://127.0.0.2:${port}/file.csv` }).end();
    } else {
      res.writeHead(404).end('no');
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  port = (server.address() as AddressInfo).port;
});
after(() => new Promise((resolve) => server.close(resolve)));

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

test('SLUICE_FETCH_ALLOW_PRIVATE=1 allows private addresses', async () => {
  process.env.SLUICE_FETCH_ALLOW_PRIVATE = '1';
  try {
    assert.equal(await text(await fetchRemote(`http://localhost:${port}/file.csv`, 1 << 20)), 'Email\na@example.com\n');
  } finally {
    delete process.env.SLUICE_FETCH_ALLOW_PRIVATE;
  }
});
