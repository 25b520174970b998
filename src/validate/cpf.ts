/**
 * CPF (Cadastro de Pessoas Físicas) check-digit validation.
 *
 * Rule (Receita Federal do Brasil, the modulo-11 check digits of the CPF number): the 11 digits
 * are 9 base digits and 2 check digits. The first check digit is computed from the 9 base
 * digits weighted 10, 9, ..., 2; the second from the 9 base digits plus the first check digit
 * weighted 11, 10, ..., 2. For each, r = sum mod 11 and the digit is 0 when r < 2, else 11 - r.
 * Numbers made of one repeated digit (000.000.000-00 ... 999.999.999-99) pass that arithmetic
 * but are not issued, so they are rejected.
 */

/** True when `digits` is exactly 11 ASCII digits forming a valid CPF; input must be digits only. */
export function isValidCpf(digits: string): boolean {
  if (digits.length !== 11) return false;
  let sum1 = 0;
  let sum2 = 0;
  let allSame = true;
  const first = digits.charCodeAt(0);
  // One pass over the 9 base digits: both weighted sums at once (hot path, ~50k-1M calls per file).
  for (let i = 0; i < 9; i++) {
    const c = digits.charCodeAt(i);
    if (c < 48 || c > 57) return false;
    if (c !== first) allSame = false;
    const d = c - 48;
    sum1 += d * (10 - i);
    sum2 += d * (11 - i);
  }
  const c9 = digits.charCodeAt(9);
  const c10 = digits.charCodeAt(10);
  if (c9 < 48 || c9 > 57 || c10 < 48 || c10 > 57) return false;
  if (allSame && c9 === first && c10 === first) return false;
  const dv1 = checkDigit(sum1);
  if (c9 - 48 !== dv1) return false;
  return c10 - 48 === checkDigit(sum2 + dv1 * 2);
}

/** The Receita Federal modulo-11 digit: 0 when the remainder is 0 or 1, else 11 - remainder. */
export function checkDigit(weightedSum: number): number {
  const r = weightedSum % 11;
  return r < 2 ? 0 : 11 - r;
}
