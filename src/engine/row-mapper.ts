/**
 * Maps parsed records to staging rows: header names -> pipeline columns (an allowlist:
 * header text never reaches SQL), then per row the key and every column is validated and
 * normalized, and the row is appended to the COPY buffer or becomes a reject.
 */
import { InvalidFileError } from '../core/errors.ts';
import type { Pipeline, SourceColumn, CellResult } from './pipeline.ts';
import { copyArray, copyData } from '../load/copy-text.ts';
import type { RejectCollector } from '../load/rejects.ts';
import type { ParsedBatch } from '../formats/csv-parser.ts';
import { nfc } from '../validate/sanitize.ts';
import { setMembers } from '../validate/set-members.ts';
import { KeyFilter } from './key-filter.ts';

/** Header text compared case-, accent- and spacing-insensitively. */
export function normalizeHeader(h: string): string {
  return h
    .normalize('NFD')
    .replace(/[\u0300-\u036f]/g, '')
    .trim()
    .replace(/\s+/g, ' ')
    .toLowerCase();
}

function matches(header: string, patterns: Array<string | RegExp>): boolean {
  const norm = normalizeHeader(header);
  return patterns.some((p) => (typeof p === 'string' ? normalizeHeader(p) === norm : p.test(header.trim())));
}

export interface ColumnMapping {
  keyIndexes: number[];
  /** For each pipeline column (same order as pipeline.columns), the header indexes feeding it. */
  columnIndexes: number[][];
  ignored: string[];
  headerLength: number;
}

/**
 * Maps a header row to the pipeline's columns; throws InvalidFileError on unusable headers:
 * no key column, or two columns of the same name that the pipeline reads (which one would
 * it be?). Same-named columns it ignores are fine.
 */
export function mapHeader(pipeline: Pipeline, header: string[]): ColumnMapping {
  const keyIndexes: number[] = [];
  const columnIndexes: number[][] = pipeline.columns.map(() => []);
  const ignored: string[] = [];
  const indexesOf = (pick: (col: SourceColumn) => boolean) =>
    pipeline.columns.flatMap((col, c) => (pick(col) ? [c] : []));
  header.forEach((h, i) => {
    if (normalizeHeader(h) === '') return;
    // A column's own names win over the key pattern: `Disponível para email` ends in
    // "email" but is the mailing flag, not a key. Several columns may read one header.
    const named = indexesOf((col) => matches(h, col.headers.filter((x) => typeof x === 'string')));
    const cols = named.length > 0 ? named : matches(h, pipeline.key.headers) ? [] : indexesOf((col) => matches(h, col.headers));
    if (named.length === 0 && matches(h, pipeline.key.headers)) keyIndexes.push(i);
    else if (cols.length > 0) for (const c of cols) columnIndexes[c]!.push(i);
    else ignored.push(h.trim());
  });
  const seen = new Map<string, number>();
  for (const i of [...new Set([...keyIndexes, ...columnIndexes.flat()])].sort((a, b) => a - b)) {
    const n = normalizeHeader(header[i]!);
    const prev = seen.get(n);
    if (prev !== undefined) {
      throw new InvalidFileError(`invalid file: duplicate header name ${JSON.stringify(header[i]!.trim())} (columns ${prev + 1} and ${i + 1})`);
    }
    seen.set(n, i);
  }
  if (keyIndexes.length === 0) throw new InvalidFileError(pipeline.key.missingMessage);
  const missing = pipeline.columns.filter((col, c) => col.required && col.input !== 'key' && columnIndexes[c]!.length === 0);
  if (missing.length > 0) {
    // One name per missing header (two columns may read one header, e.g. a store and its validity).
    const names = [...new Set(missing.map((col) => JSON.stringify(col.headers.find((h) => typeof h === 'string') ?? col.name)))];
    throw new InvalidFileError(`invalid file: no column ${names.join(', ')}, which the ${pipeline.name} pipeline requires`);
  }
  pipeline.columns.forEach((col, c) => {
    if (col.input === 'key') columnIndexes[c] = [...keyIndexes];
  });
  return { keyIndexes, columnIndexes, ignored, headerLength: header.length };
}

/**
 * The trimmed cell `fields[i]` in Unicode NFC, undefined when it is missing or blank. Every
 * cell is composed before it is parsed or stored: a macOS export writes `São` decomposed
 * (`a` + U+0303), which compares unequal to the same word typed elsewhere, so a tag, a name
 * or a key would be a different value (and a re-import an update) by its byte form alone.
 */
function cell(fields: string[], i: number): string | undefined {
  const v = fields[i];
  if (v === undefined) return undefined;
  const t = v.trim();
  return t === '' ? undefined : nfc(t);
}

