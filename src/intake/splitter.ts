/**
 * Cuts a byte stream into parts of N records at record boundaries, without decoding it
 * and without holding more than one part: a record ends at an LF outside double quotes
 * (RFC 4180 quoting; `"` and LF never occur inside a UTF-8 or Windows-1252 multi-byte
 * character, so scanning bytes is exact). The first record (the header) is split off.
 * Physical line numbers are tracked so rejects point at the right line of the file.
 */
export interface Part {
  n: number;
  /** Physical line of the file where the part starts. */
  firstLine: number;
  lastLine: number;
  records: number;
  data: Buffer;
}

const LF = 0x0a;
const QUOTE = 0x22;

export class RecordSplitter {
  /** Records per part; may be changed before the first part is cut. */
  partRecords: number;
  private readonly quoted: boolean;
  private chunks: Buffer[] = [];
  private bytes = 0;
  private inQuote = false;
  private records = 0;
  private line = 1;
  private partStartLine = 1;
  private n = 0;
  /** Bytes of the first record (the header), once complete. */
  header: Buffer | undefined;

  /** `quoted`: honour CSV quotes (false for line-based formats). */
  constructor(options: { partRecords: number; quoted: boolean }) {
    this.partRecords = options.partRecords;
    this.quoted = options.quoted;
  }

  /** Feeds bytes; returns the parts completed by them. */
  push(buf: Buffer): Part[] {
    const parts: Part[] = [];
    let start = 0;
    // Jumps from LF to LF with indexOf (memchr), not byte by byte: the server splits
    // every upload, at several hundred MB/s this way. With quoting, the quotes between two
    // LFs flip the state; `quote` is the next quote at or after the scan position.
    let quote = this.quoted ? buf.indexOf(QUOTE) : -1;
    let pos = 0;
    for (;;) {
      const i = buf.indexOf(LF, pos);
      if (i < 0) break;
      while (quote >= 0 && quote < i) {
        this.inQuote = !this.inQuote;
        quote = buf.indexOf(QUOTE, quote + 1);
      }
      pos = i + 1;
      this.line++;
      if (this.inQuote) continue;
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
      if (this.records >= this.partRecords) {
        this.chunks.push(buf.subarray(start, i + 1));
        this.bytes += i + 1 - start;
        parts.push(this.cut(this.line - 1));
        start = i + 1;
      }
    }
    // Quotes after the last LF still count for the state the next buffer starts in.
    while (quote >= 0) {
      this.inQuote = !this.inQuote;
      quote = buf.indexOf(QUOTE, quote + 1);
    }
    if (start < buf.length) {
      // Copy: the caller's buffer may be reused by the stream.
      this.chunks.push(Buffer.from(buf.subarray(start)));
      this.bytes += buf.length - start;
    }
    return parts;
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
    // A last record without its LF (or inside an unclosed quote) was not counted yet.
    const tail = this.chunks[this.chunks.length - 1]!;
    if (this.inQuote || tail[tail.length - 1] !== LF) this.records++;
    return this.cut(this.line);
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
