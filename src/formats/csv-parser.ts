/**
 * Streaming CSV parser: RFC 4180 (https://www.rfc-editor.org/rfc/rfc4180) plus the lenient
 * rules that real-world exports need. It is Sluice's hot path, so it finds separators with
 * `indexOf` (several times faster than a `charCodeAt` loop in V8) and slices whole fields
 * out of the input (no per-char concatenation); only quoted fields that contain `""` pay
 * for an unescape. bench/csv-parse.ts measures it.
 *
 * Grammar, with where we deviate from RFC 4180 §2:
 * - records end at LF, CRLF or a lone CR outside quotes (§2.1 only names CRLF; exports from
 *   Unix tools and old Mac software use the other two);
 * - a field that starts with `"` is quoted; inside it delimiters, CR, LF and CRLF are data,
 *   kept byte-for-byte, and `""` is one quote (§2.5-2.7);
 * - a `"` in the middle of an unquoted field is literal (`ab"c` -> `ab"c`; §2.5 forbids it);
 * - text after a closing quote, up to the next delimiter or line end, is appended literally
 *   (`"ab"c` -> `abc`; §2.7 forbids it). We keep it rather than reject the row because it is
 *   what hand-edited files contain and the caller's validators see the value anyway;
 * - a UTF-8 BOM (U+FEFF) at the very start is dropped; lines with zero characters are
 *   skipped but counted, so reported line numbers match what an editor shows;
 * - records may have different field counts (§2.4 says "should"): the caller decides;
 * - a record longer than maxRecordChars is rejected (an error of the batch, not a row) and
 *   discarded as it arrives, never held: where the limit falls outside quotes, up to the next
 *   line terminator (quotes past the limit are not trusted to swallow lines); where it falls
 *   inside a quoted field, up to where the grammar ends the record (the quote closes, then a
 *   line terminator outside quotes), so a long quoted value costs only its own record. A
 *   quote still open at the end of the input fails the whole file (CsvError).
 *
 * Chunking never changes the result: a record that is not complete at the end of a push is
 * kept (`#tail`, at most maxRecordChars long) and re-scanned from its start on the next
 * push; an over-long record being discarded keeps only where its discarding stands (in or
 * out of quotes, the line count, the first 201 characters for the report). Every decision,
 * including the length limit, depends only on character positions in the record. Field values are slices of the pushed text: holding
 * on to rows keeps their chunk alive, so callers should copy what they store long-term.
 */
import { InvalidFileError } from '../core/errors.ts';

/** Options of {@link CsvParser}. */
export interface CsvOptions {
  /** One character: ',', ';', '\t' or '|' (any single char except `"`, CR and LF works). */
  delimiter: string;
  /** Longest accepted record (default 1 << 20). Bounds the memory held for one record. */
  maxRecordChars?: number;
  /** Physical line number of the text's first line (default 1: a part of a file starts later). */
  firstLine?: number;
}

/** The records completed by one {@link CsvParser.push} or {@link CsvParser.end}. */
export interface ParsedBatch {
  /** Fields of each complete record, in order. */
  rows: string[][];
  /** 1-based physical line number where each record starts. */
  lines: number[];
  /** Raw text of record i (without its line terminator), sliced on demand. */
  raw(i: number): string;
  /** Records the parser itself rejected (over-long lines). */
  errors: Array<{ line: number; reason: string; raw: string }>;
}

/** Fatal parse error (a quote never closed): the rest of the file cannot be parsed. */
export class CsvError extends InvalidFileError {
  readonly line: number;
  constructor(message: string, line: number) {
    super(message);
    this.line = line;
  }

}

const QUOTE = 0x22;
const LF = 0x0a;
const CR = 0x0d;
const BOM = 0xfeff;
/** How much of a rejected record is kept for the error report. */
const RAW_PREVIEW = 200;

/**
 * Where the discarding of an over-long record stands (CsvParser.#skipState): LINE, the
 * limit fell outside quotes (the record ends at the next line terminator); else the grammar
 * is followed: inside a quoted field (QUOTED), right after a `"` in one (QUOTE_END: it closes
 * the field, or is the first of `""`), at the start of a field (FIELD_START: a `"` opens a
 * quoted field), in unquoted text (FIELD).
 */
