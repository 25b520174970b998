/** `sluice inspect <file>`: what Sluice detects in a file, and its parsed rows. */
import type { Command } from 'commander';
import { InvalidInputError } from '../../core/errors.ts';
import { HEADER_SAMPLE_ROWS, parseFixedWidthHeader } from '../../formats/fixed-width.ts';
import { detectSample, readRecords, readSample, type FileMeta, type FormatKind } from '../../formats/record-reader.ts';
import { parseEncoding } from '../../formats/sniff.ts';
import { splitWhitespace } from '../../formats/whitespace-columns.ts';
import { fileArgument } from '../file-argument.ts';
import { wholeNumber } from '../../core/whole-number.ts';

interface InspectFlags {
  json?: boolean;
  format?: string;
  encoding?: string;
  rows: string;
}

export function registerInspect(program: Command): void {
  program
    .command('inspect')
    .description('show the detected format, delimiter, encoding, header and parsed rows')
    .argument('<file>', 'path of the file')
    .option('--json', 'one JSON object on stdout')
    .option('--format <kind>', 'csv or fixed-width (default: detected; fixed-width for whitespace-aligned columns)')
    .option('--encoding <enc>', 'force the encoding: utf-8 or windows-1252, or a label of either (default: detected)')
    .option('--rows <n>', 'rows to show', '20')
    .action(async (file: string, flags: InspectFlags) => {
      if (flags.format !== undefined && flags.format !== 'csv' && flags.format !== 'fixed-width') throw new InvalidInputError('--format must be csv or fixed-width');
      // The labels `sluice import --encoding` and POST /imports take (src/formats/sniff.ts).
      const encoding = flags.encoding === undefined ? undefined : parseEncoding(flags.encoding);
      if (flags.encoding !== undefined && !encoding) {
        throw new InvalidInputError(`--encoding must be utf-8 or windows-1252 (or a label of either: latin1, iso-8859-1, cp1252...), got ${flags.encoding}`);
      }
      const limit = wholeNumber(flags.rows);
      if (limit === undefined) throw new InvalidInputError('--rows must be a whole number');
      fileArgument(file);
      // The first bytes read once: for the format's detection, and for the fixed-width test.
      const { sample, bytes } = readSample(file);
      let meta: FileMeta = detectSample(sample, bytes, (flags.format as FormatKind | undefined) ?? 'csv', encoding ? { encoding } : {});
      if (flags.format === undefined && looksFixedWidth(sampleText(sample, bytes, meta.encoding))) meta = { ...meta, format: 'fixed-width', delimiter: null };
      let header: string[] | undefined;
      const rows: string[][] = [];
      outer: for await (const batch of readRecords(file, meta, { format: meta.format, chunkBytes: 256 * 1024 })) {
        for (const r of batch.rows) {
          if (!header) header = r;
          else if (rows.length < limit) rows.push(r);
          else break outer;
        }
      }
      const out = { format: meta.format, delimiter: meta.delimiter, encoding: meta.encoding, header: header ?? [], rows };
      if (flags.json) {
        process.stdout.write(`${JSON.stringify(out)}\n`);
        return;
      }
      // Fixed-width records have no delimiter (null in the JSON).
      const delim = meta.delimiter === null ? `none (${meta.format})` : meta.delimiter === '\t' ? 'tab' : meta.delimiter;
      const how =
        flags.format !== undefined ? ' (as given)'
        : meta.format === 'fixed-width' ? ' (detected: whitespace-aligned columns; --format csv reads it as CSV)'
        : ' (detected; --format fixed-width reads whitespace-aligned exports)';
      const given = encoding ? ' (as given)' : '';
      process.stdout.write(`format: ${meta.format}${how}\nencoding: ${meta.encoding}${meta.bom ? ' (BOM)' : ''}${given}\ndelimiter: ${delim}\n`);
      process.stdout.write(`header (${out.header.length}): ${out.header.join(' | ')}\n`);
      rows.forEach((r, i) => process.stdout.write(`${String(i + 1).padStart(4)}: ${r.join(' | ')}\n`));
    });
}

/** The text of the file's first bytes (readSample's), its last line whole or dropped. */
function sampleText(sample: Buffer, bytes: number, encoding: string): string {
  const text = new TextDecoder(encoding).decode(sample);
  // Cut by the sample: its last line may be incomplete.
  return sample.length === bytes ? text : text.slice(0, text.lastIndexOf('\n') + 1);
}

/** Lines of a fixed-width sample looked at: the header and HEADER_SAMPLE_ROWS data lines. */
const LOOKED_AT = 1 + HEADER_SAMPLE_ROWS;

/**
 * Whether the first lines read as a whitespace-aligned export (the purchases file) rather
 * than a CSV: no CSV delimiter (, ; tab |) occurs the same number of times (at least once)
 * on every line, at least two data lines split on whitespace into the same number of
 * fields (two or more), and the header, read as fixed-width.ts reads it (its names may hold
 * single spaces, placed by the data lines), has that many names, set apart by runs of two or
 * more spaces. A CSV fails the first tests (a delimiter in its header) or, with a single
 * column, the last ones (`Full Name` / `John Smith`: no run of spaces in the header).
 */
export function looksFixedWidth(sample: string): boolean {
  const lines = sample
    .replace(/^\uFEFF/, '')
    .split('\n')
    .map((l) => l.replace(/\r$/, ''))
    .filter((l) => l.trim() !== '')
    .slice(0, LOOKED_AT);
  if (lines.length < 3) return false;
  for (const d of [',', ';', '\t', '|']) {
    const counts = new Set(lines.map((l) => l.split(d).length - 1));
    if (counts.size === 1 && !counts.has(0)) return false;
  }
  const [header, ...data] = lines as [string, ...string[]];
  // A delimiter in the header is a CSV's (a ragged one: a row short of a field). Not in the
  // data: an aligned export's values may hold commas (`399,00`).
  if (/[,;\t|]/.test(header)) return false;
  // Aligned columns: the header's names are set apart by runs of two or more spaces (a
  // name may hold single spaces); one column of names with spaces (`Full Name` / `John
  // Smith`) has no such run.
  const gaps = header.trim().split(/ {2,}/).length;
  const fields = new Set(data.map((l) => splitWhitespace(l).length));
  if (fields.size !== 1) return false;
  const n = [...fields][0]!;
  return n >= 2 && gaps >= 2 && parseFixedWidthHeader(header, data).names.length === n;
}
