/**
 * Independent, deliberately plain check-digit computations used to generate test documents,
 * so the tests do not trust the code under test to make their own fixtures. They use the
 * equivalent "(sum * 10) mod 11 mod 10" form of the Receita Federal rule.
 */

export { rng } from '../helpers/rng.ts';

function randomDigits(next: () => number, n: number): number[] {
  for (;;) {
    const d = Array.from({ length: n }, () => Math.floor(next() * 10));
    if (new Set(d).size > 1) return d;
  }
}

function dv(digits: number[], weights: number[]): number {
  const sum = digits.reduce((acc, d, i) => acc + d * weights[i]!, 0);
  return ((sum * 10) % 11) % 10;
}

export function cpfWithCheckDigits(base: number[]): string {
  const d1 = dv(base, [10, 9, 8, 7, 6, 5, 4, 3, 2]);
  const d2 = dv([...base, d1], [11, 10, 9, 8, 7, 6, 5, 4, 3, 2]);
  return [...base, d1, d2].join('');
}

export function cnpjWithCheckDigits(base: number[]): string {
  // CNPJ weights cycle 2..9 from the right.
  const weights = (len: number) => Array.from({ length: len }, (_, i) => ((len - 1 - i) % 8) + 2);
  const d1 = dv(base, weights(12));
  const d2 = dv([...base, d1], weights(13));
  return [...base, d1, d2].join('');
}

export function randomCpf(next: () => number): string {
  return cpfWithCheckDigits(randomDigits(next, 9));
}

export function randomCnpj(next: () => number): string {
  return cnpjWithCheckDigits(randomDigits(next, 12));
}

/** `digits` with the digit at `index` replaced by every other digit. */
export function mutations(digits: string, index: number): string[] {
  const out: string[] = [];
  for (let d = 0; d <= 9; d++) {
    if (String(d) !== digits[index]) out.push(digits.slice(0, index) + d + digits.slice(index + 1));
  }
  return out;
}

export const FIXTURE = new URL('../fixtures/neoway/base_teste_2000.txt', import.meta.url);