/** The first non-blank of `fields[indexes]`, trimmed. */
function firstNonBlank(fields: string[], indexes: number[]): string | undefined {
  for (const i of indexes) {
    const t = cell(fields, i);
    if (t !== undefined) return t;
  }
  return undefined;
}

function isError(r: CellResult): r is { error: string } {
  return r !== null && typeof r === 'object';
}

const MAX_SUSPECTS = 50_000;

/** Why a row with a NUL character in a stored text value is rejected (see copy-text.ts). */
const NUL_REASON = 'contains a NUL character (byte 0), which Postgres cannot store';

/** How one pipeline column is read, decided once per header (the per-row loop only follows it). */
interface ColumnPlan {
  /** The single header index feeding the column, or -1 when several do (firstNonBlank). */
  index: number;
  indexes: number[];
  name: string;
  parse: ((value: string) => CellResult) | undefined;
  /** An invalid value rejects the row (else only the field). */
  rejectsRow: boolean;
  /** Text values need COPY escaping; other types are written as the parser returned them. */
  text: boolean;
  /** Feeds an add-to-set field: its value is a comma-separated list of members (setMembers). */
  set: boolean;
}


/** The raw text of the current record, produced only when a reject needs it. */
export interface RawText {
  text(): string;
}

/** Validates and normalizes rows into COPY text for the staging table. */
export class RowMapper {
  private readonly pipeline: Pipeline;
  private readonly mapping: ColumnMapping;
  private readonly rejects: RejectCollector;
  /** Data rows seen / accepted / rejected (field-level rejects do not count as rejected rows). */
  read = 0;
  accepted = 0;
  rejected = 0;
  hasKeyCandidates = false;
  /**
   * Duplicate-key detection without holding the keys (KeyFilter). A key it may have met is
   * listed; the merge checks only those. Past MAX_SUSPECTS the list is dropped (the merge
   * then checks every key); the filter stays.
   */
  private readonly seen: KeyFilter | undefined;
  private suspects: Set<string> | undefined;
  private readonly plan: ColumnPlan[];
  /** The only key column's index, or -1 when there are several. */
  private readonly keyIndex: number;
  /** `\t<part>\t`, the same on every staging line of this mapper. */
  private readonly partField: string;

  /** `trackKeys: false`: no duplicate-key filter (a caller that detects duplicates itself). */
  constructor(pipeline: Pipeline, mapping: ColumnMapping, part: number, rejects: RejectCollector, options: { trackKeys?: boolean } = {}) {
    this.pipeline = pipeline;
    this.mapping = mapping;
    this.rejects = rejects;
    const sets = new Set([...pipeline.target.fields, ...(pipeline.target.child?.fields ?? [])].filter((f) => f.merge === 'add-to-set').map((f) => f.from));
    this.plan = pipeline.columns.map((col, c) => {
      const indexes = mapping.columnIndexes[c]!;
      return {
        index: indexes.length === 1 ? indexes[0]! : -1, indexes, name: col.name, parse: col.parse,
        rejectsRow: (col.onInvalid ?? 'row') === 'row', text: col.type === 'text', set: sets.has(col.name),
      };
    });
    this.keyIndex = mapping.keyIndexes.length === 1 ? mapping.keyIndexes[0]! : -1;
    this.partField = `\t${part}\t`;
    if (options.trackKeys ?? true) {
      this.seen = new KeyFilter();
      this.suspects = new Set();
    }
  }

