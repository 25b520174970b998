/**
 * Micro-benchmark of the CSV parser alone (no I/O, no decoding): ~50 MB of lead-list CSV
 * generated in memory, pushed in 1 MB chunks. Prints the median of 3 runs.
 *
 *   node bench/csv-parse.ts [megabytes]
 */
import { CsvParser } from '../src/formats/csv-parser.ts';

const HEADER = 'Email,Nome,Twitter,Website,Facebook,Linkedin,Phone,City,State,Tags,Opportunity,Job Title,Available for mailing';
const FIRST = ['Ana', 'João', 'Maria', 'José', 'Lucas', 'Beatriz', 'Pedro', 'Camila', 'Zoë', 'Renée'];
const LAST = ['Silva', 'Santos', 'Oliveira', 'Souza', "O'Brien", 'Conceição', 'Müller', 'Nguyễn'];
const CITIES = ['São Paulo', 'Rio de Janeiro', 'Belo Horizonte', 'Curitiba', 'Porto Alegre', 'Recife'];
const STATES = ['SP', 'RJ', 'MG', 'PR', 'RS', 'PE'];
const TITLES = ['CEO', 'Head of Sales, LATAM', 'Engenheira de Dados', 'Gerente "Sênior"', 'Analyst'];

/** mulberry32: deterministic data, so runs are comparable. */
function prng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** RFC 4180 quoting when needed. */
function q(v: string): string {
  return /[",\r\n]/.test(v) ? `"${v.replaceAll('"', '""')}"` : v;
}

function generate(targetBytes: number): { text: string; rows: number } {
  const rand = prng(42);
  const pick = <T>(a: readonly T[]): T => a[Math.floor(rand() * a.length)];
  const lines = [HEADER];
  let size = HEADER.length + 1;
  let rows = 0;
  while (size < targetBytes) {
    const first = pick(FIRST);
    const last = pick(LAST);
    const user = `${first}.${last}${rows}`.toLowerCase().replace(/[^a-z0-9.]/g, '');
    const tags = rand() < 0.5 ? 'lead, newsletter' : 'customer';
    const record = [
      `${user}@example.com`,
      q(rand() < 0.2 ? `${last}, ${first}` : `${first} ${last}`),
      `@${user}`,
      `https://www.${user}.com.br/`,
      `https://facebook.com/${user}`,
      `https://linkedin.com/in/${user}`,
      `+55 11 9${String(Math.floor(rand() * 1e8)).padStart(8, '0')}`,
      q(pick(CITIES)),
      pick(STATES),
      q(tags),
      String(Math.floor(rand() * 100000)),
      q(pick(TITLES)),
      rand() < 0.7 ? 'true' : 'false',
    ].join(',');
    lines.push(record);
    size += record.length + 2;
    rows++;
  }
  return { text: lines.join('\r\n') + '\r\n', rows };
}

function run(chunks: string[]): { ms: number; cpuMs: number; rows: number } {
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const parser = new CsvParser({ delimiter: ',' });
  let rows = 0;
  let fields = 0;
  for (const chunk of chunks) {
    const batch = parser.push(chunk);
    rows += batch.rows.length;
    for (const r of batch.rows) fields += r.length; // touch the result
  }
  rows += parser.end().rows.length;
  const ms = performance.now() - t0;
  const cpu = process.cpuUsage(cpu0);
  if (fields === 0) throw new Error('no fields parsed');
  return { ms, cpuMs: (cpu.user + cpu.system) / 1000, rows };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

const megabytes = Number(process.argv[2] ?? 50);
const generated = generate(megabytes * 1e6);
const rows = generated.rows + 1; // + header
// Chunks as the import path makes them: 1 MB of bytes through a streaming TextDecoder.
const bytes = Buffer.from(generated.text);
const CHUNK = 1 << 20;
const decoder = new TextDecoder('utf-8', { fatal: true });
const chunks: string[] = [];
for (let i = 0; i < bytes.length; i += CHUNK) chunks.push(decoder.decode(bytes.subarray(i, i + CHUNK), { stream: true }));

run(chunks); // warm-up: let V8 optimise the scan loop before timing
const wall: number[] = [];
const cpu: number[] = [];
for (let i = 0; i < 3; i++) {
  const r = run(chunks);
  if (r.rows !== rows) throw new Error(`parsed ${r.rows} records, generated ${rows}`);
  wall.push(r.ms);
  cpu.push(r.cpuMs);
}
const ms = median(wall);
const mb = bytes.length / 1e6;
// CPU time too: on a shared machine wall time also measures the neighbours.
console.log(
  `csv-parse: ${mb.toFixed(1)} MB, ${rows} records x 13 fields, 1 MB chunks; median of 3: ` +
    `${ms.toFixed(0)} ms = ${(mb / (ms / 1000)).toFixed(0)} MB/s, ${(rows / (ms / 1000) / 1e6).toFixed(2)} M rows/s ` +
    `(runs: ${wall.map((r) => r.toFixed(0)).join(', ')} ms; CPU time median ${median(cpu).toFixed(0)} ms = ` +
    `${(mb / (median(cpu) / 1000)).toFixed(0)} MB/s)`,
);
