/** Credentials written in URLs: sent as HTTP Basic authorization, and masked wherever a URL is shown. */
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

test('maskUrlPasswords: every URL in a text, credentials to the last @ before the host; nothing else touched', () => {
  assert.equal(
    maskUrlPasswords('fetch failed: http://bob:s3cr@t@host/feed and https://TOKEN@h/a, https://sk_live:@h/b'),
    'fetch failed: http://bob:***@host/feed and https://***@h/a, https://***@h/b',
  );
  assert.equal(maskUrlPasswords('https://u:p@h:80/p?q=a@b#c@d'), 'https://u:***@h:80/p?q=a@b#c@d');
  assert.equal(maskUrlPasswords('http://h/x@y and mail a@b.c'), 'http://h/x@y and mail a@b.c');
});
