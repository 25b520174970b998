/**
 * A lookup with `create` (a lead's city and state) creates a reference row only when a
 * merged record takes it (merge-sql.ts, lookupNeeds): a new record; an existing one whose
 * fill-if-blank place is blank (neither city nor state). A row whose place the lead does not
 * take leaves `cities` and `states` as they were, and how the file is cut (one merge, chunks
 * of one row, one import per row, a target merged without prepared chunks, upload parts)
 * changes neither the leads nor the reference tables.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { after, test } from 'node:test';
import type { ImportResult } from '../../src/engine/import-runner.ts';
import { acceptUpload } from '../../src/intake/index.ts';
import { rng } from '../helpers/rng.ts';
import { importText as importLeads } from './import-text.ts';
import { testDb, type TestDb } from '../helpers/db.ts';
import { startIntake, waitForImportEnd, type Intake } from '../intake/http-helpers.ts';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-lookups-'));
after(() => fs.rmSync(dir, { recursive: true, force: true }));

const importText = (db: TestDb, text: string, size?: number): Promise<ImportResult> => importLeads(dir, db, text, size);

async function withDb<T>(f: (db: TestDb) => Promise<T>): Promise<T> {
  const db = await testDb();
  try {
    return await f(db);
  } finally {
    await db.close();
  }
}

/** Leads with their place, the reference tables, and the reference rows no lead holds. */
async function places(db: TestDb) {
  const q = async (sql: string) => (await db.pool.query(sql)).rows.map((r: { v: string }) => r.v);
  return {
    leads: await q(`SELECT l.email || ' ' || coalesce(c.name, '-') || '|' || coalesce(cs.acronym, '-') || ' ' || coalesce(s.acronym, '-') AS v
                      FROM leads l LEFT JOIN cities c ON c.id = l.city_id LEFT JOIN states cs ON cs.id = c.state_id
                      LEFT JOIN states s ON s.id = l.state_id ORDER BY 1`),
    cities: await q(`SELECT c.name || '|' || coalesce(s.acronym, 'NULL') AS v FROM cities c LEFT JOIN states s ON s.id = c.state_id ORDER BY 1`),
    states: await q(`SELECT acronym AS v FROM states ORDER BY 1`),
    orphans: await q(`SELECT 'city ' || c.name AS v FROM cities c WHERE NOT EXISTS (SELECT 1 FROM leads l WHERE l.city_id = c.id)
                      UNION ALL
                      SELECT 'state ' || s.acronym FROM states s
                       WHERE NOT EXISTS (SELECT 1 FROM leads l WHERE l.state_id = s.id)
                         AND NOT EXISTS (SELECT 1 FROM cities c JOIN leads l ON l.city_id = c.id WHERE c.state_id = s.id)
                      ORDER BY 1`),
  };
}

test("the reviewer's two files: a lead with a state keeps it, and the second file's city and state are not created", async () => {
  // The second file's row alone (a prepared chunk), and twice (its rows folded in the last merge).
  for (const second of ['a@x.com,Niteroi,SP\n', 'a@x.com,Niteroi,SP\na@x.com,Niteroi,SP\n']) {
    for (const size of [1, 100_000]) {
      await withDb(async (db) => {
        await importText(db, 'Email,City,State\na@x.com,,RJ\n', size);
        const r = await importText(db, `Email,City,State\n${second}`, size);
        const rows = second.split('\n').length - 1;
        assert.deepEqual(r.rows, { read: rows, inserted: 0, updated: 0, unchanged: rows, rejected: 0 });
        assert.deepEqual(await places(db), { leads: ['a@x.com -|- RJ'], cities: [], states: ['RJ'], orphans: [] }, `${rows} rows, chunks of ${size}`);
      });
    }
  }
});

test('a field-rejected state: no city without a state is created for a lead that keeps its place, one is for a new lead', async () => {
  for (const size of [1, 100_000]) {
    await withDb(async (db) => {
      await importText(db, 'Email,City,State\na@x.com,,RJ\nb@x.com,Rio,RJ\n', size);
      // a and b have a place: the rows' cities are not theirs; c is new and takes Niteroi alone.
      const r = await importText(db, 'Email,City,State\na@x.com,Niteroi,XYZ\nb@x.com,Campinas,XYZ\nc@x.com,Niteroi,XYZ\n', size);
      assert.deepEqual(r.rows, { read: 3, inserted: 1, updated: 0, unchanged: 2, rejected: 0 });
      assert.deepEqual(await places(db), {
        leads: ['a@x.com -|- RJ', 'b@x.com Rio|RJ RJ', 'c@x.com Niteroi|- -'],
        cities: ['Niteroi|NULL', 'Rio|RJ'],
        states: ['RJ'],
        orphans: [],
      }, `chunks of ${size}`);
    });
  }
});

