/** Migrations: applied once, recorded with their checksum; a file changed afterwards stops the start. */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { migrate, migrationsDir } from '../../src/db/migrate.ts';
import { openDb } from '../../src/db/pool.ts';
import { testDb, type TestDb } from '../helpers/db.ts';
import { killAll, startSluice, until } from '../helpers/processes.ts';
import { exited } from '../cli/exit.ts';

let db: TestDb;
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-migrations-'));
before(async () => {
  db = await testDb();
  for (const f of fs.readdirSync(migrationsDir)) fs.copyFileSync(path.join(migrationsDir, f), path.join(dir, f));
});
after(async () => {
  await killAll();
  await db.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

test('checksums: recorded on first sight, a changed applied file refused, a new file applied once', async () => {
  // A database migrated before checksums existed: the column is added and filled.
  await db.pool.query('ALTER TABLE sluice_migrations DROP COLUMN IF EXISTS checksum');
  assert.deepEqual(await migrate(db.pool, dir), []);
  const { rows } = await db.pool.query<{ n: number }>('SELECT count(*)::int AS n FROM sluice_migrations WHERE checksum ~ $1', ['^[0-9a-f]{64}$']);
  assert.equal(rows[0]!.n, fs.readdirSync(migrationsDir).filter((f) => f.endsWith('.sql')).length);

  fs.writeFileSync(path.join(dir, '9999_added.sql'), 'CREATE TABLE added_by_test (id int);');
  assert.deepEqual(await migrate(db.pool, dir), ['9999_added.sql']);
  assert.deepEqual(await migrate(db.pool, dir), [], 'applied once');

  fs.appendFileSync(path.join(dir, '0002_leads.sql'), '\n-- edited after it was applied\n');
  await assert.rejects(migrate(db.pool, dir), /migration 0002_leads\.sql was changed after it was applied.*new numbered migration/);
  // With a later file changed as well, the first changed one (in order) is named.
  fs.writeFileSync(path.join(dir, '9999_added.sql'), 'CREATE TABLE added_by_test (id bigint);');
  await assert.rejects(migrate(db.pool, dir), /0002_leads\.sql was changed/);
});

test('a start whose migrations fail closes the connections it opened (they kept the process alive 10 s)', async () => {
  // A recorded checksum that no file has: openDb's migrate refuses the start.
  await db.pool.query(`UPDATE sluice_migrations SET checksum = repeat('0', 64) WHERE version = 1`);
  try {
    await assert.rejects(openDb({ url: db.url, applicationName: 'sluice-open-fails' }), /0001_imports\.sql was changed/);
    // The client's sockets are closed when openDb rejects; their backends leave
    // pg_stat_activity a moment later (a loaded machine showed one still there). Left open,
    // they would stay for the pool's 10 s idle timeout: well past this deadline.
    await until(async () => {
      const { rows } = await db.pool.query<{ n: number }>(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = 'sluice-open-fails'`);
      return rows[0]!.n === 0;
    }, 'the failed start\'s connections to close', 3_000);
  } finally {
    await db.pool.query(`UPDATE sluice_migrations SET checksum = NULL WHERE version = 1`);
  }
});

test('a database migrated by a newer Sluice: a process of this version warns, naming the migrations, and runs', async () => {
  // A version no file of the repository has (the test above applied its 9999 here too).
  await db.pool.query(`INSERT INTO sluice_migrations (version, name, checksum) VALUES (8888, '8888_from_the_future.sql', repeat('f', 64))`);
  try {
    const p = startSluice(['rejects', '00000000-0000-0000-0000-000000000000'], { DATABASE_URL: db.url });
    await exited(p);
    assert.match(p.output(), /sluice: warning: the database has migrations this version of Sluice does not \([^)]*8888_from_the_future\.sql[^)]*\): a newer Sluice migrated it/);
    assert.match(p.output(), /no import 00000000-0000-0000-0000-000000000000/, 'and the command ran');
  } finally {
    await db.pool.query('DELETE FROM sluice_migrations WHERE version = 8888');
  }
});
