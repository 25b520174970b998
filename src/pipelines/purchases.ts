/**
 * The purchases file (issue 3): a whitespace-aligned export with one customer document
 * (CPF or CNPJ) per row and their purchase summary. Every row is persisted; invalid
 * documents are kept with document_valid = false, never rejected. A row with the wrong
 * number of fields, an impossible date or a malformed number is rejected with its reason.
 */
import type { CellResult, Pipeline } from '../engine/pipeline.ts';
import { isValidCnpj } from '../validate/cnpj.ts';
import { parseDocument } from '../validate/document.ts';
import { digitsOnly, sanitizeText } from '../validate/sanitize.ts';
import { parseBit, parseDecimalComma, parseIsoDate } from '../validate/values.ts';

const PLAIN = /^[\x21-\x60\x7b-\x7e]*$/; // printable ASCII without lower-case letters

/** Text sanitation (upper case, no accents, collapsed spaces), skipped when already clean. */
function clean(v: string): string {
  return PLAIN.test(v) ? v : sanitizeText(v);
}

function isNull(v: string): boolean {
  return clean(v) === 'NULL';
}

function document(v: string): CellResult {
  if (isNull(v)) return { error: 'document is NULL' };
  const d = digitsOnly(v);
  return d === '' ? { error: `document has no digits: ${JSON.stringify(v)}` } : d;
}

function store(v: string): CellResult {
  return isNull(v) ? null : digitsOnly(v) || { error: `store has no digits: ${JSON.stringify(v)}` };
}

function storeValid(v: string): CellResult {
  return isNull(v) ? null : isValidCnpj(digitsOnly(v));
}

export const purchases: Pipeline = {
  name: 'purchases',
  description: 'Customer purchase summaries by CPF/CNPJ (fixed-width export), upserted by document',
  format: { kind: 'fixed-width' },
  strictFieldCount: true,
  key: {
    name: 'document',
    headers: ['cpf', 'cnpj', 'cpf/cnpj', 'documento', 'document'],
    type: 'text',
    multiple: 'first-existing',
    missingMessage: 'invalid file: document (CPF/CNPJ) column missing',
    blankReason: 'document is blank',
    parse: document,
  },
  columns: [
    { name: 'document_type', input: 'key', headers: [], type: 'text', parse: (v) => parseDocument(v).type },
    { name: 'document_valid', input: 'key', headers: [], type: 'boolean', parse: (v) => parseDocument(v).valid },
    { name: 'private', headers: ['private', 'privado'], type: 'boolean', parse: (v) => parseBit(clean(v)) },
    { name: 'incomplete', headers: ['incompleto', 'incomplete'], type: 'boolean', parse: (v) => parseBit(clean(v)) },
    { name: 'last_purchase_date', headers: ['data da ultima compra', 'last purchase date'], type: 'date', parse: (v) => parseIsoDate(clean(v)) },
    { name: 'avg_ticket', headers: ['ticket medio', 'average ticket'], type: 'numeric', parse: (v) => parseDecimalComma(clean(v)) },
    { name: 'last_ticket', headers: ['ticket da ultima compra', 'last ticket'], type: 'numeric', parse: (v) => parseDecimalComma(clean(v)) },
    { name: 'most_frequent_store', headers: ['loja mais frequente', 'most frequent store'], type: 'text', parse: store },
    { name: 'most_frequent_store_valid', headers: ['loja mais frequente', 'most frequent store'], type: 'boolean', parse: storeValid },
    { name: 'last_store', headers: ['loja da ultima compra', 'last store'], type: 'text', parse: store },
    { name: 'last_store_valid', headers: ['loja da ultima compra', 'last store'], type: 'boolean', parse: storeValid },
  ],
  target: {
    table: 'purchases',
    key: 'document',
    fields: [
      'document_type', 'document_valid', 'private', 'incomplete', 'last_purchase_date', 'avg_ticket', 'last_ticket',
      'most_frequent_store', 'most_frequent_store_valid', 'last_store', 'last_store_valid',
    ].map((c) => ({ column: c, from: c, merge: 'overwrite' as const })),
  },
};
