/**
 * Micro-benchmark of the purchases row path without I/O or database: split every data row of
 * /work/shared/data/neoway/base_teste.txt (49,998 rows) and validate all its fields, as the
 * purchases pipeline does per row. Prints rows/s, median of 5 runs after one warm-up.
 *
 *   node bench/purchases-parse.ts [file] [--runs=5]
 *
 * Also measures the split alone, against a hand-written charCodeAt scan (the alternative that
 * fixed-width.ts does not use because it measured slower). Each run splits the file text again
 * so every run sees fresh, uncached line strings, as an import does.
 */
import fs from 'node:fs';
import { parseFixedWidthHeader, splitFixedWidthRow } from '../src/formats/fixed-width.ts';
import { parseDocument } from '../src/validate/document.ts';
import { parseBit, parseDecimalComma, parseIsoDate } from '../src/validate/values.ts';

const args = process.argv.slice(2);
const file = args.find((a) => !a.startsWith('--')) ?? '/work/shared/data/neoway/base_teste.txt';
const runs = Number(args.find((a) => a.startsWith('--runs='))?.slice(7) ?? 5);
if (!fs.existsSync(file)) {
  console.log(`skipped: ${file} not found`);
  process.exit(0);
}

const text = fs.readFileSync(file, 'utf8');
const lines = text.split('\n');
const header = parseFixedWidthHeader(lines[0]!, lines[1]);
const expected = header.names.length;
const rowCount = lines.slice(1).filter((l) => l !== '').length;
let rows: string[] = [];

// A sink the optimiser cannot drop.
let sink = 0;

function splitOnly(): void {
  for (const row of rows) {
    const f = splitFixedWidthRow(row, expected);
    if (Array.isArray(f)) sink += f.length;
  }
}

// The alternative measured against the shipped regexp split.
function splitScan(): void {
  for (const row of rows) {
    const f: string[] = [];
    const n = row.length;
    let i = 0;
    while (i < n) {
      const c = row.charCodeAt(i);
      if (c === 32 || (c >= 9 && c <= 13)) {
        i++;
        continue;
      }
      const start = i++;
      while (i < n && !(row.charCodeAt(i) === 32 || (row.charCodeAt(i) >= 9 && row.charCodeAt(i) <= 13))) i++;
      f.push(row.slice(start, i));
    }
    if (f.length === expected) sink += f.length;
  }
}

function splitAndValidate(): void {
  for (const row of rows) {
    const f = splitFixedWidthRow(row, expected);
    if (!Array.isArray(f)) {
      sink++;
      continue;
    }
    const cpf = parseDocument(f[0]!);
    const a = parseBit(f[1]!);
    const b = parseBit(f[2]!);
    const date = parseIsoDate(f[3]!);
    const avg = parseDecimalComma(f[4]!);
    const last = parseDecimalComma(f[5]!);
    const frequent = f[6] === 'NULL' ? null : parseDocument(f[6]!);
    const lastStore = f[7] === 'NULL' ? null : parseDocument(f[7]!);
    if (cpf.valid && a !== undefined && b !== undefined && date !== undefined && avg !== undefined && last !== undefined) sink++;
    if (frequent?.valid || lastStore?.valid) sink++;
  }
}

function freshRows(): string[] {
  return text.split('\n').slice(1).filter((l) => l !== '');
}

function measure(name: string, fn: () => void): number {
  rows = freshRows();
  fn(); // warm-up: let the JIT optimise before timing
  const rates: number[] = [];
  for (let r = 0; r < runs; r++) {
    rows = freshRows();
    const t0 = process.hrtime.bigint();
    fn();
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
    rates.push(rowCount / seconds);
  }
  rates.sort((x, y) => x - y);
  const median = rates[Math.floor(rates.length / 2)]!;
  console.log(`${name.padEnd(34)} ${Math.round(median).toLocaleString('en-US').padStart(12)} rows/s (median of ${runs})`);
  return median;
}

console.log(`${rowCount.toLocaleString('en-US')} rows, ${expected} columns, Node ${process.version}`);
measure('split (splitFixedWidthRow)', splitOnly);
measure('split (hand-written scan, unused)', splitScan);
measure('split + validate all 8 fields', splitAndValidate);
if (sink < 0) console.log(sink);