  /**
   * Appends the staging line for one record to `out`, or records a reject. With `later`,
   * a row whose key may have been met before goes there instead (a pipelined import merges
   * those last, see import-runner.ts).
   */
  map(fields: string[], line: number, raw: RawText, out: string[], later?: string[]): void {
    this.read++;
    const m = this.mapping;
    if (this.pipeline.strictFieldCount && fields.length !== m.headerLength) {
      this.reject(line, `expected ${m.headerLength} fields, found ${fields.length}`, raw);
      return;
    }
    if (fields.length > m.headerLength) {
      for (let i = m.headerLength; i < fields.length; i++) {
        if (fields[i]!.trim() !== '') {
          this.reject(line, `row has ${fields.length} fields, the header has ${m.headerLength}`, raw);
          return;
        }
      }
    }
    // One key column (the usual case): its value, or the reason the row is rejected.
    const key = this.keyIndex >= 0 ? this.singleKey(fields) : this.key(fields);
    if (typeof key === 'object' && !Array.isArray(key)) {
      this.reject(line, key.error, raw);
      return;
    }
    const first = typeof key === 'string' ? key : key[0]!;
    const firstText = copyData(first);
    if (firstText === undefined) return this.reject(line, NUL_REASON, raw);
    let text = line + this.partField + firstText;
    const plan = this.plan;
    let fieldIssues: Array<{ field: string; reason: string }> | undefined;
    for (let c = 0; c < plan.length; c++) {
      const col = plan[c]!;
      const v = col.index >= 0 ? cell(fields, col.index) : firstNonBlank(fields, col.indexes);
      let value: CellResult = v === undefined ? null : col.parse ? col.parse(v) : v;
      if (isError(value)) {
        if (col.rejectsRow) {
          this.reject(line, `${col.name}: ${value.error}`, raw);
          return;
        }
        (fieldIssues ??= []).push({ field: col.name, reason: value.error });
        value = null;
      }
      if (col.set && typeof value === 'string') value = setMembers(value);
      if (col.text && typeof value === 'string') {
        const copied = copyData(value);
        if (copied === undefined) return this.reject(line, `${col.name}: ${NUL_REASON}`, raw);
        text += `\t${copied}`;
      } else text += value === null ? '\t\\N' : value === true ? '\tt' : value === false ? '\tf' : `\t${value}`;
    }
    if (typeof key === 'string' || key.length === 1) text += '\t\\N';
    else {
      text += `\t${copyArray(key)}`;
      this.hasKeyCandidates = true;
    }
    this.accepted++;
    if (this.noteKey(first) && later) later.push(text);
    else out.push(text);
    if (fieldIssues) for (const f of fieldIssues) this.rejects.add(line, f.field, f.reason, raw.text());
  }

  /** The key of a file with one key column: its parsed value, or why the row is rejected. */
  private singleKey(fields: string[]): string | { error: string } {
    const k = this.pipeline.key;
    const v = cell(fields, this.keyIndex);
    if (v === undefined) return { error: k.blankReason };
    const r = k.parse ? k.parse(v) : v;
    if (typeof r === 'string') return r;
    if (r !== null && typeof r === 'object') return { error: `${k.name}: ${r.error}` };
    return { error: k.blankReason };
  }

  /** Valid key candidates in header order, or the reason the row is rejected. */
  private key(fields: string[]): string[] | { error: string } {
    const k = this.pipeline.key;
    const candidates: string[] = [];
    let firstError: string | undefined;
    for (const i of this.mapping.keyIndexes) {
      const v = cell(fields, i);
      if (v === undefined) continue;
      const r = k.parse ? k.parse(v) : v;
      if (isError(r)) firstError ??= `${k.name}: ${r.error}`;
      else if (typeof r === 'string' && !candidates.includes(r)) candidates.push(r);
    }
    if (candidates.length > 0) return candidates;
    return { error: firstError ?? k.blankReason };
  }

  /**
   * Maps every record of a parser batch (records the parser itself rejected count as read
   * and rejected rows), appending staging lines to `out`. Shared by the CLI import and the
   * intake workers.
   */
  mapBatch(batch: ParsedBatch, out: string[], later?: string[]): void {
    for (const e of batch.errors) {
      this.read++;
      this.rejected++;
      this.rejects.add(e.line, null, e.reason, e.raw);
    }
    // One reusable accessor per batch instead of a closure per row (less garbage).
    let current = 0;
    const raw = { text: () => batch.raw(current) };
    for (let i = 0; i < batch.rows.length; i++) {
      current = i;
      this.map(batch.rows[i]!, batch.lines[i]!, raw, out, later);
    }
  }

  /** Notes key `k`; true when it may have been met before. */
  private noteKey(k: string): boolean {
    if (!this.seen?.addKey(k)) return false;
    if (!this.suspects) return true;
    this.suspects.add(k);
    if (this.suspects.size > MAX_SUSPECTS) this.suspects = undefined;
    return true;
  }

  /** Keys that may occur on several rows, or undefined when unknown. */
  possibleDuplicates(): string[] | undefined {
    return this.suspects ? [...this.suspects] : undefined;
  }

  /**
   * How many keys have recurred so far (each counted once, in the order they recurred), or
   * undefined once they are too many to list (MAX_SUSPECTS). A mark for recurredSince.
   */
  recurredCount(): number | undefined {
    return this.suspects?.size;
  }

  /**
   * The keys that recurred after the first `mark` (a recurredCount), as staging lines hold
   * them (COPY text, copyData), or undefined once they are too many to list.
   */
  recurredSince(mark: number): Set<string> | undefined {
    if (!this.suspects) return undefined;
    const out = new Set<string>();
    let i = 0;
    // A Set iterates in insertion order, and keys are only ever added to it.
    // Never undefined: a key holding a NUL is rejected before it is noted.
    for (const k of this.suspects) if (i++ >= mark) out.add(copyData(k)!);
    return out;
  }

  private reject(line: number, reason: string, raw: RawText): void {
    this.rejected++;
    this.rejects.add(line, null, reason, raw.text());
  }
}
