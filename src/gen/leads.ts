/**
 * Synthetic leads for demos and benchmarks: `generateLeads` fills the base set-based (one
 * INSERT ... SELECT over generate_series per million rows), `writeLeadsCsv` streams a file
 * in the original import format whose emails are partly taken from the base.
 */
import fs from 'node:fs';
import { randomBytes } from 'node:crypto';
import { to as copyTo } from 'pg-copy-streams';
import type { Pool } from '../db/pool.ts';

const CITIES: Array<[string, string]> = [
  ['São Paulo', 'SP'], ['Rio de Janeiro', 'RJ'], ['Belo Horizonte', 'MG'], ['Curitiba', 'PR'],
  ['Porto Alegre', 'RS'], ['Salvador', 'BA'], ['Recife', 'PE'], ['Fortaleza', 'CE'],
  ['Florianópolis', 'SC'], ['Goiânia', 'GO'], ['Manaus', 'AM'], ['Belém', 'PA'],
];
const FIRST = ['Ana', 'João', 'Maria', 'José', 'Lúcia', 'Pedro', 'Carla', 'Paulo', 'Fernanda', 'Marcos', 'Júlia', 'Rafael'];
const LAST = ['Silva', 'Souza', 'Oliveira', 'Santos', 'Pereira', 'Lima', 'Carvalho', 'Gomes', 'Ribeiro', 'Almeida'];
const JOBS = ['CEO', 'CTO', 'Analista de Marketing', 'Gerente de Vendas', 'Developer', 'Designer', 'Consultor, Sênior'];
const TAGS = ['cliente', 'lead-quente', 'evento', 'newsletter', 'webinar', 'parceiro'];

/** Inserts `n` random leads (with lead_infos, cities, states) set-based; returns the run tag. */
export async function generateLeads(pool: Pool, n: number, onProgress?: (done: number) => void): Promise<string> {
  const run = randomBytes(4).toString('hex');
  await pool.query(
    `INSERT INTO states (name, acronym) SELECT s, s FROM unnest($1::text[]) s ON CONFLICT DO NOTHING`,
    [[...new Set(CITIES.map((c) => c[1]))]],
  );
  await pool.query(
    `INSERT INTO cities (name, state_id) SELECT c.name, s.id FROM unnest($1::text[], $2::text[]) c(name, st)
       JOIN states s ON s.acronym = c.st ON CONFLICT DO NOTHING`,
    [CITIES.map((c) => c[0]), CITIES.map((c) => c[1])],
  );
  const step = 1_000_000;
  for (let from = 1; from <= n; from += step) {
    const to = Math.min(n, from + step - 1);
    await pool.query(
      `WITH c AS (SELECT array_agg(id) AS ids, array_agg(state_id) AS sids FROM cities),
       ins AS (
         INSERT INTO leads (email, name, job_title, opportunity, available_for_mailing, city_id, state_id, tags)
         SELECT 'lead-' || $3 || '-' || g || '@example.com',
                ($4::text[])[1 + g % cardinality($4::text[])] || ' ' || ($5::text[])[1 + (g / 7) % cardinality($5::text[])],
                CASE WHEN g % 3 = 0 THEN NULL ELSE ($6::text[])[1 + g % cardinality($6::text[])] END,
                g % 2 = 0, g % 5 <> 0,
                CASE WHEN g % 4 = 0 THEN NULL ELSE c.ids[1 + g % cardinality(c.ids)] END,
                CASE WHEN g % 4 = 0 THEN NULL ELSE c.sids[1 + g % cardinality(c.ids)] END,
                ARRAY[($7::text[])[1 + g % cardinality($7::text[])]]
           FROM generate_series($1::bigint, $2::bigint) g, c
         RETURNING id)
       INSERT INTO lead_infos (lead_id, twitter, website, mobile_phone)
       SELECT id, CASE WHEN id % 2 = 0 THEN 'user' || id END, CASE WHEN id % 3 = 0 THEN 'http://site' || id || '.com.br' END,
              CASE WHEN id % 2 = 1 THEN '1199' || lpad((id % 10000000)::text, 7, '0') END
         FROM ins`,
      [from, to, run, FIRST, LAST, JOBS, TAGS],
    );
    onProgress?.(to);
  }
  await pool.query('ANALYZE leads');
  await pool.query('ANALYZE lead_infos');
  return run;
}

