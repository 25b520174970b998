/**
 * The provider feed's URL with a secret in its query string (`?access_token=...`, beside
 * user:password@): the sync completes with the real URL (test/crm/source-url-secrets.test.ts
 * has a server that checks the token), and the URL stored with it (provider_syncs.url)
 * masks the password and every query value.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { getSync } from '../../src/db/sql/events.ts';
import { startProviderSimulator, type ProviderSimulator } from '../../src/dev/provider-simulator.ts';
import { syncEvents } from '../../src/pipelines/events/sync.ts';
import { testDb, type TestDb } from '../helpers/db.ts';
import { RESPONSE_1 } from '../events/feeds.ts';

const PASSWORD = 'feedPW31';
const SECRET = 'FEEDquerySECRET';
let db: TestDb;
let sim: ProviderSimulator;
before(async () => {
  db = await testDb();
  sim = await startProviderSimulator({ responses: [RESPONSE_1], basicAuth: { user: 'bob', password: PASSWORD } });
});
after(async () => {
  await sim.close();
  await db.close();
});

test('a feed URL with a query secret: the sync completes, the stored URL masks its query values', async () => {
  const url = `${sim.url.replace('http://', `http://bob:${PASSWORD}@`)}${sim.url.includes('?') ? '&' : '?'}access_token=${SECRET}&flag`;
  const r = await syncEvents(db.pool, { url, trigger: 'test', retries: 0 });
  assert.equal(r.status, 'completed', r.error);
  assert.equal(r.eventsSeen, 3);
  const record = await getSync(db.pool, r.syncId);
  assert.match(record?.url ?? '', /^http:\/\/bob:\*\*\*@127\.0\.0\.1:\d+\/[^?]*\?(.*&)?access_token=\*\*\*&flag$/);
  const { rows } = await db.pool.query(`SELECT row_to_json(s)::text AS t FROM provider_syncs s WHERE id = $1`, [r.syncId]);
  for (const secret of [PASSWORD, SECRET]) assert.ok(!rows[0]?.t.includes(secret), rows[0]?.t);
});