const LINE = 0;
const QUOTED = 1;
const QUOTE_END = 2;
const FIELD_START = 3;
const FIELD = 4;
type SkipState = typeof LINE | typeof QUOTED | typeof QUOTE_END | typeof FIELD_START | typeof FIELD;

class Batch implements ParsedBatch {
  readonly rows: string[][] = [];
  readonly lines: number[] = [];
  readonly errors: Array<{ line: number; reason: string; raw: string }> = [];
  /** The strings records were sliced from (at most: a stitched head, then the chunk)... */
  readonly #srcs: string[] = [];
  /** ...and the index of the first record of each. */
  readonly #firstRow: number[] = [];
  /** start, end offsets in their source of each record, flattened. */
  readonly #spans: number[] = [];

  /** Records added from now on are slices of src. */
  use(src: string): void {
    const last = this.#srcs.length - 1;
    if (last >= 0 && this.#firstRow[last] === this.rows.length) this.#srcs[last] = src; // no records from it
    else {
      this.#srcs.push(src);
      this.#firstRow.push(this.rows.length);
    }
  }

  add(fields: string[], line: number, start: number, end: number): void {
    this.rows.push(fields);
    this.lines.push(line);
    this.#spans.push(start, end);
  }

  raw(i: number): string {
    if (!(i >= 0 && i < this.rows.length)) throw new RangeError(`no record ${i} in this batch`);
    let s = this.#srcs.length - 1;
    while (this.#firstRow[s] > i) s--;
    return this.#srcs[s].slice(this.#spans[2 * i], this.#spans[2 * i + 1]);
  }
}

/** Streaming RFC 4180 CSV parser: push decoded text in any chunks, get complete records. */
export class CsvParser {
  readonly #delim: number;
  readonly #max: number;
  /** The incomplete record at the end of the last push (never longer than #max). */
  #tail = '';
  readonly #firstLine: number;
  /** Physical line where #tail (or the next record) starts. */
  #line: number;
  /** Whether the first character (a possible BOM) has been seen. */
  #started = false;
  /** The last push ended with a CR terminator: an LF at the start of the next one is its CRLF. */
  #skipLF = false;
  /** Discarding the rest of an over-long record, up to its terminator. */
  #skipping = false;
  #skipState: SkipState = LINE;
  /** Line of the record being discarded. */
  #skipLine = 0;
  /** Line where the quoted field open in the discarded record started (for CsvError). */
  #skipQuoteLine = 0;
  /** The discarded text so far ended with a CR inside quotes (an LF next completes a CRLF: one line break). */
  #skipCR = false;
  /** First RAW_PREVIEW + 1 chars of the record being discarded (the +1 tells it was cut). */
  #skipRaw = '';

  constructor(options: CsvOptions) {
    const { delimiter, maxRecordChars = 1 << 20, firstLine = 1 } = options;
    this.#firstLine = this.#line = firstLine;
    if (delimiter.length !== 1 || delimiter === '"' || delimiter === '\n' || delimiter === '\r') {
      throw new RangeError(`invalid CSV delimiter ${JSON.stringify(delimiter)}`);
    }
    if (!Number.isSafeInteger(maxRecordChars) || maxRecordChars < 1) {
      throw new RangeError(`invalid maxRecordChars ${maxRecordChars}`);
    }
    this.#delim = delimiter.charCodeAt(0);
    this.#max = maxRecordChars;
  }

  /** Characters retained between pushes (the incomplete record); for tests and metrics. */
  get bufferedChars(): number {
    return this.#tail.length + this.#skipRaw.length;
  }

  /** Feed decoded text (any chunking); returns the records completed so far. */
  push(text: string): ParsedBatch {
    const out = new Batch();
    let pos = 0;
    if (!this.#started && text.length > 0) {
      this.#started = true;
      if (text.charCodeAt(0) === BOM) pos = 1;
    }
    if (this.#tail !== '') {
      pos = this.#stitch(text, out);
      if (pos < 0) return out; // all of text went into the pending record
    }
    if (this.#skipLF && pos < text.length) {
      this.#skipLF = false;
      if (text.charCodeAt(pos) === LF) pos++;
    }
    this.#scan(text, pos, false, out);
    return out;
  }

  /**
   * Complete the pending record (#tail) with just enough of `text`. `#tail + text` would
   * make V8 copy the whole chunk into a flat string on first access, which cost ~40% of
   * the parse time in bench/csv-parse.ts. Returns where to go on in `text`, or -1 when
   * all of it was appended to the (still incomplete) pending record.
   */
  #stitch(text: string, out: Batch): number {
    const tail = this.#tail;
    let k = Math.min(text.length, tail.length + 4096);
    for (;;) {
      const head = tail + text.slice(0, k);
      this.#tail = '';
      this.#scan(head, 0, false, out);
      const rest = this.#tail;
      if (rest === '') return k; // head fully consumed (records, or discarding a long line)
      const start = head.length - rest.length;
      if (start > 0) {
        // The pending record ended in head and a new one started in text: read that one
        // from text itself. (#line already points at it.)
        this.#tail = '';
        return start - tail.length;
      }
      // Still the same incomplete record: nothing was emitted, so retrying is safe.
      if (k === text.length) return -1;
      k = Math.min(text.length, k * 2);
    }
  }

  /** Flush the last record (a file without a trailing newline); the parser is then reset. */
  end(): ParsedBatch {
    const data = this.#tail;
    const out = new Batch();
    this.#tail = '';
    try {
      if (this.#skipping) this.#endSkip(out);
      else this.#scan(data, 0, true, out);
    } finally {
      this.#line = this.#firstLine;
      this.#started = this.#skipLF = this.#skipping = this.#skipCR = false;
      this.#skipRaw = '';
    }
    return out;
  }

  /** Parse the complete records of data[pos..]; keep an incomplete last one in #tail. */
  #scan(data: string, pos: number, final: boolean, out: Batch): void {
    out.use(data);
    const len = data.length;
    const d = this.#delim;
    const dStr = String.fromCharCode(d);
    const max = this.#max;
    let line = this.#line;

    if (this.#skipping) {
      pos = this.#discard(data, pos, final, out);
      if (pos < 0) return; // the whole push belongs to the discarded record
      line = this.#line;
    }

    // Next delimiter, LF and CR at or after the scan position (len when there is none).
    // V8's indexOf is several times faster than a charCodeAt loop; caching the three
    // positions keeps every search linear: each is redone only once the scan passes it.
    let nextD = -1;
    let nextLF = -1;
    let nextCR = -1;

    records: while (pos < len) {
      let c = data.charCodeAt(pos);
      if (c === LF || c === CR) {
        // An empty line: no record, but it counts for line numbers.
        line++;
        pos = this.#afterTerminator(data, pos, final);
        continue;
      }
      const start = pos;
      // The record may use [start, limit); a record character at `limit` makes it too long.
      const limit = start + max;
      const bound = len < limit ? len : limit;
      const fields: string[] = [];
      let nl = 0; // line breaks inside quoted fields so far (they move later line numbers)
      let p = start; // start of the current field
      for (;;) {
        let from = p; // start of the unquoted text of the field
        let quoted: string | undefined;
        if (p < bound && data.charCodeAt(p) === QUOTE) {
          // Quoted field (RFC 4180 §2.5-2.7): find the closing quote, skipping `""` pairs.
          const qLine = line + nl;
          let q = p + 1;
          let esc = false;
          for (;;) {
            const at = q < bound ? data.indexOf('"', q) : -1;
            if (at < 0 || at >= bound) {
              if (len > limit) {
                // The quote is still open at the limit: the record is too long, but the
                // quote may close further on. Reject the record and discard it, following
                // the quotes, rather than fail the file (it fails if the quote never closes).
                pos = this.#overlong(data, start, p + 1, QUOTED, line, nl, final, out);
                if (pos < 0) return;
                line = this.#line;
                continue records;
              }
              if (!final) return this.#suspend(data, start, line);
              throw unbalancedQuote(qLine);
            }
            q = at;
            if (q + 1 >= len) {
              // `"` at the end of the input: a closing quote or the first half of `""`.
              if (!final) return this.#suspend(data, start, line);
              break;
            }
            if (data.charCodeAt(q + 1) !== QUOTE) break;
            esc = true;
            q += 2;
          }
          // Line breaks inside the value (kept as data) still advance physical lines.
          if (nextLF <= p) nextLF = found(data.indexOf('\n', p + 1), len);
          if (nextCR <= p) nextCR = found(data.indexOf('\r', p + 1), len);
          if (nextLF < q || nextCR < q) nl += countBreaks(data, p + 1, q);
          quoted = data.slice(p + 1, q);
          if (esc) quoted = quoted.replaceAll('""', '"');
          from = q + 1; // lenient: text after the closing quote is appended below
        }

        // Unquoted text: up to the delimiter, CR or LF (a `"` here is literal).
        if (nextD < from) nextD = found(data.indexOf(dStr, from), len);
        if (nextLF < from) nextLF = found(data.indexOf('\n', from), len);
        if (nextCR < from) nextCR = found(data.indexOf('\r', from), len);
        let j = nextD < nextLF ? nextD : nextLF;
        if (nextCR < j) j = nextCR;
        if (j >= bound) {
          j = bound;
          if (j < len) {
            // j === limit: only a line terminator may sit there.
            c = data.charCodeAt(j);
            if (c !== LF && c !== CR) {
              pos = this.#overlong(data, start, j, LINE, line, nl, final, out);
              if (pos < 0) return;
              line = this.#line;
              continue records;
            }
          } else if (!final) {
            return this.#suspend(data, start, line);
          }
        }
        fields.push(quoted === undefined ? data.slice(from, j) : j > from ? quoted + data.slice(from, j) : quoted);
        if (j < len && data.charCodeAt(j) === d) {
          p = j + 1;
          continue;
        }
        // End of record at j: a CR, an LF, or the end of the input (final only).
        out.add(fields, line, start, j);
        line += 1 + nl;
        pos = j >= len ? len : this.#afterTerminator(data, j, final);
        continue records;
      }
    }
    this.#line = line;
  }

  /** Keep the incomplete record starting at `start` for the next push. */
  #suspend(data: string, start: number, line: number): void {
    this.#tail = detach(data.slice(start));
    this.#line = line;
  }

