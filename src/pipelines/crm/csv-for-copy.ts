/**
 * What `COPY ... (FORMAT csv, HEADER MATCH)` gets of a source, byte for byte the file but:
 * - line ends are LF: COPY wants one newline style per file, and exports mix them (jaffle's
 *   orders file is CRLF, its payments file LF);
 * - no UTF-8 byte order mark: COPY would read it as part of the header's first name and
 *   refuse the file ("got \uFEFFid, expected id");
 * - no empty lines: COPY reads one as a record of one empty field and refuses the whole
 *   file ("missing data for column"); a trailing `\r\n\r\n` is enough.
 * Line ends inside quoted fields are data, and kept (as LF). Quotes are tracked as COPY's
 * own line splitter does (RFC 4180: every `"` toggles, so `""` toggles twice).
 * Skipped lines are remembered, so line numbers reported to users are the file's (as COPY
 * counts them: a record whose quoted field spans lines is one line).
 */
import { Transform, type TransformCallback } from 'node:stream';

const LF = 0x0a;
const CR = 0x0d;
const QUOTE = 0x22;
const LF_BUF = Buffer.from('\n');
const BOM = Buffer.from([0xef, 0xbb, 0xbf]);

export class CsvForCopy extends Transform {
  private inQuote = false;
  private atLineStart = true;
  /** A CR ended the last chunk: an LF starting the next one belongs to it. */
  private pendingCr = false;
  /** The first bytes, held while they may still be the start of a BOM. */
  private head: Buffer | undefined = Buffer.alloc(0);
  /** Records passed on (line ends outside quotes). */
  private records = 0;
  /** Runs of empty lines dropped, in file order: records passed on before each, its length. */
  private readonly runAfter: number[] = [];
  private readonly runLength: number[] = [];
  /** Empty lines dropped so far. */
  emptyLines = 0;

  /**
   * The file's line number of the `n`-th line COPY saw (1 = the header; COPY's error
   * context and the reject samples count so).
   */
  fileLine(n: number): number {
    let line = n;
    for (let i = 0; i < this.runAfter.length && (this.runAfter[i] as number) < n; i++) line += this.runLength[i] as number;
    return line;
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    let buf = chunk;
    if (this.head) {
      buf = this.head.length ? Buffer.concat([this.head, chunk]) : chunk;
      if (buf.length < BOM.length && BOM.subarray(0, buf.length).equals(buf)) {
        this.head = buf;
        cb();
        return;
      }
      this.head = undefined;
      if (buf.subarray(0, BOM.length).equals(BOM)) buf = buf.subarray(BOM.length);
    }
    cb(null, this.lines(buf));
  }

  override _flush(cb: TransformCallback): void {
    // A file shorter than a BOM that began like one: pass it on as it is.
    cb(null, this.head?.length ? this.head : null);
  }

  private skip(): void {
    this.emptyLines++;
    const last = this.runAfter.length - 1;
    if (this.runAfter[last] === this.records) (this.runLength[last] as number)++;
    else {
      this.runAfter.push(this.records);
      this.runLength.push(1);
    }
  }

  private lines(buf: Buffer): Buffer {
    const out: Buffer[] = [];
    let from = 0; // start of the bytes not yet passed on
    let i = 0;
    if (this.pendingCr) {
      this.pendingCr = false;
      if (buf[0] === LF) i = from = 1; // the LF of a CRLF split across chunks
    }
    for (; i < buf.length; i++) {
      const c = buf[i];
      if (c === QUOTE) {
        this.inQuote = !this.inQuote;
        this.atLineStart = false;
        continue;
      }
      if (c !== LF && c !== CR) {
        this.atLineStart = false;
        continue;
      }
      const end = c === CR && buf[i + 1] === LF ? i + 2 : i + 1;
      if (c === CR && i + 1 === buf.length) this.pendingCr = true;
      if (!this.inQuote && this.atLineStart) {
        out.push(buf.subarray(from, i)); // an empty line: dropped
        from = end;
        this.skip();
      } else {
        if (c === CR) {
          out.push(buf.subarray(from, i), LF_BUF);
          from = end;
        }
        if (!this.inQuote) {
          this.records++;
          this.atLineStart = true;
        }
      }
      i = end - 1;
    }
    if (!out.length) return buf;
    out.push(buf.subarray(from));
    return Buffer.concat(out);
  }
}
