/**
 * Cuts a byte stream into parts of N records at record boundaries, without decoding it
 * and without holding more than one part: a record ends at a line terminator outside a
 * quoted field (`"`, LF, CR and the delimiter never occur inside a UTF-8 or Windows-1252
 * multi-byte character, so scanning bytes is exact). The terminator is LF (which covers
 * CRLF), or CR for files whose lines end with a lone CR (old Mac exports; chosen by the
 * caller from the first bytes, lineTerminator()). The first record (the header) is split
 * off. Physical line numbers are tracked so rejects point at the right line of the file:
 * from `firstLine` on, 2 when the caller kept an Excel `sep=` line from the splitter (the
 * header then starts on line 2, src/intake/accept.ts).
 *
 * Quoted fields are found exactly as the CSV parser (formats/csv-parser.ts) finds them:
 * each part is parsed on its own, so a cut inside what the parser reads as a quoted field
 * fails or changes the import, and a quote it reads as literal must not hold off the cuts.
 * Outside a quoted field, a `"` opens one only at the start of a field: the first byte of
 * the input (after a UTF-8 BOM, which the parser drops), or right after the delimiter or a
 * CR or LF (record ends for the parser, whatever the file's terminator). Anywhere else it
 * is literal: mid-field (`Monitor 27"`) or after a closing quote (`"ab"c"d`, read `abc"d`).
 * Inside a quoted field every `"` closes it, and one right after the quote that closed it
 * opens it again: that is `""`, an escaped quote. (Toggling on every `"` instead, one stray
 * quote flips the state for the rest of the file.) The previous byte and whether the last
 * one closed a quote carry over between push() calls. Quotes are found with indexOf, like
 * line ends: only a quote costs a look at the byte before it.
 *
 * Memory is bounded whatever the input: a part is cut early once it holds maxPartBytes,
 * and a record that has not ended after maxRecordBytes (a file without line breaks, or an
 * unclosed quote that swallows the rest of the file) fails the upload with InvalidFileError.
 */
import { InvalidFileError } from '../core/errors.ts';

export interface Part {
  n: number;
  /** Physical line of the file where the part starts. */
  firstLine: number;
  lastLine: number;
  records: number;
  data: Buffer;
}

const LF = 0x0a;
const CR = 0x0d;
const QUOTE = 0x22;
const COMMA = 0x2c;
/** No byte before the first one: a quote there starts a field. */
const NONE = -1;
const BOM = Buffer.from([0xef, 0xbb, 0xbf]);

/** A part is cut at the first record end past this many bytes, whatever its record count. */
export const MAX_PART_BYTES = 64 * 1024 * 1024;
/** No record is longer (the parsers reject rows of over 1 MiB characters anyway). */
export const MAX_RECORD_BYTES = 16 * 1024 * 1024;

/**
 * The line terminator of a file from its first bytes: CR when they hold a CR and no LF at
 * all (lone-CR line ends), else LF (LF and CRLF files, and a sample without any line end).
 */
export function lineTerminator(sample: Buffer): typeof LF | typeof CR {
  return sample.indexOf(LF) < 0 && sample.indexOf(CR) >= 0 ? CR : LF;
}

export interface SplitterOptions {
  partRecords: number;
  /** Honour CSV quotes (false for line-based formats). */
  quoted: boolean;
  /** The byte that ends a line: LF (default) or CR (lineTerminator()). */
  terminator?: number;
  /** The CSV delimiter's byte (default ','; the delimiters are ASCII): a quote after it starts a quoted field. */
  delimiter?: number;
  /** Physical line of the file on which the first byte pushed is (default 1). */
  firstLine?: number;
  maxPartBytes?: number;
  maxRecordBytes?: number;
}

export class RecordSplitter {
  /** Records per part; may be changed before the first part is cut. */
  partRecords: number;
  /** The line terminator; may be changed before the first bytes are pushed. */
  terminator: number;
  /** The CSV delimiter's byte; may be changed before the first bytes are pushed. */
  delimiter: number;
  /**
   * Physical line of the file on which the first byte pushed is: 1, or 2 when the caller
   * kept Excel's `sep=` line from the splitter; may be changed before the first bytes are pushed.
   */
  firstLine: number;
  private readonly quoted: boolean;
  private readonly maxPartBytes: number;
  private readonly maxRecordBytes: number;
  private chunks: Buffer[] = [];
  private bytes = 0;
  /** Bytes held since the last record end (the record being read). */
  private open = 0;
  private inQuote = false;
  /** The last byte pushed (NONE before any). */
  private prev = NONE;
  /** Whether that byte was a quote that closed a quoted field (a `"` next is the second of `""`). */
  private closedAtEnd = false;
  /** Bytes pushed so far, and the first 3 of them (a UTF-8 BOM?). */
  private seen = 0;
  private lead = Buffer.alloc(0);
  private records = 0;
  private line = 1;
  private partStartLine = 1;
  private n = 0;
  /** Bytes of the first record (the header), once complete. */
  header: Buffer | undefined;

  constructor(options: SplitterOptions) {
    this.partRecords = options.partRecords;
    this.quoted = options.quoted;
    this.terminator = options.terminator ?? LF;
    this.delimiter = options.delimiter ?? COMMA;
    this.firstLine = options.firstLine ?? 1;
    this.maxPartBytes = options.maxPartBytes ?? MAX_PART_BYTES;
    this.maxRecordBytes = options.maxRecordBytes ?? MAX_RECORD_BYTES;
  }

