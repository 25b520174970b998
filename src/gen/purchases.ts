/**
 * A purchases file in the layout of the shared Neoway export (`base_teste.txt`: a header at
 * offsets 0, 19, 31, 43, 65, 87, 111, 131, then whitespace-aligned rows), for benchmarks and
 * load drills: `sluice gen purchases` and `npm run bench:intake`. Row i (from `first`) has a
 * valid, distinct CPF (i * 7919 is distinct modulo 899,999,999 for i below it), two rows in
 * three carry a date, tickets and two valid store CNPJs, the third `NULL`s. Written in
 * 50,000-row chunks: memory stays flat whatever the size.
 */
import fs from 'node:fs';
import { checkDigit } from '../validate/cpf.ts';

/** A formatted CPF (`ddd.ddd.ddd-dd`) with valid check digits, from 9 base digits derived from `seed`. */
function cpfFor(seed: number): string {
  const d = String(100_000_000 + (seed % 899_999_999)).slice(0, 9).split('').map(Number);
  // Weights 10..2 over the 9 digits, then 11..2 over them and the first check digit.
  for (const len of [9, 10]) d.push(checkDigit(d.slice(0, len).reduce((sum, x, i) => sum + x * (len + 1 - i), 0)));
  const s = d.join('');
  return `${s.slice(0, 3)}.${s.slice(3, 6)}.${s.slice(6, 9)}-${s.slice(9)}`;
}

const pad = (s: string, n: number) => s.padEnd(n);

/** Writes `rows` purchase rows (numbered from `first`) to `file`, replacing it. */
export function writePurchasesFile(file: string, rows: number, first = 1): void {
  const fd = fs.openSync(file, 'w');
  try {
    fs.writeSync(fd, `${pad('CPF', 19)}${pad('PRIVATE', 12)}${pad('INCOMPLETO', 12)}${pad('DATA DA ÚLTIMA COMPRA', 22)}${pad('TICKET MÉDIO', 22)}${pad('TICKET DA ÚLTIMA COMPRA', 24)}${pad('LOJA MAIS FREQUÊNTE', 20)}LOJA DA ÚLTIMA COMPRA\n`);
    let chunk = '';
    for (let i = first; i < first + rows; i++) {
      const full = i % 3 !== 0;
      const date = `20${10 + (i % 10)}-${String(1 + (i % 12)).padStart(2, '0')}-${String(1 + (i % 28)).padStart(2, '0')}`;
      const money = `${100 + (i % 900)},${String(i % 100).padStart(2, '0')}`;
      chunk += `${pad(cpfFor(i * 7919), 19)}${pad(String(i % 2), 12)}${pad(String((i >> 1) % 2), 12)}${pad(full ? date : 'NULL', 22)}${pad(full ? money : 'NULL', 22)}${pad(full ? money : 'NULL', 24)}${pad(full ? '79.379.491/0008-50' : 'NULL', 20)}${full ? '79.379.491/0001-83' : 'NULL'}\n`;
      if ((i - first + 1) % 50_000 === 0) {
        fs.writeSync(fd, chunk);
        chunk = '';
      }
    }
    fs.writeSync(fd, chunk);
  } finally {
    fs.closeSync(fd);
  }
}
