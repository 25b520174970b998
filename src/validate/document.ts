/**
 * Brazilian taxpayer documents as they arrive in files: CPF (people, 11 digits) or CNPJ
 * (companies, 14 digits), formatted (`123.456.789-09`, `12.345.678/0001-95`) or not.
 *
 * Validity follows the Receita Federal modulo-11 check-digit rules (see cpf.ts and cnpj.ts).
 * The type is decided by the number of digits alone, after every non-digit is dropped, so
 * punctuation variants (`123456789-09`, `12 345 678 0001 95`) are accepted alike.
 *
 * Except for the alphanumeric CNPJ (issued since July 2026, cnpj.ts): a value holding a letter
 * that, with its CNPJ punctuation (`.`, `/`, `-`, spaces) removed and upper-cased, is 12
 * digits or letters then 2 digits (`12.ABC.345/01DE-35`) is a CNPJ with its letters kept.
 * Dropping them would make `12.ABC.345/01DE-35` and `12.XYZ.345/01DE-35` one document.
 */
import { isValidCnpj } from './cnpj.ts';
import { isValidCpf } from './cpf.ts';
import { digitsOnly } from './sanitize.ts';

export type DocumentType = 'cpf' | 'cnpj';

export interface ParsedDocument {
  /** The input with everything but 0-9 removed (an alphanumeric CNPJ: 0-9 and A-Z kept, upper-cased). */
  digits: string;
  /** By digit count: 11 -> cpf, 14 -> cnpj, anything else -> null (and `valid` false). */
  type: DocumentType | null;
  /** True when the check digits are right for `type`. */
  valid: boolean;
}

const HAS_LETTER = /[A-Za-z]/;
const CNPJ_PUNCTUATION = /[./\-\s]/g;
const ALPHANUMERIC_CNPJ = /^[0-9A-Z]{12}[0-9]{2}$/;

/** Classifies and validates a CPF or CNPJ given formatted or unformatted. */
export function parseDocument(raw: string): ParsedDocument {
  if (HAS_LETTER.test(raw)) {
    const chars = raw.replace(CNPJ_PUNCTUATION, '').toUpperCase();
    if (ALPHANUMERIC_CNPJ.test(chars)) return { digits: chars, type: 'cnpj', valid: isValidCnpj(chars) };
  }
  const digits = digitsOnly(raw);
  if (digits.length === 11) return { digits, type: 'cpf', valid: isValidCpf(digits) };
  if (digits.length === 14) return { digits, type: 'cnpj', valid: isValidCnpj(digits) };
  return { digits, type: null, valid: false };
}
