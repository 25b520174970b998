/**
 * Credentials written in URLs: sent as HTTP Basic authorization, and masked wherever a URL is
 * shown, with the value of every query parameter (`?access_token=***`).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { basicAuth, maskUrlPasswords, withoutPassword } from '../../src/core/url-credentials.ts';

test('basicAuth: the URL without its credentials, and their Basic header (percent-decoded; bad escapes as written)', () => {
  assert.deepEqual(basicAuth('http://h/feed'), { url: 'http://h/feed', headers: {} });
  const b = basicAuth('https://bob:s3cr%40t@h:8443/feed?x=1');
  assert.equal(b.url, 'https://h:8443/feed?x=1');
  assert.equal(Buffer.from(b.headers.authorization!.replace(/^Basic /, ''), 'base64').toString(), 'bob:s3cr@t');
  assert.equal(Buffer.from(basicAuth('https://u:%zz@h/').headers.authorization!.slice(6), 'base64').toString(), 'u:%zz');
  assert.deepEqual(basicAuth('not a url'), { url: 'not a url', headers: {} });
});

test('withoutPassword: the password masked, the user kept; a user alone is a token, masked', () => {
  assert.equal(withoutPassword('https://bob:pw@h/x'), 'https://bob:***@h/x');
  assert.equal(withoutPassword('https://TOKEN@h/x'), 'https://***@h/x');
  assert.equal(withoutPassword('https://h/x'), 'https://h/x');
  assert.equal(withoutPassword('::'), '<unparseable url>');
});

test('maskUrlPasswords: every URL in a text, credentials to the last @ before the host; text outside URLs untouched', () => {
  assert.equal(
    maskUrlPasswords('fetch failed: http://bob:s3cr@t@host/feed and https://TOKEN@h/a, https://sk_live:@h/b'),
    'fetch failed: http://bob:***@host/feed and https://***@h/a, https://***@h/b',
  );
  assert.equal(maskUrlPasswords('https://u:p@h:80/p?q=a@b#c@d'), 'https://u:***@h:80/p?q=***#c@d');
  assert.equal(maskUrlPasswords('http://h/x@y and mail a@b.c'), 'http://h/x@y and mail a@b.c');
});

test('query values: every value masked, names kept, a parameter without a value kept; the fragment untouched', () => {
  // The reviewer's case: a CRM source with both kinds of secret.
  assert.equal(
    withoutPassword('http://exporter:pw@host/raw_customers.csv?access_token=QUERYSECRET'),
    'http://exporter:***@host/raw_customers.csv?access_token=***',
  );
  for (const [url, shown] of [
    ['https://h/x?access_token=abc&sig=x%2Fy%3D%3D&page=2', 'https://h/x?access_token=***&sig=***&page=***'],
    ['https://h/x?download&empty=&k=v=w', 'https://h/x?download&empty=&k=***'],
    ['https://h/x?a=1;token=s', 'https://h/x?a=***'],
    ['https://h/x?=anonymous', 'https://h/x?=***'],
    ['https://h/x?', 'https://h/x?'],
    ['https://h/x?t=s#frag=1', 'https://h/x?t=***#frag=1'],
    ['https://TOKEN@h/x?t=s', 'https://***@h/x?t=***'],
  ] as const) assert.equal(withoutPassword(url), shown, url);
});

test('maskUrlPasswords masks query values of every URL in a text, up to a quote or white space', () => {
  assert.equal(
    maskUrlPasswords('GET "https://h/x.csv?access_token=SECRET&page=2" failed; retry https://u:pw@h2/y?sig=S, then give up'),
    'GET "https://h/x.csv?access_token=***&page=***" failed; retry https://u:***@h2/y?sig=*** then give up',
  );
  assert.equal(maskUrlPasswords('{"location":"http://h/x?t=SECRET"}'), '{"location":"http://h/x?t=***"}');
  assert.equal(maskUrlPasswords('<http://h/x?t=SECRET>'), '<http://h/x?t=***>');
  assert.equal(maskUrlPasswords('http://h/x?flag and http://h?t=SECRET'), 'http://h/x?flag and http://h?t=***');
  // Not a URL: a question mark in prose stays.
  assert.equal(maskUrlPasswords('is a=b? yes, file?x=1'), 'is a=b? yes, file?x=1');
  // withoutPassword and maskUrlPasswords agree on a URL alone.
  for (const url of ['https://bob:pw@h/x?a=1&b', 'https://h:8443/p/q?access_token=s&x=', 'http://TOKEN@h/?k=v']) {
    assert.equal(maskUrlPasswords(url), withoutPassword(url), url);
  }
});
