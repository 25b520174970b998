/**
 * A source whose connection is cut before its end: the run fails as `unavailable`, naming
 * the source, and nothing reaches the CRM. Cut at once (while the other sources are still
 * probed, before anything reads it), the body's error had no listener and ended the process
 * (a review: `sluice serve` died at its scheduled run); cut part way, the run failed as
 * `internal` with the bare message "terminated". Real HTTP for the sources, the simulator
 * for the CRM, in-process.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { CrmRunError, runCrmSync } from '../../src/pipelines/crm/sync.ts';
import { FILES, inProcessCrm, JAFFLE } from './helpers.ts';

const crm = inProcessCrm('sourcecut');
/**
 * How payments is served: whole; cut after half its bytes at once; cut while the other
 * sources are still being probed (customers answers 300 ms late), so before anything reads
 * it (what ended the process); or cut part way through its reading.
 */
let mode: 'whole' | 'cut-at-once' | 'cut-while-probing' | 'cut-later' | 'bad-header' = 'whole';
/** customers in 'bad-header' mode: 4 MB under a header COPY refuses (the stream is still being read when it does). */
const BAD_CUSTOMERS = `ident,first_name,last_name\n${Array.from({ length: 200_000 }, (_, i) => `${i},A${i},B`).join('\n')}\n`;
let server: http.Server;
let base = '';

before(async () => {
  server = http.createServer((req, res) => {
    const name = (req.url ?? '/').slice(1);
    if (!(FILES as readonly string[]).includes(name)) return void res.writeHead(404).end();
    if (name === 'raw_customers.csv' && mode === 'bad-header') return void res.writeHead(200, { 'content-type': 'text/csv' }).end(BAD_CUSTOMERS);
    const body = fs.readFileSync(path.join(JAFFLE, name));
    if (name === 'raw_customers.csv' && mode === 'cut-while-probing') {
      return void setTimeout(() => res.writeHead(200, { 'content-type': 'text/csv' }).end(body), 300);
    }
    if (name !== 'raw_payments.csv' || mode === 'whole') return void res.writeHead(200, { 'content-type': 'text/csv' }).end(body);
    res.writeHead(200, { 'content-type': 'text/csv', 'content-length': String(body.length) });
    res.write(body.subarray(0, body.length >> 1));
    if (mode === 'cut-at-once') res.socket?.destroy();
    else setTimeout(() => res.socket?.destroy(), mode === 'cut-while-probing' ? 50 : 300);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
after(async () => {
  server.closeAllConnections();
  await new Promise<void>((r) => server.close(() => r()));
});

function config() {
  const cfg = crm.config();
  return { ...cfg, sources: { customers: `${base}/raw_customers.csv`, orders: `${base}/raw_orders.csv`, payments: `${base}/raw_payments.csv` } };
}

for (const m of ['cut-at-once', 'cut-while-probing', 'cut-later'] as const) {
  test(`payments cut before its end (${m}): the run fails as unavailable, naming the source; nothing is sent to the CRM`, async () => {
    mode = m;
    const cfg = config();
    await assert.rejects(runCrmSync(crm.db.pool, cfg, { trigger: 'cli' }), (err: unknown) => {
      assert.ok(err instanceof CrmRunError, String(err));
      assert.equal(err.code, 'unavailable', err.message);
      // Cut at once, the fetch itself fails (its headers and the cut arrive together).
      assert.match(err.message, /^source payments: (cannot fetch|reading) http:\/\/127\.0\.0\.1:\d+\/raw_payments\.csv(:| failed before its end:) /);
      return true;
    });
    const writes = Object.keys(crm.sim.stats.byRoute).filter((route) => !route.startsWith('GET'));
    assert.deepEqual(writes, [], JSON.stringify(crm.sim.stats));
    assert.deepEqual([crm.sim.stats.persons, crm.sim.stats.deals], [0, 0]);
    const { rows } = await crm.db.pool.query(`SELECT status, error FROM crm_runs WHERE pipeline = $1`, [cfg.name]);
    assert.equal(rows[0]?.status, 'failed');
  });
}

test('a source COPY refuses (a wrong header), still streaming when it does, is invalid_file naming the line, not unavailable', async () => {
  mode = 'bad-header';
  for (let i = 0; i < 3; i++) {
    await assert.rejects(runCrmSync(crm.db.pool, config(), { trigger: 'cli' }), (err: unknown) => {
      assert.ok(err instanceof CrmRunError, String(err));
      assert.equal(err.code, 'invalid_file', err.message);
      assert.match(err.message, /^source customers \(http:\/\/127\.0\.0\.1:\d+\/raw_customers\.csv\): .*\(line \d+/);
      return true;
    });
  }
});

test('the same pipeline, payments whole again: the run completes', async () => {
  mode = 'whole';
  const r = await runCrmSync(crm.db.pool, config(), { trigger: 'cli' });
  assert.equal(r.status, 'completed');
});
