/**
 * Settings (environment values) are checked by each command before it opens anything: a
 * bad value is bad usage (exit 2), refused at once, with nothing written and nothing left
 * open. `sluice serve`'s cases are in test/http/serve-cli.test.ts.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { SETTINGS, repoRoot } from '../../src/config.ts';
import { testDbAndDir, type TestDb } from '../helpers/db.ts';
import { killAll, startSluice } from '../helpers/processes.ts';
import { NO_DATABASE, exitedWithin } from './exit.ts';

/** Well under pg's 10 s idle timeout, after which a pool left open would let a process exit. */
const PROMPTLY_MS = 8_000;

let db: TestDb;
const dir = testDbAndDir('sluice-settings-', (d) => (db = d), killAll);

test('every setting read with intEnv is in SETTINGS, and every one listed is read somewhere', () => {
  const sources = fs
    .globSync('src/**/*.ts', { cwd: repoRoot })
    .filter((f) => f !== path.join('src', 'config.ts'))
    .map((f) => fs.readFileSync(path.join(repoRoot, f), 'utf8'))
    .join('\n');
  const read = new Set([...sources.matchAll(/intEnv\('([A-Z0-9_]+)'/g)].map((m) => m[1]!));
  assert.ok(read.size > 10, 'the intEnv calls were found');
  for (const name of read) assert.ok(Object.hasOwn(SETTINGS, name), `${name} is read with intEnv but missing from SETTINGS`);
  for (const name of Object.keys(SETTINGS)) assert.match(sources, new RegExp(`\\b${name}\\b`), `${name} is in SETTINGS but never read`);
});

test('worker: a bad setting is refused before the database is opened (exit 2)', async () => {
  const p = startSluice(['worker'], { DATABASE_URL: NO_DATABASE, SLUICE_WORKER_WARMUP: 'maybe' });
  assert.equal(await exitedWithin(p, 30_000), 2, p.output());
  assert.match(p.output(), /SLUICE_WORKER_WARMUP must be 0 or 1, got "maybe"/);
  assert.doesNotMatch(p.output(), /ECONNREFUSED|ready/);
});

test('worker: the reported case, SLUICE_WORKER_WARMUP=maybe with the database up, exits 2 at once', async () => {
  const p = startSluice(['worker'], { DATABASE_URL: db.url, SLUICE_WORKER_WARMUP: 'maybe' });
  assert.equal(await exitedWithin(p, PROMPTLY_MS), 2, p.output());
  assert.match(p.output(), /SLUICE_WORKER_WARMUP must be 0 or 1/);
  assert.doesNotMatch(p.output(), /ready/);
});

test('import: a bad SLUICE_CHUNK_ROWS is refused (exit 2) and no import row is created', async () => {
  const file = path.join(dir, 'leads.csv');
  fs.writeFileSync(file, 'email,name\na@example.com,Ana\n');
  for (const value of ['abc', '0', '2.5', '-1']) {
    const p = startSluice(['import', file, '--pipeline', 'leads', '--json', '--no-progress'], { DATABASE_URL: db.url, SLUICE_CHUNK_ROWS: value });
    assert.equal(await exitedWithin(p, 30_000), 2, `${value}: ${p.output()}`);
    assert.match(p.output(), new RegExp(`SLUICE_CHUNK_ROWS must be a positive integer, got "${value}"`));
  }
  const { rows } = await db.pool.query<{ n: number }>('SELECT count(*) AS n FROM imports');
  assert.equal(rows[0]!.n, 0);
  // Before the database is opened, too.
  const p = startSluice(['import', file, '--pipeline', 'leads', '--no-progress'], { DATABASE_URL: NO_DATABASE, SLUICE_CHUNK_ROWS: 'abc' });
  assert.equal(await exitedWithin(p, 30_000), 2, p.output());
  assert.doesNotMatch(p.output(), /ECONNREFUSED/);
});

test('a timer setting beyond what setTimeout can wait (2^31-1 ms) is refused: Node would fire it every millisecond', () => {
  const check = SETTINGS.SLUICE_REAP_INTERVAL_MS!.check;
  assert.equal(check('30000'), undefined);
  assert.equal(check(String(2 ** 31 - 1)), undefined);
  assert.equal(check(String(2 ** 31)), 'must be a whole number from 1000 to 2147483647');
  assert.equal(check('999'), 'must be a whole number from 1000 to 2147483647');
});

test('a DATABASE_URL that is not a PostgreSQL URL is bad usage (exit 2), named, its password masked', async () => {
  const cases: Array<[string, RegExp]> = [
    ['not a url', /DATABASE_URL must be a postgres:\/\/ or postgresql:\/\/ URL \(user, password, host, port, database\), got not a url/],
    // Not a URL to the WHATWG parser (a bad port): the value is still shown, its password masked.
    ['postgres://u:secretpw@localhost:abc/db', /DATABASE_URL must be a postgres:\/\/ .*got postgres:\/\/u:\*\*\*@localhost:abc\/db/],
    ['http://u:secretpw@localhost:5432/db', /DATABASE_URL must be a postgres:\/\/ .*got http:\/\/u:\*\*\*@localhost:5432\/db/],
  ];
  // What pg takes is not refused: socket forms the WHATWG URL parser refuses. (They fail
  // later, on connecting to a socket that is not there: exit 1, not bad usage.)
  for (const url of ['postgres://user:pw@/db?host=/nonexistent/sock', 'postgresql://user@/db?host=/nonexistent/sock', '/nonexistent/sock dbname']) {
    const p = startSluice(['rejects', '00000000-0000-0000-0000-000000000000'], { DATABASE_URL: url });
    assert.equal(await exitedWithin(p, 30_000), 1, `${url}: ${p.output()}`);
    assert.doesNotMatch(p.output(), /DATABASE_URL must be/);
  }
  for (const [url, message] of cases) {
    for (const args of [['serve', '--port', '0'], ['rejects', '00000000-0000-0000-0000-000000000000']]) {
      const p = startSluice(args, { DATABASE_URL: url });
      assert.equal(await exitedWithin(p, 30_000), 2, `${args[0]} ${url}: ${p.output()}`);
      assert.match(p.output(), message);
      assert.doesNotMatch(p.output(), /secretpw|ENOTFOUND/);
    }
  }
});
