/**
 * PostgreSQL's binary COPY format (PostgreSQL docs, COPY, "Binary Format"): a fixed
 * header, then per row an int16 field count and per field an int32 length and the value in
 * the type's binary send format, then an int16 -1 trailer.
 *
 * Written for visits because text COPY made both sides format and parse two timestamps per
 * row (Date#toISOString alone costs over a microsecond here); binary timestamps are one
 * int64 each way. Read for a part's stored bytes (firstBinaryField): a bytea comes as it is,
 * where a query's text result would be hex, twice the bytes to send and to decode.
 */

const SIGNATURE = Buffer.from('PGCOPY\n\xff\r\n\0', 'latin1');
/** Microseconds between the Unix epoch and PostgreSQL's (2000-01-01 UTC). */
const PG_EPOCH_MS = 946_684_800_000;
const TWO_32 = 4_294_967_296;

/**
 * The first field of the first row of a binary COPY's output (`copy`: the whole output),
 * as bytes; null when that field is NULL or there is no row.
 */
export function firstBinaryField(copy: Buffer): Buffer | null {
  if (copy.length < 19 || !copy.subarray(0, 11).equals(SIGNATURE)) throw new Error('not a binary COPY stream: bad signature');
  let pos = 19 + copy.readInt32BE(15); // the header and its extension area
  const fields = copy.readInt16BE(pos);
  if (fields === -1) return null; // the trailer: no row
  if (fields < 1) throw new Error(`binary COPY row of ${fields} fields`);
  const length = copy.readInt32BE(pos + 2);
  if (length === -1) return null;
  pos += 6;
  if (pos + length > copy.length) throw new Error('binary COPY stream ends inside a field');
  return copy.subarray(pos, pos + length);
}

/** Writes rows into one Buffer, growing it as needed. */
export class BinaryCopyWriter {
  private buf: Buffer;
  private pos = 0;

  constructor(initialBytes = 1 << 16) {
    this.buf = Buffer.allocUnsafe(Math.max(64, initialBytes));
    SIGNATURE.copy(this.buf, 0);
    this.buf.writeInt32BE(0, 11); // flags: no OIDs
    this.buf.writeInt32BE(0, 15); // header extension length
    this.pos = 19;
  }

  /** Starts a row of `fields` columns. */
  row(fields: number): void {
    this.ensure(2);
    this.buf.writeInt16BE(fields, this.pos);
    this.pos += 2;
  }

  /** A timestamptz from epoch milliseconds (int64 microseconds since 2000-01-01). */
  timestamptz(ms: number): void {
    this.ensure(12);
    const micros = (ms - PG_EPOCH_MS) * 1000;
    // Exact in a double: |micros| < 2^53 for any date within +-285 years of 2000.
    const hi = Math.floor(micros / TWO_32);
    const lo = micros - hi * TWO_32;
    this.buf.writeInt32BE(8, this.pos);
    this.buf.writeInt32BE(hi, this.pos + 4);
    this.buf.writeUInt32BE(lo, this.pos + 8);
    this.pos += 12;
  }

  /** A text value, UTF-8. */
  text(value: string): void {
    const max = value.length * 3;
    this.ensure(4 + max);
    const n = this.buf.write(value, this.pos + 4, 'utf8');
    this.buf.writeInt32BE(n, this.pos);
    this.pos += 4 + n;
  }

  /** The finished stream (with its trailer). */
  finish(): Buffer {
    this.ensure(2);
    this.buf.writeInt16BE(-1, this.pos);
    this.pos += 2;
    return this.buf.subarray(0, this.pos);
  }

  private ensure(bytes: number): void {
    if (this.pos + bytes <= this.buf.length) return;
    const bigger = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.pos + bytes));
    this.buf.copy(bigger, 0, 0, this.pos);
    this.buf = bigger;
  }
}
