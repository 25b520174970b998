/**
 * The purchases file (issue 3): a whitespace-aligned export with one customer document
 * (CPF or CNPJ) per row and their purchase summary. Every row is persisted; invalid
 * documents are kept with document_valid = false, never rejected. A row with the wrong
 * number of fields, an impossible date or a malformed number is rejected with its reason.
 */
import type { CellResult, Pipeline } from '../engine/pipeline.ts';
import { parseDocument } from '../validate/document.ts';
import { sanitizeText } from '../validate/sanitize.ts';
import { isValueError, parseBit, parseDecimalComma, parseIsoDate } from '../validate/values.ts';

const PLAIN = /^[\x21-\x60\x7b-\x7e]*$/; // printable ASCII without lower-case letters

/** Text sanitation (upper case, no accents, collapsed spaces), skipped when already clean. */
function clean(v: string): string {
  return PLAIN.test(v) ? v : sanitizeText(v);
}

function isNull(v: string): boolean {
  return v === 'NULL' || clean(v) === 'NULL';
}

/**
 * A value parser applied to the raw text first: a value it accepts is made of digits and
 * punctuation only (or is exactly `NULL`), which sanitizing leaves as it is, so the result
 * is the same as parsing the sanitized text, without the sanitizing pass. Only a value it
 * refuses is sanitized and parsed again (`null` -> `NULL`, full-width forms...).
 */
function sanitized<T>(parse: (v: string) => T | { error: string }): (v: string) => T | { error: string } {
  return (v) => {
    const r = parse(v);
    return isValueError(r) ? parse(clean(v)) : r;
  };
}

/**
 * The key column is read three times per row (the key, its type, its validity): its
 * parse is computed once, for the last raw value seen.
 */
let lastDocRaw: string | undefined;
let lastDoc: { key: CellResult; type: CellResult; valid: CellResult } = { key: null, type: null, valid: null };

function documentOf(v: string) {
  if (v === lastDocRaw) return lastDoc;
  const parsed = parseDocument(v);
  // A value with a digit is never NULL once sanitized (sanitizing keeps ASCII digits), so
  // the sanitizing NULL check is only needed for a value without any.
  const key: CellResult = parsed.digits !== '' ? parsed.digits
    : isNull(v) ? { error: 'document is NULL' }
    : { error: `document has no digits: ${JSON.stringify(v)}` };
  lastDocRaw = v;
  lastDoc = { key, type: parsed.type, valid: parsed.valid };
  return lastDoc;
}

/**
 * Store CNPJs repeat across rows (a file names a few thousand stores at most): their
 * digits and validity are cached per raw string, the cache emptied when it gets large.
 */
const STORE_CACHE_MAX = 10_000;
const stores = new Map<string, { digits: CellResult; valid: CellResult }>();
/** Each store cell is read twice (digits, validity), and neighbouring rows often name the same store. */
let lastStoreRaw: string | undefined;
let lastStore: { digits: CellResult; valid: CellResult } = { digits: null, valid: null };

function storeOf(v: string): { digits: CellResult; valid: CellResult } {
  if (v === lastStoreRaw) return lastStore;
  lastStoreRaw = v;
  let r = stores.get(v);
  if (r) return (lastStore = r);
  if (isNull(v)) r = { digits: null, valid: null };
  else {
    // A store is a CNPJ, alphanumeric ones included (document.ts keeps their letters).
    const d = parseDocument(v);
    r = { digits: d.digits || { error: `store has no digits: ${JSON.stringify(v)}` }, valid: d.type === 'cnpj' && d.valid };
  }
  if (stores.size >= STORE_CACHE_MAX) stores.clear();
  stores.set(v, r);
  return (lastStore = r);
}

const bit = sanitized(parseBit);
const isoDate = sanitized(parseIsoDate);
const decimalComma = sanitized(parseDecimalComma);

/**
 * The tickets are stored as numeric(14, 2). A value is rounded to cents here, half away from
 * zero as Postgres rounds it, so the value compared with the stored one is the value stored:
 * `1,999` against a stored 2.00 is unchanged on the next import, not "updated" every time.
 * One with more than 12 digits before the comma is rejected with its row: Postgres would
 * refuse it ("numeric field overflow") and fail the whole import.
 */