test('a lead with no place takes the row\'s, created; a lead with a city and no state keeps it and creates nothing', async () => {
  for (const size of [1, 100_000]) {
    await withDb(async (db) => {
      await importText(db, 'Email,Name,City,State\na@x.com,A,,\nb@x.com,B,Natal,\n', size);
      const r = await importText(db, 'Email,City,State\na@x.com,Recife,PE\nb@x.com,Natal,RN\n', size);
      assert.deepEqual(r.rows, { read: 2, inserted: 0, updated: 1, unchanged: 1, rejected: 0 });
      assert.deepEqual(await places(db), {
        leads: ['a@x.com Recife|PE PE', 'b@x.com Natal|- -'],
        cities: ['Natal|NULL', 'Recife|PE'],
        states: ['PE'],
        orphans: [],
      }, `chunks of ${size}`);
    });
  }
});


/** Existing leads: e0 with a whole place, e1 with a state only, e2 with a city only, e3 with none. */
const SEED = 'Email,Name,City,State\ne0@x.com,E0,Rio,RJ\ne1@x.com,E1,,SP\ne2@x.com,E2,Natal,\ne3@x.com,E3,,\n';

/** Rows over few emails (existing and new), cities and states (blank, and a state rejected for the field). */
function randomRows(seed: number): string[] {
  const rnd = rng(seed);
  const pick = <T>(xs: T[]): T => xs[Math.floor(rnd() * xs.length)]!;
  const emails = ['e0@x.com', 'e1@x.com', 'e2@x.com', 'e3@x.com', 'n1@x.com', 'n2@x.com'];
  const cities = ['', '', 'Rio', 'Niteroi', 'Campinas', 'Rio de Janeiro', 'Natal'];
  const states = ['', '', 'RJ', 'SP', 'RN', 'XYZ'];
  return Array.from({ length: 4 + Math.floor(rnd() * 6) }, () => `${pick(emails)},${pick(cities)},${pick(states)}`);
}

const HEADER = 'Email,City,State';

/** A way to cut the rows: `setup` once on its database, `run` per seed (on emptied tables). */
type Mode = { name: string; setup?: (db: TestDb) => Promise<() => Promise<void>>; run: (db: TestDb, rows: string[]) => Promise<void> };
const MODES: Mode[] = [
  { name: 'whole file', run: async (db, rows) => void (await importText(db, `${HEADER}\n${rows.join('\n')}\n`, 100_000)) },
  { name: 'chunks of 1 row', run: async (db, rows) => void (await importText(db, `${HEADER}\n${rows.join('\n')}\n`, 1)) },
  {
    name: 'one import per row',
    run: async (db, rows) => {
      for (const r of rows) await importText(db, `${HEADER}\n${r}\n`, 100_000);
    },
  },
  {
    // Chunks merged whole on the import's connection (mergeSql), not prepared.
    name: 'no id sequence, chunks of 1 row',
    setup: async (db) => {
      await db.pool.query(`ALTER TABLE leads ALTER COLUMN id DROP IDENTITY; CREATE SEQUENCE other_ids; ALTER TABLE leads ALTER COLUMN id SET DEFAULT nextval('other_ids')`);
      return async () => {};
    },
    run: async (db, rows) => void (await importText(db, `${HEADER}\n${rows.join('\n')}\n`, 1)),
  },
  {
    name: 'upload parts of 2 rows',
    setup: async (db) => {
      const running = await startIntake(db, { workers: 2 });
      intake = running.ctx;
      return () => running.stop();
    },
    run: async (db, rows) => {
      const { id } = await acceptUpload(intake!, { pipeline: 'leads', fileName: 'places.csv', source: 'test' }, Readable.from([Buffer.from(`${HEADER}\n${rows.join('\n')}\n`)]), { partRows: 2 });
      const status = await waitForImportEnd(id, db.pool);
      assert.equal(status.status, 'completed', status.error ?? '');
    },
  },
];
let intake: Intake['ctx'] | undefined;

const SEEDS = 15;

test('random files: the same leads, cities and states whether merged whole, in 1-row chunks, row by row or in upload parts; no reference row unheld', async () => {
  const results = new Map<string, Array<Awaited<ReturnType<typeof places>>>>();
  // One database per mode, emptied between seeds.
  for (const mode of MODES) {
    await withDb(async (db) => {
      const stop = await mode.setup?.(db);
      try {
        const out = [];
        for (let seed = 1; seed <= SEEDS; seed++) {
          await db.pool.query('TRUNCATE leads, lead_infos, cities, states');
          await importText(db, SEED, 100_000);
          const rows = randomRows(seed);
          await mode.run(db, rows);
          const result = await places(db);
          assert.deepEqual(result.orphans, [], `seed ${seed} (${rows.join('; ')}), ${mode.name}: reference rows no lead holds`);
          out.push(result);
        }
        results.set(mode.name, out);
      } finally {
        await stop?.();
      }
    });
  }
  const [first, ...others] = MODES.map((m) => m.name);
  for (const name of others) {
    for (let seed = 1; seed <= SEEDS; seed++) {
      assert.deepEqual(results.get(name)![seed - 1], results.get(first!)![seed - 1], `seed ${seed} (${randomRows(seed).join('; ')}): ${name} against ${first}`);
    }
  }
});
