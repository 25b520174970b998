/**
 * Looking at the first bytes of an upload before parsing it: which encoding, is it text at
 * all, which delimiter. Plus the streaming decoder that turns bytes into text for the
 * CSV parser. Sluice reads two encodings: UTF-8 (what everything should be) and
 * windows-1252 (what Excel and old ERPs still export in Western Europe and Brazil; it is a
 * superset of Latin-1 for printable text, and WHATWG maps the label 'latin1' to it anyway).
 */
import { InvalidFileError } from '../core/errors.ts';

/** The text encodings Sluice reads. */
export type Encoding = 'utf-8' | 'windows-1252';

/**
 * The labels a user may give for each encoding: exactly those the WHATWG Encoding Standard
 * (https://encoding.spec.whatwg.org/#names-and-labels) gives the two, so a label means
 * here what it means to TextDecoder and to browsers. Note that WHATWG maps the ASCII and
 * Latin-1 labels (us-ascii, iso-8859-1, latin1...) to windows-1252.
 */
export const ENCODING_LABELS: { readonly [E in Encoding]: readonly string[] } = {
  'utf-8': ['unicode-1-1-utf-8', 'unicode11utf8', 'unicode20utf8', 'utf-8', 'utf8', 'x-unicode20utf8'],
  'windows-1252': [
    'ansi_x3.4-1968', 'ascii', 'cp1252', 'cp819', 'csisolatin1', 'ibm819', 'iso-8859-1', 'iso-ir-100', 'iso8859-1',
    'iso88591', 'iso_8859-1', 'iso_8859-1:1987', 'l1', 'latin1', 'us-ascii', 'windows-1252', 'x-cp1252',
  ],
};

const ENCODING_BY_LABEL = new Map<string, Encoding>(
  (Object.keys(ENCODING_LABELS) as Encoding[]).flatMap((e) => ENCODING_LABELS[e].map((label) => [label, e] as const)),
);

/**
 * The encoding an encoding label names (`--encoding`, `?encoding=`, a Content-Type
 * charset), or undefined for a label of any other encoding or none. As WHATWG's "get an
 * encoding": ASCII case-insensitive, surrounding ASCII whitespace ignored; the labels are
 * ENCODING_LABELS.
 */
export function parseEncoding(label: string): Encoding | undefined {
  return ENCODING_BY_LABEL.get(label.replace(/^[\t\n\f\r ]+|[\t\n\f\r ]+$/g, '').replace(/[A-Z]/g, (c) => c.toLowerCase()));
}

/**
 * UTF-8 (BOM or valid bytes), else windows-1252. A sequence cut at the end of the sample is
 * fine unless the sample is the `whole` file: then it ends there (`Bogot\xe1` with no line
 * end after it is windows-1252, not UTF-8 failing at its last byte).
 */
export function detectEncoding(sample: Uint8Array, whole = false): { encoding: Encoding; bom: boolean } {
  if (sample.length >= 3 && sample[0] === 0xef && sample[1] === 0xbb && sample[2] === 0xbf) {
    return { encoding: 'utf-8', bom: true };
  }
  return { encoding: invalidUtf8At(sample, whole) < 0 ? 'utf-8' : 'windows-1252', bom: false };
}

/**
 * How a file's first bytes, as detectEncoding `found` them, contradict the encoding a user
 * gave for it: `not-utf-8` (given utf-8, they are not valid UTF-8: the import would fail
 * further on, or its first part would), `bom` (given windows-1252, they start with a UTF-8
 * byte order mark, which would be read as "ï»¿" into the first column's name: a column the
 * pipeline no longer recognises, dropped without a word); undefined when they agree.
 */
export function encodingContradiction(found: { encoding: Encoding; bom: boolean }, given: Encoding): 'not-utf-8' | 'bom' | undefined {
  if (given === 'utf-8' && found.encoding !== 'utf-8') return 'not-utf-8';
  if (given === 'windows-1252' && found.bom) return 'bom';
  return undefined;
}

/**
 * The byte order mark of UTF-16 text at the start of `sample` (FF FE little-endian, as
 * Excel's "Unicode Text" writes it; FE FF big-endian), or undefined. Sluice does not decode
 * UTF-16; without this test such a file is refused as binary (its ASCII has NUL bytes),
 * which tells the user nothing. (A UTF-32 LE BOM, FF FE 00 00, also matches: the remedy is
 * the same.)
 */
export function utf16Bom(sample: Uint8Array): 'utf-16le' | 'utf-16be' | undefined {
  if (sample.length < 2) return undefined;
  if (sample[0] === 0xff && sample[1] === 0xfe) return 'utf-16le';
  if (sample[0] === 0xfe && sample[1] === 0xff) return 'utf-16be';
  return undefined;
}

