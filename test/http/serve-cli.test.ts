/**
 * `sluice serve` as a process: a port that is taken makes it fail (exit 1, the reason
 * printed) instead of running on with its workers and no server; a port that is not a
 * whole number is refused before anything starts (exit 2).
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, test } from 'node:test';
import { testDb, type TestDb } from '../helpers/db.ts';
import { killAll, startSluice } from '../helpers/processes.ts';

let db: TestDb;
before(async () => {
  db = await testDb();
});
after(async () => {
  await killAll();
  await db.close();
});

function exited(p: ReturnType<typeof startSluice>): Promise<number | null> {
  return new Promise((resolve) => {
    if (p.child.exitCode !== null) return resolve(p.child.exitCode);
    p.child.once('exit', (code) => resolve(code));
  });
}

test('a taken port: serve stops its workers and exits 1 with the reason', async () => {
  const taken = net.createServer();
  await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve));
  try {
    const port = (taken.address() as net.AddressInfo).port;
    const p = startSluice(['serve', '--port', String(port)], { DATABASE_URL: db.url, SLUICE_WORKERS: '1' });
    assert.equal(await exited(p), 1, p.output());
    assert.match(p.output(), /EADDRINUSE/);
  } finally {
    taken.close();
  }
});

test('a port that is not a whole number 0-65535 is refused (exit 2)', async () => {
  for (const port of ['', '0x10', '1.0', '65536']) {
    const p = startSluice(['serve', '--port', port], { DATABASE_URL: db.url });
    assert.equal(await exited(p), 2, `${JSON.stringify(port)}: ${p.output()}`);
    assert.match(p.output(), /invalid port/);
  }
});