  /** Position after the line terminator at t; remembers a CR that ends the input. */
  #afterTerminator(data: string, t: number, final: boolean): number {
    if (data.charCodeAt(t) !== CR) return t + 1;
    if (t + 1 < data.length) return data.charCodeAt(t + 1) === LF ? t + 2 : t + 1;
    if (!final) this.#skipLF = true;
    return t + 1;
  }

  /**
   * The record starting at `start` (on `line`, `nl` line breaks before `from`) is longer than
   * the limit: reject it and discard it from `from`, in `state`. LINE (a character outside
   * quotes at start + max): up to the next line terminator, quotes or not (a stray quote
   * past the limit must not swallow the file). QUOTED (a quoted field open at start + max,
   * `from` just after its opening quote): following the grammar, up to the line terminator
   * after the quote closes. Returns where to continue, or -1 when the record's end is not in
   * this push (the rest is discarded as it arrives).
   */
  #overlong(data: string, start: number, from: number, state: SkipState, line: number, nl: number, final: boolean, out: Batch): number {
    this.#skipping = true;
    this.#skipState = state;
    this.#skipLine = line;
    this.#line = this.#skipQuoteLine = line + nl;
    this.#skipCR = false;
    this.#skipRaw = detach(data.slice(start, Math.min(from, start + RAW_PREVIEW + 1)));
    return this.#discard(data, from, final, out);
  }

  /**
   * Discards data[pos..] up to the end of the over-long record (keeping the start of its
   * text for the report): returns where to continue after its terminator, or -1 when the
   * record goes on past `data`.
   */
  #discard(data: string, pos: number, final: boolean, out: Batch): number {
    const t = this.#recordEnd(data, pos);
    const stop = t < 0 ? data.length : t;
    const room = RAW_PREVIEW + 1 - this.#skipRaw.length;
    if (room > 0) this.#skipRaw += detach(data.slice(pos, Math.min(stop, pos + room)));
    if (t < 0) {
      if (!final) return -1;
      this.#endSkip(out);
      return data.length;
    }
    this.#finishSkip(out);
    this.#line++;
    return this.#afterTerminator(data, t, final);
  }

  /**
   * The index of the line terminator that ends the discarded record, searching data from
   * `pos` in #skipState; or -1 (the state and the line count are kept for the next push).
   * Only positions are found (indexOf); nothing of the record is kept.
   */
  #recordEnd(data: string, pos: number): number {
    const len = data.length;
    const dStr = String.fromCharCode(this.#delim);
    let state = this.#skipState;
    let i = pos;
    // Next line terminator and delimiter at or after i (len: none), searched again only
    // once i passes them, so that a record of many fields is not searched over and over.
    let t = -1;
    let d = -1;
    while (i < len) {
      if (state === QUOTED) {
        const at = data.indexOf('"', i);
        const stop = at < 0 ? len : at;
        // Line breaks inside the value still advance physical lines, a CRLF split between
        // two pushes counting once.
        const from = this.#skipCR && data.charCodeAt(i) === LF ? i + 1 : i;
        this.#line += countBreaks(data, from, stop);
        if (at < 0) {
          this.#skipCR = data.charCodeAt(len - 1) === CR;
          i = len;
          break;
        }
        this.#skipCR = false;
        i = at + 1;
        state = QUOTE_END;
        continue;
      }
      if (state === QUOTE_END || state === FIELD_START) {
        if (data.charCodeAt(i) === QUOTE) {
          // `""` inside the value, or a quote opening a field.
          if (state === FIELD_START) this.#skipQuoteLine = this.#line;
          i++;
          state = QUOTED;
          continue;
        }
        state = FIELD; // text after a closing quote is appended, a `"` in it is literal
      }
      if (t < i) t = found(nextTerminator(data, i), len);
      if (state === FIELD) {
        if (d < i) d = found(data.indexOf(dStr, i), len);
        if (d < t) {
          i = d + 1;
          state = FIELD_START;
          continue;
        }
      }
      if (t < len) {
        this.#skipState = state;
        return t;
      }
      i = len;
    }
    this.#skipState = state;
    return -1;
  }

  /** The input ended in a discarded record: it is rejected, unless a quote is still open in it. */
  #endSkip(out: Batch): void {
    if (this.#skipState === QUOTED) {
      throw unbalancedQuote(this.#skipQuoteLine);
    }
    this.#finishSkip(out);
  }

  #finishSkip(out: Batch): void {
    const raw = this.#skipRaw;
    out.errors.push({
      line: this.#skipLine,
      reason: `record longer than ${this.#max} characters`,
      raw: raw.length > RAW_PREVIEW ? raw.slice(0, RAW_PREVIEW) + '…' : raw,
    });
    this.#skipping = false;
    this.#skipRaw = '';
  }
}

