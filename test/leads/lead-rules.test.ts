/**
 * The lead pipeline's rules (issue 2), each against real Postgres through the engine.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { runImport, type ImportResult } from '../../src/engine/import-runner.ts';
import { leads } from '../../src/pipelines/leads.ts';
import { testDbAndDir, type TestDb } from '../helpers/db.ts';

let db: TestDb;
const dir = testDbAndDir('sluice-leads-', (d) => (db = d));

let n = 0;
async function importText(text: string | Buffer, opts: { maxRejectRatio?: number } = {}): Promise<ImportResult> {
  const file = path.join(dir, `f${++n}.csv`);
  fs.writeFileSync(file, text);
  return runImport({ pool: db.pool, pipeline: leads, file, ...opts });
}

async function lead(email: string) {
  const { rows } = await db.pool.query(
    `SELECT l.*, li.twitter, li.facebook, li.linkedin, li.website, li.mobile_phone,
            c.name AS city, s.acronym AS state
       FROM leads l LEFT JOIN lead_infos li ON li.lead_id = l.id
       LEFT JOIN cities c ON c.id = l.city_id LEFT JOIN states s ON s.id = l.state_id
      WHERE l.email = $1`,
    [email],
  );
  return rows[0];
}

async function rejects(id: string) {
  const { rows } = await db.pool.query('SELECT line, field, reason, raw FROM import_rejects WHERE import_id = $1 ORDER BY line, id', [id]);
  return rows as Array<{ line: number; field: string | null; reason: string; raw: string }>;
}

const HEADER = 'Email,Nome,Twitter,Website,Facebook,Linkedin,Phone,City,State,Tags,Opportunity,Job Title,Available for mailing';

test('a new lead gets every normalized field, city and state created in bulk', async () => {
  const r = await importText(
    `${HEADER}\n  Ana@Example.COM ,Ana Lima,@analima,ana.com.br,analima,analima,(11) 98765-4321,São Paulo,sp,"vip,evento",sim,CEO,não\n`,
  );
  assert.equal(r.status, 'completed', r.error);
  assert.deepEqual(r.rows, { read: 1, inserted: 1, updated: 0, unchanged: 0, rejected: 0 });
  const l = await lead('ana@example.com');
  assert.equal(l.name, 'Ana Lima');
  assert.equal(l.job_title, 'CEO');
  assert.equal(l.twitter, 'analima');
  assert.equal(l.website, 'http://ana.com.br');
  assert.equal(l.facebook, 'https://facebook.com/analima');
  assert.equal(l.linkedin, 'https://www.linkedin.com/in/analima');
  assert.equal(l.mobile_phone, '11987654321');
  assert.equal(l.city, 'São Paulo');
  assert.equal(l.state, 'SP');
  assert.deepEqual(l.tags, ['vip', 'evento']);
  assert.equal(l.opportunity, true);
  assert.equal(l.available_for_mailing, false);
});

test('URLs already in the right form are kept; https websites untouched', async () => {
  await importText(
    'email,facebook,linkedin,website\nurls@example.com,https://www.facebook.com/x,linkedin.com/in/y,https://z.io\n',
  );
  const l = await lead('urls@example.com');
  assert.equal(l.facebook, 'https://www.facebook.com/x');
  assert.equal(l.linkedin, 'linkedin.com/in/y');
  assert.equal(l.website, 'https://z.io');
});

test('headers match case-insensitively and by their alternative names', async () => {
  const r = await importText('EMAIL;FULL NAME;cargo;Celular;Disponível para email;Oportunidade\nalt@example.com;Bia Reis;CTO;11 2222-3333;Y;N\n');
  assert.equal(r.status, 'completed', r.error);
  const l = await lead('alt@example.com');
  assert.equal(l.name, 'Bia Reis');
  assert.equal(l.job_title, 'CTO');
  assert.equal(l.mobile_phone, '1122223333');
  assert.equal(l.available_for_mailing, true);
  assert.equal(l.opportunity, false);
});

test('name and job title overwrite when given, blank keeps them; tags are added to the set', async () => {
  await importText('Email,Name,Job Title,Tags\nover@example.com,Old Name,Dev,"a,b"\n');
  const r = await importText('Email,Name,Job Title,Tags\nover@example.com,New Name,,"b,c"\n');
  assert.deepEqual(r.rows, { read: 1, inserted: 0, updated: 1, unchanged: 0, rejected: 0 });
  const l = await lead('over@example.com');
  assert.equal(l.name, 'New Name');
  assert.equal(l.job_title, 'Dev');
  assert.deepEqual(l.tags, ['a', 'b', 'c']);
});

test('lead_infos fields are filled only when blank', async () => {
  await importText('Email,Twitter,Website\nfill@example.com,@first,\n');
  await importText('Email,Twitter,Website\nfill@example.com,@second,site.com\n');
  const l = await lead('fill@example.com');
  assert.equal(l.twitter, 'first');
  assert.equal(l.website, 'http://site.com');
});

test('city and state are set only when the lead has none', async () => {
  await importText('Email,City,State\ncity@example.com,Recife,PE\n');
  const r = await importText('Email,City,State\ncity@example.com,Natal,RN\n');
  assert.equal(r.rows.unchanged, 1);
  const l = await lead('city@example.com');
  assert.equal(l.city, 'Recife');
  assert.equal(l.state, 'PE');
});

test('a state that is not a 2-letter acronym is rejected for that field; the row imports', async () => {
  const r = await importText('Email,State,Opportunity\nbadstate@example.com,Pernambuco,talvez\n');
  assert.equal(r.status, 'completed', r.error);
  assert.deepEqual(r.rows, { read: 1, inserted: 1, updated: 0, unchanged: 0, rejected: 0 });
  const rej = await rejects(r.id);
  assert.deepEqual(rej.map((x) => [x.line, x.field]), [[2, 'state'], [2, 'opportunity']]);
  // The class before the colon, the value after it (rejects_by_reason counts by class).
  assert.equal(rej[0]!.reason, 'state must be a 2-letter acronym: "Pernambuco"');
  assert.match(rej[1]!.reason, /not a yes\/no value/);
  const l = await lead('badstate@example.com');
  assert.equal(l.state, null);
  assert.equal(l.opportunity, null);
});

test('yes/no values in every accepted spelling; blank leaves the value unchanged', async () => {
  const yes = ['1', 'y', 'YES', 's', 'Sim'];
  const no = ['0', 'n', 'nao', 'NÃO', 'no'];
  const rows = [...yes.map((v, i) => `yes${i}@example.com,${v}`), ...no.map((v, i) => `no${i}@example.com,${v}`)];
  const r = await importText(`Email,Opportunity\n${rows.join('\n')}\n`);
  assert.equal(r.rows.inserted, 10);
  for (let i = 0; i < 5; i++) {
    assert.equal((await lead(`yes${i}@example.com`)).opportunity, true);
    assert.equal((await lead(`no${i}@example.com`)).opportunity, false);
  }
  const again = await importText('Email,Opportunity\nyes0@example.com,\n');
  assert.equal(again.rows.unchanged, 1);
  assert.equal((await lead('yes0@example.com')).opportunity, true);
});

test('blank and malformed emails are rejected with their reason, line and raw text', async () => {
  const r = await importText('Email,Name\n,No Email\nnot-an-email,Bad\nok@example.com,Ok\n');
  assert.deepEqual(r.rows, { read: 3, inserted: 1, updated: 0, unchanged: 0, rejected: 2 });
  const rej = await rejects(r.id);
  assert.deepEqual(rej.map((x) => [x.line, x.field, x.raw]), [[2, null, ',No Email'], [3, null, 'not-an-email,Bad']]);
  assert.equal(rej[0]!.reason, 'email is blank');
  assert.match(rej[1]!.reason, /^email: not an email/);
});

test('"Email Address" (Mailchimp) and "E-mail" name the key too', async () => {
  for (const header of ['Email Address', 'E-mail', 'e-mail address', 'EMAIL']) {
    const email = `${header.toLowerCase().replace(/\W/g, '')}@example.com`;
    const r = await importText(`Name,${header}\nSpelled,${email}\n`);
    assert.equal(r.status, 'completed', `${header}: ${r.error}`);
    assert.equal(r.rows.inserted + r.rows.updated + r.rows.unchanged, 1, header);
    assert.equal((await lead(email))?.name, 'Spelled', header);
  }
});

test('no email column: the import fails with the original status and writes nothing', async () => {
  const before = (await db.pool.query('SELECT count(*)::int AS n FROM leads')).rows[0].n;
  const r = await importText('Name,Phone\nNo Key,123\n');
  assert.equal(r.status, 'failed');
  assert.equal(r.error, 'invalid file: email information missing');
  assert.equal((await db.pool.query('SELECT count(*)::int AS n FROM leads')).rows[0].n, before);
  const li = await db.pool.query('SELECT process_status, leads_imported FROM lead_imports WHERE id = $1', [r.id]);
  assert.deepEqual(li.rows[0], { process_status: 'invalid file: email information missing', leads_imported: 0 });
});

test('several email columns: the first value matching an existing lead wins', async () => {
  await importText('Email,Name\nexisting@example.com,Existing\n');
  const r = await importText('Email,Secondary Email,Name\nfresh@example.com,existing@example.com,Renamed\n');
  assert.deepEqual(r.rows, { read: 1, inserted: 0, updated: 1, unchanged: 0, rejected: 0 });
  assert.equal((await lead('existing@example.com')).name, 'Renamed');
  assert.equal(await lead('fresh@example.com'), undefined);
  const r2 = await importText('Email,Secondary Email,Name\nnew1@example.com,new2@example.com,New\n');
  assert.equal(r2.rows.inserted, 1);
  assert.ok(await lead('new1@example.com'));
});

test('rows of one email never pair a city with another row\'s state (no city that no row names)', async () => {
  const r = await importText('Email,City,State\nmix@example.com,,\nmix@example.com,Campinas,\nmix@example.com,Niterói,RJ\n');
  assert.equal(r.status, 'completed', r.error);
  const { rows } = await db.pool.query(
    `SELECT c.name, s.acronym FROM cities c LEFT JOIN states s ON s.id = c.state_id WHERE c.name IN ('Campinas', 'Niterói') ORDER BY 1`,
  );
  assert.deepEqual(rows, [{ name: 'Campinas', acronym: null }], 'the place the second row names; before, "Campinas / RJ" was created');
  const l = await lead('mix@example.com');
  assert.equal(l.city, 'Campinas');
  assert.equal(l.state, null, 'city and state come from one row');
});

test('a place is filled whole, across imports too: a lead with a state or a city keeps it, and no later row pairs it with another', async () => {
  const first = await importText('Email,City,State\nsp@place.example,,SP\ncampinas@place.example,Campinas,\nnone@place.example,,\n');
  assert.equal(first.status, 'completed', first.error);
  // Through a chunk's writes (chunk-sql.ts): each email once.
  const second = await importText('Email,City,State\nsp@place.example,Recife,PE\ncampinas@place.example,Natal,RN\nnone@place.example,Recife,PE\n');
  assert.equal(second.status, 'completed', second.error);
  assert.deepEqual(second.rows, { read: 3, inserted: 0, updated: 1, unchanged: 2, rejected: 0 });
  const place = async (email: string) => {
    const l = await lead(email);
    return [l.city, l.state];
  };
  assert.deepEqual(await place('sp@place.example'), [null, 'SP'], 'before: Recife with SP');
  assert.deepEqual(await place('campinas@place.example'), ['Campinas', null], 'before: Campinas with RN');
  assert.deepEqual(await place('none@place.example'), ['Recife', 'PE'], 'a lead without a place takes the row\'s whole');
  // Through the last merge of a key met earlier in the file (merge-sql.ts).
  const third = await importText('Email,Name,City,State\nsp@place.example,Ana,,\nsp@place.example,,Natal,RN\n');
  assert.equal(third.status, 'completed', third.error);
  assert.deepEqual(await place('sp@place.example'), [null, 'SP']);
});

test('thirteen rows of one new email give 1 inserted and 12 updated, merged in file order', async () => {
  const rows = ['Email,Name,Twitter,Tags'];
  for (let i = 1; i <= 13; i++) rows.push(`dup@example.com,${i === 13 ? '' : `Name ${i}`},${i >= 3 ? `@t${i}` : ''},tag${i % 3}`);
  const r = await importText(`${rows.join('\n')}\n`);
  assert.deepEqual(r.rows, { read: 13, inserted: 1, updated: 12, unchanged: 0, rejected: 0 });
  const l = await lead('dup@example.com');
  assert.equal(l.name, 'Name 12'); // overwrite: the last non-blank
  assert.equal(l.twitter, 't3'); // fill-if-blank: the first non-blank
  assert.deepEqual(l.tags, ['tag1', 'tag2', 'tag0']);
  const li = await db.pool.query('SELECT leads_imported, leads_updated FROM lead_imports WHERE id = $1', [r.id]);
  assert.deepEqual(li.rows[0], { leads_imported: 1, leads_updated: 12 });
});

test('importing the same file twice: the second run is all unchanged and writes nothing', async () => {
  const text = `${HEADER}\ntwice1@example.com,A,@a,a.com,a,a,1,Natal,RN,x,1,Dev,0\ntwice2@example.com,B,,,,,,,,,,,\n`;
  const first = await importText(text);
  assert.equal(first.rows.inserted, 2);
  const stamp = (await lead('twice1@example.com')).updated_at;
  const second = await importText(text);
  assert.deepEqual(second.rows, { read: 2, inserted: 0, updated: 0, unchanged: 2, rejected: 0 });
  assert.deepEqual((await lead('twice1@example.com')).updated_at, stamp);
});

test('--max-reject-ratio: exceeded, the import fails and nothing is merged', async () => {
  const r = await importText('Email,Name\nratio1@example.com,A\nbad,B\n,C\n', { maxRejectRatio: 0.5 });
  assert.equal(r.status, 'failed');
  assert.match(r.error!, /rejected 2 of 3 rows .*above --max-reject-ratio 0.5: nothing was imported/);
  assert.equal(await lead('ratio1@example.com'), undefined);
  assert.equal((await rejects(r.id)).length, 2);
  const ok = await importText('Email,Name\nratio2@example.com,A\nbad,B\n', { maxRejectRatio: 0.5 });
  assert.equal(ok.status, 'completed');
});

test('every import is recorded in lead_imports with counts and timings', async () => {
  const r = await importText('Email\nrecorded@example.com\n');
  const { rows } = await db.pool.query('SELECT * FROM lead_imports WHERE id = $1', [r.id]);
  assert.equal(rows[0].process_status, 'completed');
  assert.equal(rows[0].leads_imported, 1);
  assert.match(rows[0].file, /^f\d+\.csv$/);
  assert.ok(rows[0].timings.merge >= 0 && rows[0].timings.total >= rows[0].timings.merge);
  assert.ok(rows[0].finished_at >= rows[0].started_at);
});
