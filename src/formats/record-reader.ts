/**
 * Reads a text file as batches of records, whatever its format: detects binary content,
 * the encoding (UTF-8, else Windows-1252) and, for CSV, the delimiter from the first bytes,
 * then streams big chunks through the decoder and the parser. Memory stays bounded by the
 * chunk size: the file is never held whole.
 */
import fs from 'node:fs';
import { InvalidFileError } from '../core/errors.ts';
import { CsvParser, type ParsedBatch } from './csv-parser.ts';
import { createDecoder, detectEncoding, encodingContradiction, excelSeparatorLine, looksBinary, parseDelimiter, sniffDelimiter, utf16Bom, type Encoding } from './sniff.ts';
import { WhitespaceColumnsParser } from './whitespace-columns.ts';

export type FormatKind = 'csv' | 'fixed-width';

export interface ReaderOptions {
  format: FormatKind;
  encoding?: Encoding;
  delimiter?: string;
  /** Bytes per read (default 4 MiB). */
  chunkBytes?: number;
  maxRecordChars?: number;
  /** Byte range of the file to read (parts of an import); default the whole file. */
  start?: number;
  end?: number;
  /** Physical line number of the first line at `start` (default 1). */
  firstLine?: number;
}

export interface FileMeta {
  format: FormatKind;
  encoding: Encoding;
  bom: boolean;
  delimiter: string | null;
  bytes: number;
  /**
   * Excel's delimiter hint (`sep=;`) on the first line of a CSV, honoured: its character is
   * `delimiter`, and the line is the file's first `bytes` bytes (a UTF-8 BOM before it and
   * its line end included), which the readers skip: the header is on line 2, and line
   * numbers stay those of the file. Null without one (and for fixed-width files).
   */
  hint: { line: string; bytes: number } | null;
}

const SAMPLE_BYTES = 64 * 1024;

/**
 * How the user gave an option of the file's format (its value, `v`), for the errors refusing
 * one the file contradicts: `given(v)` follows "it was" (encoding) or "but" (delimiter), and
 * `use(v)` / `none` say how to give another or none.
 */
export interface OptionWording<V extends string = string> {
  given(v: V): string;
  use(v: V): string;
  none: string;
}

/** How the user gave the encoding (the top level, as before) and the delimiter. */
export interface EncodingWording extends OptionWording<Encoding> {
  delimiter: OptionWording;
}

/** Inspects the first bytes of a file: encoding, delimiter; throws on empty/binary files and on an encoding they contradict. */
export function detectFile(path: string, format: FormatKind, overrides: { encoding?: Encoding; delimiter?: string } = {}): FileMeta {
  const { sample, bytes } = readSample(path);
  return detectSample(sample, bytes, format, overrides);
}

/** The file's first bytes, those format detection reads (64 KiB at most), and its size. */
export function readSample(path: string): { sample: Buffer; bytes: number } {
  const bytes = fs.statSync(path).size;
  const fd = fs.openSync(path, 'r');
  const sample = Buffer.alloc(Math.min(SAMPLE_BYTES, bytes));
  try {
    fs.readSync(fd, sample, 0, sample.length, 0);
  } finally {
    fs.closeSync(fd);
  }
  return { sample, bytes };
}

/** Bytes to read before calling detectSample on a stream. */
export const DETECT_SAMPLE_BYTES = SAMPLE_BYTES;

/** A delimiter as a message names it: `";"`, or `tab`. */
export function delimiterName(d: string): string {
  return d === '\t' ? 'tab' : JSON.stringify(d);
}

/** How `sluice import` and `sluice inspect` give the encoding and the delimiter. */
const GIVEN_ON_COMMAND_LINE: EncodingWording = {
  given: (e) => `given --encoding ${e}`,
  use: (e) => `run it with --encoding ${e}`,
  none: 'without --encoding',
  delimiter: {
    given: (d) => `--delimiter ${delimiterName(d)} was given`,
    use: (d) => `run it with --delimiter ${delimiterName(d)}`,
    none: 'without --delimiter',
  },
};

/**
 * Why `delimiter` (`--delimiter` on the command line, `delimiter=` over HTTP) cannot be
 * given to a pipeline reading `kind` files of name `pipeline`, or undefined: only CSV
 * columns are delimited. Worded to follow the option's name.
 */
export function delimiterProblem(pipeline: string, kind: FormatKind): string | undefined {
  return kind === 'csv' ? undefined : `is for CSV files: the ${pipeline} pipeline reads ${kind} files, whose columns are not delimited`;
}


/**
 * Format detection on the first bytes of a file (`bytes`: its size, when known). An encoding
 * given that they contradict (encodingContradiction) is refused, in `wording`.
 */