/** True for NUL bytes or > 10% control bytes other than \t \n \r \f (UTF-16 without a BOM counts as binary). */
export function looksBinary(sample: Uint8Array): boolean {
  let controls = 0;
  for (let i = 0; i < sample.length; i++) {
    const b = sample[i];
    if (b === 0) return true;
    if ((b < 0x20 && b !== 0x09 && b !== 0x0a && b !== 0x0c && b !== 0x0d) || b === 0x7f) controls++;
  }
  return controls * 10 > sample.length;
}

/** The CSV delimiters Sluice sniffs and accepts. */
export type Delimiter = ',' | ';' | '\t' | '|';
/** In tie-break order. */
const DELIMITERS: readonly Delimiter[] = [',', ';', '\t', '|'];

/**
 * The delimiter a user gave (`--delimiter`, `?delimiter=`): one of , ; | or a tab, which
 * may also be spelled `tab` or `\t` (a backslash and a t); undefined for anything else.
 */
export function parseDelimiter(input: string): Delimiter | undefined {
  const d = input === 'tab' || input === '\\t' ? '\t' : input;
  return DELIMITERS.find((x) => x === d);
}
const SNIFF_RECORDS = 20;

/**
 * The first line of Excel's delimiter hint (`sep=;`: exactly `sep=` and one character, then
 * a line end or the end of the text; a UTF-8 BOM before it is skipped), or undefined. Excel
 * reads the line as the file's delimiter, so files made for Excel in locales whose list
 * separator differs carry it; read as the header, it hides the real one. Sluice honours it
 * too (record-reader.ts, excelHint). A first line with more after the character
 * (`sep=;x`) is not one: it is the header.
 */
export function excelSeparatorLine(sampleText: string): string | undefined {
  return /^\ufeff?(sep=[^\r\n])(?:\r|\n|$)/.exec(sampleText)?.[1];
}

/**
 * The delimiter giving the most consistent field count (> 1) over the first ~20 records,
 * counting only delimiters outside quotes; ties go to the most frequent, then , ; TAB |.
 */
export function sniffDelimiter(sampleText: string): Delimiter {
  let best: Delimiter = ',';
  let bestHits = 0; // records with the modal field count...
  let bestTotal = 1; // ...out of this many records
  let bestFreq = 0;
  for (const delim of DELIMITERS) {
    const { counts, freq } = fieldCounts(sampleText, delim.charCodeAt(0));
    if (counts.length === 0) continue;
    // The modal field count (the larger one on ties: more structure is the better guess).
    const tally = new Map<number, number>();
    let mode = 0;
    let hits = 0;
    for (const n of counts) {
      const t = (tally.get(n) ?? 0) + 1;
      tally.set(n, t);
      if (t > hits || (t === hits && n > mode)) {
        mode = n;
        hits = t;
      }
    }
    if (mode <= 1) continue;
    // Compare hits / counts.length with bestHits / bestTotal without floating point.
    const cmp = hits * bestTotal - bestHits * counts.length;
    if (cmp > 0 || (cmp === 0 && freq > bestFreq)) {
      best = delim;
      bestHits = hits;
      bestTotal = counts.length;
      bestFreq = freq;
    }
  }
  return best;
}

/**
 * Field count of each of the first records, counting delimiters outside quotes. Quoted
 * regions are found the same way for every candidate, so that a wrong candidate cannot
 * turn a quoted value into separators (`"Silva, Ana";"SP, Brasil"` is two ';' fields,
 * not two ',' ones): a `"` opens a quoted field at a line start or after any candidate
 * delimiter (as the parser does for the right one) and `""` inside is data. A last record
 * cut by the end of the sample is dropped unless it is the only one.
 */
function fieldCounts(text: string, d: number): { counts: number[]; freq: number } {
  const counts: number[] = [];
  let freq = 0;
  let fields = 1;
  let inQuote = false;
  let atFieldStart = true;
  let empty = true; // nothing on this line yet (empty lines are not records)
  let i = text.charCodeAt(0) === 0xfeff ? 1 : 0;
  for (; i < text.length && counts.length < SNIFF_RECORDS; i++) {
    const c = text.charCodeAt(i);
    if (inQuote) {
      if (c === 0x22) {
        if (text.charCodeAt(i + 1) === 0x22) i++;
        else inQuote = false;
      }
      continue;
    }
    if (c === 0x0a || c === 0x0d) {
      if (!empty) {
        counts.push(fields);
        freq += fields - 1;
      }
      fields = 1;
      atFieldStart = empty = true;
      continue;
    }
    empty = false;
    if (c === d) fields++;
    if (c === 0x2c || c === 0x3b || c === 0x09 || c === 0x7c) atFieldStart = true;
    else {
      if (c === 0x22 && atFieldStart) inQuote = true;
      atFieldStart = false;
    }
  }
  if (!empty && counts.length === 0) {
    counts.push(fields);
    freq += fields - 1;
  }
  return { counts, freq };
}