const MAX_CENTS = 10n ** 14n;

export function money(v: string): CellResult {
  const r = decimalComma(v);
  if (r === null || isValueError(r)) return r;
  const negative = r.charCodeAt(0) === 45; /* - */
  // The usual value (at most 12 integer digits, 2 decimals) is kept as it is, without BigInt.
  const dot = r.indexOf('.');
  if ((dot < 0 ? r.length : dot) - (negative ? 1 : 0) <= 12 && (dot < 0 || r.length - dot - 1 <= 2)) return r;
  const [int = '', frac = ''] = (negative ? r.slice(1) : r).split('.');
  let cents = BigInt(int + frac.slice(0, 2).padEnd(2, '0'));
  if (frac.length > 2 && frac.charCodeAt(2) >= 53 /* 5 */) cents += 1n;
  if (cents >= MAX_CENTS) return { error: `out of range (at most 12 digits before the comma): ${JSON.stringify(v)}` };
  if (frac.length <= 2) return r;
  const digits = cents.toString().padStart(3, '0');
  return `${negative && cents > 0n ? '-' : ''}${digits.slice(0, -2)}.${digits.slice(-2)}`;
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
    parse: (v) => documentOf(v).key,
  },
  columns: [
    { name: 'document_type', input: 'key', headers: [], type: 'text', parse: (v) => documentOf(v).type },
    { name: 'document_valid', input: 'key', headers: [], type: 'boolean', parse: (v) => documentOf(v).valid },
    { name: 'private', headers: ['private', 'privado'], type: 'boolean', parse: bit, required: true },
    { name: 'incomplete', headers: ['incompleto', 'incomplete'], type: 'boolean', parse: bit, required: true },
    { name: 'last_purchase_date', headers: ['data da ultima compra', 'last purchase date'], type: 'date', parse: isoDate, required: true },
    { name: 'avg_ticket', headers: ['ticket medio', 'average ticket'], type: 'numeric', parse: money, required: true },
    { name: 'last_ticket', headers: ['ticket da ultima compra', 'last ticket'], type: 'numeric', parse: money, required: true },
    { name: 'most_frequent_store', headers: ['loja mais frequente', 'most frequent store'], type: 'text', parse: (v) => storeOf(v).digits, required: true },
    { name: 'most_frequent_store_valid', headers: ['loja mais frequente', 'most frequent store'], type: 'boolean', parse: (v) => storeOf(v).valid, required: true },
    { name: 'last_store', headers: ['loja da ultima compra', 'last store'], type: 'text', parse: (v) => storeOf(v).digits, required: true },
    { name: 'last_store_valid', headers: ['loja da ultima compra', 'last store'], type: 'boolean', parse: (v) => storeOf(v).valid, required: true },
  ],
  // Lines of base_teste.txt's shapes: a full row, a row of NULLs, a CNPJ, another store.
  sample: [
    'CPF                PRIVATE     INCOMPLETO  DATA DA ÚLTIMA COMPRA TICKET MÉDIO          TICKET DA ÚLTIMA COMPRA LOJA MAIS FREQUÊNTE LOJA DA ÚLTIMA COMPRA',
    '866.315.609-00     0           0           2010-01-13            335,38                335,38                  79.379.491/0001-83  79.379.491/0001-83',
    '041.091.641-25     0           0           NULL                  NULL                  NULL                    NULL                NULL',
    '111.444.777-35     1           0           2012-02-29            1.234,56              99,90                   79.379.491/0008-50  79.379.491/0001-83',
    '11.444.777/0001-61 0           1           2013-11-01            120,00                120,00                  79.379.491/0008-50  79.379.491/0008-50',
  ].join('\n'),
  target: {
    table: 'purchases',
    key: 'document',
    // One record per document, nothing refers to it by id: no surrogate key (migration 0043).
    identity: 'key',
    fields: [
      'document_type', 'document_valid', 'private', 'incomplete', 'last_purchase_date', 'avg_ticket', 'last_ticket',
      'most_frequent_store', 'most_frequent_store_valid', 'last_store', 'last_store_valid',
    ].map((c) => ({ column: c, from: c, merge: 'overwrite' as const })),
  },
};