/** indexOf result with "none" as len, so that min() picks the nearest. */
function found(i: number, len: number): number {
  return i < 0 ? len : i;
}

/** A quoted field that starts on `line` and never closes: the rest of the file cannot be parsed. */
function unbalancedQuote(line: number): CsvError {
  return new CsvError(`unbalanced quote: the quoted field starting at line ${line} is never closed`, line);
}

/** Line breaks in s[from, to): CR, LF and CRLF count one each. */
function countBreaks(s: string, from: number, to: number): number {
  let n = 0;
  for (let i = from; i < to; i++) {
    const c = s.charCodeAt(i);
    if (c === CR || (c === LF && s.charCodeAt(i - 1) !== CR)) n++;
  }
  return n;
}

/** Index of the first CR or LF at or after `from`, or -1. */
function nextTerminator(s: string, from: number): number {
  const lf = s.indexOf('\n', from);
  const cr = s.indexOf('\r', from);
  return lf < 0 ? cr : cr < 0 ? lf : Math.min(lf, cr);
}

/**
 * A copy of s that does not pin the string it was sliced from: V8 slices of 13+ chars
 * reference their parent, so a kept 100-char tail would otherwise hold a 1 MB chunk.
 * Slicing a fresh concatenation flattens it into a new string of s's size.
 */
function detach(s: string): string {
  return s.length < 13 ? s : (' ' + s).slice(1);
}