function pick<T>(a: T[], r: number): T {
  return a[Math.floor(r * a.length) % a.length]!;
}

function csvField(v: string): string {
  return /[",\r\n]/.test(v) ? `"${v.replace(/"/g, '""')}"` : v;
}

export const LEADS_CSV_HEADER = 'Email,Nome,Twitter,Website,Facebook,Linkedin,Phone,City,State,Tags,Opportunity,Job Title,Available for mailing';

function leadRow(email: string, i: number): string {
  const r = Math.random;
  const [city, state] = pick(CITIES, r());
  const name = `${pick(FIRST, r())} ${pick(LAST, r())}`;
  const handle = `${name.split(' ')[0]!.toLowerCase()}${i}`;
  const cells = [
    email,
    name,
    r() < 0.6 ? `@${handle}` : '',
    r() < 0.5 ? `www.${handle}.com.br` : '',
    r() < 0.4 ? handle : '',
    r() < 0.4 ? handle : '',
    r() < 0.7 ? `(11) 9${String(Math.floor(r() * 1e8)).padStart(8, '0').replace(/(\d{4})(\d{4})/, '$1-$2')}` : '',
    r() < 0.8 ? city : '',
    r() < 0.8 ? state : '',
    r() < 0.5 ? `${pick(TAGS, r())},${pick(TAGS, r())}` : '',
    pick(['sim', 'não', '1', '0', 'yes', 'no', ''], r()),
    r() < 0.7 ? pick(JOBS, r()) : '',
    pick(['s', 'n', 'Sim', 'Não', ''], r()),
  ];
  return cells.map(csvField).join(',');
}

/**
 * Writes an `n`-row leads CSV; a fraction `existing` of the emails is sampled from the
 * base, the rest are new. Streams: neither the base sample nor the file is held in memory.
 */
export async function writeLeadsCsv(pool: Pool, n: number, out: string, existing: number): Promise<{ existing: number; fresh: number }> {
  const want = Math.round(n * existing);
  const file = fs.createWriteStream(out);
  const write = async (s: string) => {
    if (!file.write(s)) await new Promise<void>((r) => file.once('drain', () => r()));
  };
  await write(`${LEADS_CSV_HEADER}\n`);
  const run = randomBytes(4).toString('hex');
  let fresh = 0;
  let old = 0;
  const freshPerOld = want > 0 ? (n - want) / want : 0;
  let owed = 0;
  const writeFresh = async (k: number) => {
    let chunk = '';
    for (let i = 0; i < k; i++) {
      fresh++;
      chunk += `${leadRow(`new-${run}-${fresh}@example.org`, fresh)}\n`;
    }
    if (chunk) await write(chunk);
  };
  if (want > 0) {
    const client = await pool.connect();
    try {
      const { rows } = await client.query<{ n: number }>('SELECT count(*)::bigint AS n FROM leads');
      const total = rows[0]!.n;
      if (total < want) throw new Error(`the base has ${total} leads, fewer than the ${want} existing emails asked for`);
      const pct = Math.min(100, ((want * 1.2) / total) * 100 + 0.01);
      const stream = client.query(
        copyTo(`COPY (SELECT email FROM leads TABLESAMPLE BERNOULLI (${pct.toFixed(4)}) LIMIT ${want}) TO STDOUT`),
      );
      let rest = '';
      for await (const chunk of stream as AsyncIterable<Buffer>) {
        const lines = (rest + chunk.toString('utf8')).split('\n');
        rest = lines.pop()!;
        let block = '';
        for (const email of lines) {
          old++;
          block += `${leadRow(email, old)}\n`;
          owed += freshPerOld;
        }
        await write(block);
        const k = Math.floor(owed);
        owed -= k;
        await writeFresh(Math.min(k, n - want - fresh));
      }
    } finally {
      client.release();
    }
  }
  await writeFresh(n - old - fresh);
  file.end();
  await new Promise<void>((r) => file.once('close', () => r()));
  return { existing: old, fresh };
}