  /** Feeds bytes; returns the parts completed by them. Throws InvalidFileError for a record over maxRecordBytes. */
  push(buf: Buffer): Part[] {
    const parts: Part[] = [];
    if (buf.length === 0) return parts;
    const eol = this.terminator;
    if (this.seen === 0) this.line = this.partStartLine = this.firstLine;
    if (this.seen < 3) this.lead = Buffer.concat([this.lead, buf.subarray(0, 3 - this.seen)]);
    let start = 0;
    // Where the record being read began in this buffer (0: in an earlier one).
    let recordStart = 0;
    // Jumps from line end to line end with indexOf (memchr), not byte by byte: the server
    // splits every upload, at several hundred MB/s this way. With quoting, the quotes between
    // two line ends may change the state (applyQuote()); `quote` is the next quote at or after
    // the scan position, `closed` the position of the last closing quote (-1: the last byte
    // of the previous buffer).
    let quote = this.quoted ? buf.indexOf(QUOTE) : -1;
    let closed = this.closedAtEnd ? -1 : -2;
    let pos = 0;
    for (;;) {
      const i = buf.indexOf(eol, pos);
      if (i < 0) break;
      while (quote >= 0 && quote < i) {
        closed = this.applyQuote(buf, quote, closed);
        quote = buf.indexOf(QUOTE, quote + 1);
      }
      pos = i + 1;
      this.line++;
      if (this.inQuote) continue;
      this.open = 0;
      recordStart = i + 1;
      if (this.header === undefined) {
        this.chunks.push(buf.subarray(start, i + 1));
        this.header = Buffer.concat(this.chunks);
        this.chunks = [];
        this.bytes = 0;
        start = i + 1;
        this.partStartLine = this.line;
        continue;
      }
      this.records++;
      if (this.records >= this.partRecords || this.bytes + (i + 1 - start) >= this.maxPartBytes) {
        this.chunks.push(buf.subarray(start, i + 1));
        this.bytes += i + 1 - start;
        parts.push(this.cut(this.line - 1));
        start = i + 1;
      }
    }
    // Quotes after the last line end still count for the state the next buffer starts in.
    while (quote >= 0) {
      closed = this.applyQuote(buf, quote, closed);
      quote = buf.indexOf(QUOTE, quote + 1);
    }
    this.prev = buf[buf.length - 1]!;
    this.closedAtEnd = closed === buf.length - 1;
    this.seen += buf.length;
    if (start < buf.length) {
      // Copy: the caller's buffer may be reused by the stream.
      this.chunks.push(Buffer.from(buf.subarray(start)));
      this.bytes += buf.length - start;
    }
    this.open += buf.length - recordStart;
    if (this.open > this.maxRecordBytes) {
      const where = this.header === undefined ? 'the header' : `the record that starts on line ${this.recordLine()}`;
      throw new InvalidFileError(
        `invalid file: ${where} is longer than ${this.maxRecordBytes} bytes: ${this.inQuote ? 'a quote is never closed' : 'no line break'}`,
      );
    }
    return parts;
  }

  /**
   * Applies the quote at buf[q] (the parser's rules, see the top of the file) and returns
   * the position of the last quote that closed a quoted field, `closed` or q.
   */
  private applyQuote(buf: Buffer, q: number, closed: number): number {
    if (this.inQuote) {
      this.inQuote = false;
      return q;
    }
    if (q === closed + 1) {
      this.inQuote = true; // the second quote of `""`
      return closed;
    }
    const prev = q > 0 ? buf[q - 1]! : this.prev;
    if (prev === this.delimiter || prev === LF || prev === CR || prev === NONE) this.inQuote = true;
    else if (this.seen + q === 3 && this.lead.equals(BOM)) this.inQuote = true;
    return closed;
  }

  /** The last, partial part (if any bytes remain). */
  end(): Part | undefined {
    if (this.header === undefined && this.chunks.length > 0) {
      this.header = Buffer.concat(this.chunks);
      this.chunks = [];
      this.bytes = 0;
      return undefined;
    }
    if (this.bytes === 0 || Buffer.concat(this.chunks).toString('latin1').trim() === '') return undefined;
    // A last record without its line end (or inside an unclosed quote) was not counted yet,
    // and ends on the current line; one with its line end ended on the line before.
    const tail = this.chunks[this.chunks.length - 1]!;
    const open = this.inQuote || tail[tail.length - 1] !== this.terminator;
    if (open) this.records++;
    return this.cut(open ? this.line : this.line - 1);
  }

  /**
   * The physical line the open record starts on: the line after the last record end, i.e.
   * the current line less the line ends read inside it (quoted ones).
   */
  private recordLine(): number {
    let breaks = 0;
    let left = this.open;
    for (let c = this.chunks.length - 1; c >= 0 && left > 0; c--) {
      const chunk = this.chunks[c]!;
      const from = Math.max(0, chunk.length - left);
      for (let i = chunk.indexOf(this.terminator, from); i >= 0; i = chunk.indexOf(this.terminator, i + 1)) breaks++;
      left -= chunk.length - from;
    }
    return this.line - breaks;
  }

  private cut(lastLine: number): Part {
    const data = Buffer.concat(this.chunks);
    const part = { n: this.n++, firstLine: this.partStartLine, lastLine, records: this.records, data };
    this.chunks = [];
    this.bytes = 0;
    this.records = 0;
    this.partStartLine = lastLine + 1;
    return part;
  }
}