/**
 * A streaming decoder; throws InvalidFileError ('invalid UTF-8 at byte offset N ...') on bad
 * UTF-8. `offset`: the file's byte offset of the first byte written (default 0; a reader
 * that skipped the file's first bytes, an Excel `sep=` line, still names the file's offsets).
 */
export function createDecoder(encoding: Encoding, offset = 0): { write(chunk: Uint8Array): string; end(): string } {
  if (encoding === 'windows-1252') {
    // Single-byte: every byte decodes, nothing is ever pending between chunks.
    const decoder = new TextDecoder('windows-1252');
    return { write: (chunk) => decoder.decode(chunk, { stream: true }), end: () => decoder.decode() };
  }
  // fatal: a file sniffed as UTF-8 from its first KB can still hold Latin-1 bytes further
  // on; failing loudly beats silently importing U+FFFD into the database.
  const decoder = new TextDecoder('utf-8', { fatal: true });
  // `offset`: the file's offset of the next byte written (bytes written so far, plus the start).
  let pending: Uint8Array = new Uint8Array(0); // the incomplete sequence the decoder holds
  return {
    write(chunk) {
      let text: string;
      try {
        text = decoder.decode(chunk, { stream: true });
      } catch (err) {
        // TextDecoder does not say where: re-validate the held bytes + this chunk to find out.
        const bytes = concat(pending, chunk);
        const at = Math.max(0, invalidUtf8At(bytes));
        throw new InvalidFileError(
          `invalid UTF-8 at byte offset ${offset - pending.length + at}: the file is not valid UTF-8 (if it is Latin-1/windows-1252, import it with --encoding windows-1252)`,
          { cause: err },
        );
      }
      // An unfinished sequence is at most 3 bytes, so the last 3 bytes of the stream tell.
      pending = incompleteTail(chunk.length >= 3 ? chunk.subarray(chunk.length - 3) : concat(pending, chunk));
      offset += chunk.length;
      return text;
    },
    end() {
      try {
        return decoder.decode();
      } catch (err) {
        throw new InvalidFileError(
          `invalid UTF-8 at byte offset ${offset - pending.length}: the file ends in the middle of a multi-byte character (if it is Latin-1/windows-1252, import it with --encoding windows-1252)`,
          { cause: err },
        );
      }
    },
  };
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  if (a.length === 0) return b;
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

/** Length of a UTF-8 sequence from its lead byte, 0 for a byte that cannot lead. */
function seqLength(b: number): number {
  return b < 0x80 ? 1 : b < 0xc2 ? 0 : b < 0xe0 ? 2 : b < 0xf0 ? 3 : b < 0xf5 ? 4 : 0;
}

/** The trailing bytes of valid UTF-8 that form an unfinished sequence (empty if none). */
function incompleteTail(b: Uint8Array): Uint8Array {
  for (let i = b.length - 1; i >= 0 && i >= b.length - 3; i--) {
    if ((b[i] & 0xc0) === 0x80) continue; // continuation byte: keep looking for the lead
    return seqLength(b[i]) > b.length - i ? b.slice(i) : new Uint8Array(0);
  }
  return new Uint8Array(0);
}

/**
 * Offset of the first byte that starts an invalid UTF-8 sequence, or -1 when all is valid.
 * A valid but unfinished sequence at the very end is accepted (a sample cuts anywhere)
 * unless `whole` (the bytes are all there is: a part of an upload ends at a record's end).
 * Follows Unicode Table 3-7: no overlongs, no surrogates, nothing above U+10FFFF.
 */
export function invalidUtf8At(b: Uint8Array, whole = false): number {
  const n = b.length;
  let i = 0;
  while (i < n) {
    const c = b[i];
    if (c < 0x80) {
      i++;
      continue;
    }
    const len = seqLength(c);
    if (len === 0) return i;
    // The allowed range of the second byte depends on the lead (Table 3-7).
    const lo = c === 0xe0 ? 0xa0 : c === 0xf0 ? 0x90 : 0x80;
    const hi = c === 0xed ? 0x9f : c === 0xf4 ? 0x8f : 0xbf;
    for (let k = 1; k < len; k++) {
      if (i + k >= n) return whole ? i : -1; // cut by the end of the sample
      const x = b[i + k];
      if (k === 1 ? x < lo || x > hi : (x & 0xc0) !== 0x80) return i;
    }
    i += len;
  }
  return -1;
}
