/**
 * CNPJ (Cadastro Nacional da Pessoa Jurídica) check-digit validation, numeric form.
 *
 * Rule (Receita Federal do Brasil, modulo-11 check digits of the CNPJ number): 12 base digits
 * (8 root + 4 branch) and 2 check digits. The first check digit weights the 12 base digits
 * 5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2; the second weights the 12 base digits plus the first
 * check digit 6, 5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2. For each, r = sum mod 11 and the digit is
 * 0 when r < 2, else 11 - r. One repeated digit (00.000.000/0000-00 ...) is rejected.
 *
 * The alphanumeric CNPJ (IN RFB nº 2.229/2024, issued since July 2026): the 12 base
 * characters may be digits or upper-case letters, the 2 check digits stay digits, and each
 * character weighs its ASCII code minus 48 (`0`-`9` -> 0-9, `A` -> 17 ... `Z` -> 42) in the
 * same sums, so an all-digit CNPJ is checked exactly as before.
 */
import { checkDigit } from './cpf.ts';

const W1 = [5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2];
const W2 = [6, 5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2];

/**
 * True when `digits` is 14 characters forming a valid CNPJ: 12 base characters (ASCII digits
 * or upper-case letters) and 2 check digits. Input must be normalized (no punctuation).
 */
export function isValidCnpj(digits: string): boolean {
  if (digits.length !== 14) return false;
  let sum1 = 0;
  let sum2 = 0;
  let allSame = true;
  const first = digits.charCodeAt(0);
  for (let i = 0; i < 12; i++) {
    const c = digits.charCodeAt(i);
    if (!((c >= 48 && c <= 57) || (c >= 65 && c <= 90))) return false;
    if (c !== first) allSame = false;
    const d = c - 48;
    sum1 += d * W1[i]!;
    sum2 += d * W2[i]!;
  }
  const c12 = digits.charCodeAt(12);
  const c13 = digits.charCodeAt(13);
  if (c12 < 48 || c12 > 57 || c13 < 48 || c13 > 57) return false;
  if (allSame && c12 === first && c13 === first) return false;
  const dv1 = checkDigit(sum1);
  if (c12 - 48 !== dv1) return false;
  return c13 - 48 === checkDigit(sum2 + dv1 * W2[12]!);
}