export function detectSample(
  sample: Buffer,
  bytes: number,
  format: FormatKind,
  overrides: { encoding?: Encoding; delimiter?: string } = {},
  wording: EncodingWording = GIVEN_ON_COMMAND_LINE,
): FileMeta {
  if (sample.length === 0) throw new InvalidFileError('invalid file: the file is empty');
  // Before the binary test, which UTF-16 fails (the NUL byte of each ASCII character).
  if (utf16Bom(sample)) {
    throw new InvalidFileError(`invalid file: UTF-16 text (Excel's "Unicode Text"), which Sluice does not read: save it as "CSV UTF-8" instead`);
  }
  if (looksBinary(sample)) throw new InvalidFileError('invalid file: binary content (not a text file)');
  // Scanned once (up to 64 KiB). The sample is the whole file: a multi-byte sequence cut at
  // its end is cut for good.
  const det = detectEncoding(sample, bytes === sample.length);
  const contradiction = overrides.encoding && encodingContradiction(det, overrides.encoding);
  if (contradiction === 'not-utf-8') {
    throw new InvalidFileError(`invalid file: it was ${wording.given('utf-8')}, but its first bytes are not valid UTF-8; save the file as UTF-8, or ${wording.use('windows-1252')}`);
  }
  if (contradiction === 'bom') {
    throw new InvalidFileError(`invalid file: it was ${wording.given('windows-1252')}, but it starts with a UTF-8 byte order mark; ${wording.use('utf-8')}, or ${wording.none}`);
  }
  const encoding = overrides.encoding ?? det.encoding;
  let delimiter: string | null = null;
  let hint: FileMeta['hint'] = null;
  if (format === 'csv') {
    const text = new TextDecoder(encoding).decode(sample);
    hint = excelHint(sample, det.bom, text, overrides.delimiter, wording.delimiter);
    // The hint says what the file's author chose: it wins over sniffing (and agrees with a
    // delimiter given, or excelHint refused the file).
    delimiter = hint ? hint.line.slice(4) : (overrides.delimiter ?? sniffDelimiter(text));
  }
  return { format, encoding, bom: det.bom, delimiter, bytes, hint };
}

/**
 * Excel's delimiter hint on the first line of a CSV (excelSeparatorLine: exactly `sep=` and
 * one character), honoured by both ways in: `sluice import` (readRecords skips its bytes) and
 * the HTTP intake (src/intake/accept.ts feeds the splitter what follows them, from line 2).
 * Its bytes: a UTF-8 BOM, the five of `sep=X` (X is one of Sluice's delimiters, all ASCII:
 * one byte in both encodings) and its line end, CRLF, CR or LF. Refused (InvalidFileError)
 * when its character is not a delimiter Sluice reads, or differs from the one `given`
 * (never one silently over the other).
 */
function excelHint(sample: Buffer, bom: boolean, text: string, given: string | undefined, wording: OptionWording): FileMeta['hint'] {
  const line = excelSeparatorLine(text);
  if (line === undefined) return null;
  const d = line.slice(4);
  if (!parseDelimiter(d)) {
    throw new InvalidFileError(
      `invalid file: the first line ${JSON.stringify(line)} is Excel's delimiter hint, for ${delimiterName(d)}, which is not a delimiter Sluice reads (, ; tab |): save the file with one of those`,
    );
  }
  if (given !== undefined && given !== d) {
    throw new InvalidFileError(
      `invalid file: the first line ${JSON.stringify(line)} is Excel's delimiter hint, for ${delimiterName(d)}, but ${wording.given(given)}: ${wording.use(d)} or ${wording.none}, or remove that line`,
    );
  }
  let bytes = (bom ? 3 : 0) + 'sep=;'.length;
  if (sample[bytes] === 0x0d) bytes += sample[bytes + 1] === 0x0a ? 2 : 1;
  else if (sample[bytes] === 0x0a) bytes += 1;
  return { line, bytes };
}

export interface RecordProgress {
  /** Bytes of the file consumed so far. */
  bytes: number;
}

/**
 * Streams the file's records as parser batches. Read from its start, a CSV's Excel delimiter
 * hint (meta.hint) is skipped: the first record is the header on line 2, and the lines
 * and byte offsets the batches and errors name are still those of the file.
 */
export async function* readRecords(
  path: string,
  meta: FileMeta,
  options: ReaderOptions,
  progress?: (p: RecordProgress) => void,
): AsyncGenerator<ParsedBatch> {
  const skip = meta.format === 'csv' && meta.hint && !options.start ? meta.hint.bytes : 0;
  const firstLine = (options.firstLine ?? 1) + (skip > 0 ? 1 : 0);
  const parser =
    meta.format === 'csv'
      ? new CsvParser({ delimiter: meta.delimiter ?? ',', firstLine, maxRecordChars: options.maxRecordChars })
      : new WhitespaceColumnsParser({ firstLine, maxRecordChars: options.maxRecordChars });
  const decoder = createDecoder(meta.encoding, skip);
  const stream = fs.createReadStream(path, {
    highWaterMark: options.chunkBytes ?? 4 << 20,
    start: skip > 0 ? skip : options.start,
    end: options.end === undefined ? undefined : options.end - 1,
  });
  let bytes = skip;
  for await (const chunk of stream as AsyncIterable<Buffer>) {
    bytes += chunk.length;
    const text = decoder.write(chunk);
    const batch = parser.push(text);
    progress?.({ bytes });
    if (batch.rows.length > 0 || batch.errors.length > 0) yield batch;
  }
  const tail = decoder.end();
  const last = tail ? parser.push(tail) : undefined;
  if (last && (last.rows.length > 0 || last.errors.length > 0)) yield last;
  const end = parser.end();
  if (end.rows.length > 0 || end.errors.length > 0) yield end;
}
