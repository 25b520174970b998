/**
 * Reads a text file as batches of records, whatever its format: detects binary content,
 * the encoding (UTF-8, else Windows-1252) and, for CSV, the delimiter from the first bytes,
 * then streams big chunks through the decoder and the parser. Memory stays bounded by the
 * chunk size: the file is never held whole.
 */
import fs from 'node:fs';
import { InvalidFileError } from '../core/errors.ts';
import { CsvParser, type ParsedBatch } from './csv-parser.ts';
import { createDecoder, detectEncoding, encodingContradiction, excelSeparatorLine, looksBinary, sniffDelimiter, utf16Bom, type Encoding } from './sniff.ts';
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
}

const SAMPLE_BYTES = 64 * 1024;

/**
 * How the user gave the encoding, for the error refusing one the first bytes contradict:
 * `given('utf-8')` ends "it was ..." and `use(e)` / `none` say how to give another or none.
 */
export interface EncodingWording {
  given(e: Encoding): string;
  use(e: Encoding): string;
  none: string;
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

/** How `sluice import` and `sluice inspect` give the encoding. */
const GIVEN_ON_COMMAND_LINE: EncodingWording = {
  given: (e) => `given --encoding ${e}`,
  use: (e) => `run it with --encoding ${e}`,
  none: 'without --encoding',
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
  const contradiction = overrides.encoding && encodingContradiction(sample, overrides.encoding);
  if (contradiction === 'not-utf-8') {
    throw new InvalidFileError(`invalid file: it was ${wording.given('utf-8')}, but its first bytes are not valid UTF-8; save the file as UTF-8, or ${wording.use('windows-1252')}`);
  }
  if (contradiction === 'bom') {
    throw new InvalidFileError(`invalid file: it was ${wording.given('windows-1252')}, but it starts with a UTF-8 byte order mark; ${wording.use('utf-8')}, or ${wording.none}`);
  }
  const det = detectEncoding(sample);
  const encoding = overrides.encoding ?? det.encoding;
  let delimiter: string | null = null;
  if (format === 'csv') {
    const text = new TextDecoder(encoding).decode(sample);
    // Refused rather than honoured: the HTTP intake cuts the upload into parts from its
    // first line on (src/intake/accept.ts), taking `sep=;` for the header, so skipping the
    // line here would import the file from the command line and not over HTTP.
    const sep = excelSeparatorLine(text);
    if (sep !== undefined) {
      throw new InvalidFileError(
        `invalid file: the first line ${JSON.stringify(sep)} is Excel's delimiter hint, not a header: remove that line (the delimiter is detected from the header and rows)`,
      );
    }
    delimiter = overrides.delimiter ?? sniffDelimiter(text);
  }
  return { format, encoding, bom: det.bom, delimiter, bytes };
}

export interface RecordProgress {
  /** Bytes of the file consumed so far. */
  bytes: number;
}

/** Streams the file's records as parser batches. */
export async function* readRecords(
  path: string,
  meta: FileMeta,
  options: ReaderOptions,
  progress?: (p: RecordProgress) => void,
): AsyncGenerator<ParsedBatch> {
  const parser =
    meta.format === 'csv'
      ? new CsvParser({ delimiter: meta.delimiter ?? ',', firstLine: options.firstLine ?? 1, maxRecordChars: options.maxRecordChars })
      : new WhitespaceColumnsParser({ firstLine: options.firstLine ?? 1, maxRecordChars: options.maxRecordChars });
  const decoder = createDecoder(meta.encoding);
  const stream = fs.createReadStream(path, {
    highWaterMark: options.chunkBytes ?? 4 << 20,
    start: options.start,
    end: options.end === undefined ? undefined : options.end - 1,
  });
  let bytes = 0;
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
