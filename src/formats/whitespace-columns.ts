/**
 * Streaming reader for whitespace-aligned exports (the purchases file): one record per
 * line (LF or CRLF); the first line of the file is the header, whose column names may hold
 * single spaces (parsed by fixed-width.ts with the first data line as a hint); data lines
 * split on runs of whitespace. Produces the same batches as the CSV parser.
 */
import type { ParsedBatch } from './csv-parser.ts';
import { HEADER_SAMPLE_ROWS, parseFixedWidthHeader } from './fixed-width.ts';

export class WhitespaceColumnsParser {
  #tail = '';
  #line: number;
  #pendingHeader: string | undefined;
  /** Data lines held until the header is parsed with them as samples (fixed-width.ts). */
  #samples: Array<{ line: string; n: number }> = [];
  #needHeader: boolean;
  readonly #max: number;

  constructor(options: { firstLine: number; maxRecordChars?: number | undefined }) {
    this.#line = options.firstLine;
    this.#needHeader = options.firstLine === 1;
    this.#max = options.maxRecordChars ?? 1 << 20;
  }

  push(text: string): ParsedBatch {
    const data = this.#tail + text;
    const rows: string[][] = [];
    const lines: number[] = [];
    const raws: string[] = [];
    const errors: ParsedBatch['errors'] = [];
    let pos = 0;
    for (;;) {
      const nl = data.indexOf('\n', pos);
      if (nl < 0) break;
      const end = nl > pos && data.charCodeAt(nl - 1) === 13 ? nl - 1 : nl;
      this.#take(data.slice(pos, end), rows, lines, raws);
      pos = nl + 1;
    }
    this.#tail = data.slice(pos);
    if (this.#tail.length > this.#max) {
      errors.push({ line: this.#line, reason: `record longer than ${this.#max} characters`, raw: `${this.#tail.slice(0, 200)}…` });
      this.#tail = '';
      this.#skipRest = true;
    }
    return { rows, lines, raw: (i) => raws[i]!, errors };
  }

  #skipRest = false;

  #take(line: string, rows: string[][], lines: number[], raws: string[]): void {
    const n = this.#line++;
    if (this.#skipRest) {
      // The remainder of an over-long line (already rejected).
      this.#skipRest = false;
      return;
    }
    if (n === 1 && line.charCodeAt(0) === 0xfeff) line = line.slice(1);
    if (line.trim() === '') return;
    if (this.#needHeader && this.#pendingHeader === undefined) {
      this.#pendingHeader = line;
      return;
    }
    if (this.#pendingHeader !== undefined) {
      this.#samples.push({ line, n });
      if (this.#samples.length >= HEADER_SAMPLE_ROWS) this.#flushHeader(rows, lines, raws);
      return;
    }
    rows.push(splitWhitespace(line));
    lines.push(n);
    raws.push(line);
  }

  /** The header, parsed with the sample rows held, then those rows. */
  #flushHeader(rows: string[][], lines: number[], raws: string[]): void {
    const header = this.#pendingHeader!;
    const samples = this.#samples;
    rows.push(parseFixedWidthHeader(header, samples.map((s) => s.line)).names);
    lines.push(1);
    raws.push(header);
    this.#pendingHeader = undefined;
    this.#needHeader = false;
    this.#samples = [];
    for (const s of samples) {
      rows.push(splitWhitespace(s.line));
      lines.push(s.n);
      raws.push(s.line);
    }
  }

  end(): ParsedBatch {
    const rows: string[][] = [];
    const lines: number[] = [];
    const raws: string[] = [];
    const errors: ParsedBatch['errors'] = [];
    if (this.#tail !== '') this.#take(this.#tail, rows, lines, raws);
    this.#tail = '';
    if (this.#pendingHeader !== undefined) this.#flushHeader(rows, lines, raws);
    return { rows, lines, raw: (i) => raws[i]!, errors };
  }
}

/**
 * The whitespace-separated fields of a line. V8's native regexp split measured faster than
 * a hand-written scan here (bench/purchases-parse.ts).
 */
export function splitWhitespace(line: string): string[] {
  const t = line.trim();
  return t === '' ? [] : t.split(/\s+/);
}
