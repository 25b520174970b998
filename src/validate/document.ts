/**
 * Brazilian taxpayer documents as they arrive in files: CPF (people, 11 digits) or CNPJ
 * (companies, 14 digits), formatted (`123.456.789-09`, `12.345.678/0001-95`) or not.
 *
 * Validity follows the Receita Federal modulo-11 check-digit rules (see cpf.ts and cnpj.ts).
 * The type is decided by the number of digits alone, after every non-digit is dropped, so
 * punctuation variants (`123456789-09`, `12 345 678 0001 95`) are accepted alike.
 */
import { isValidCnpj } from './cnpj.ts';
import { isValidCpf } from './cpf.ts';
import { digitsOnly } from './sanitize.ts';

export type DocumentType = 'cpf' | 'cnpj';

export interface ParsedDocument {
  /** The input with everything but 0-9 removed. */
  digits: string;
  /** By digit count: 11 -> cpf, 14 -> cnpj, anything else -> null (and `valid` false). */
  type: DocumentType | null;
  /** True when the check digits are right for `type`. */
  valid: boolean;
}

/** Classifies and validates a CPF or CNPJ given formatted or unformatted. */
export function parseDocument(raw: string): ParsedDocument {
  const digits = digitsOnly(raw);
  if (digits.length === 11) return { digits, type: 'cpf', valid: isValidCpf(digits) };
  if (digits.length === 14) return { digits, type: 'cnpj', valid: isValidCnpj(digits) };
  return { digits, type: null, valid: false };
}
