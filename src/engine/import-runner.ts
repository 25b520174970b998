/**
 * Runs one file through a pipeline: detect -> parse -> validate/normalize -> COPY into an
 * unlogged staging table -> set-based merge in one transaction. Parsing in Node and COPY
 * in Postgres overlap (the COPY stream applies backpressure). Bad input fails the import
 * with a clear error and leaves the target tables untouched; rejects are kept for review.
 */
import type { Writable } from 'node:stream';
import { finished } from 'node:stream/promises';
import path from 'node:path';
import { from as copyFrom } from 'pg-copy-streams';
import { InvalidFileError, InvalidInputError, errorMessage } from '../core/errors.ts';
import type { Client, Pool } from '../db/pool.ts';
import { createImport, finishImport, type ImportOutcome } from '../db/sql/imports.ts';
import type { ParsedBatch } from '../formats/csv-parser.ts';
import { detectFile, readRecords, type FileMeta } from '../formats/record-reader.ts';
import type { Encoding } from '../formats/sniff.ts';
import { importRows } from '../http/metrics.ts';
import { mergeStage } from '../load/merge.ts';
import { createStageSql, ident, stageColumns } from '../load/merge-sql.ts';
import { RejectSink } from '../load/rejects.ts';
import type { Pipeline } from './pipeline.ts';
import { mapHeader, RowMapper } from './row-mapper.ts';

export interface ImportProgress {
  bytes: number;
  totalBytes: number;
  rows: number;
  phase: 'parsing' | 'merging' | 'done';
}

export interface ImportOptions {
  pool: Pool;
  pipeline: Pipeline;
  file: string;
  /** Name recorded for the import (default: the file's base name). */
  fileName?: string;
  source?: string;
  /** Fail (and merge nothing) when rejected rows / rows read exceeds this. Default 1 (never). */
  maxRejectRatio?: number;
  encoding?: Encoding;
  delimiter?: string;
  onProgress?: (p: ImportProgress) => void;
}

export interface ImportResult {
  id: string;
  pipeline: string;
  status: 'completed' | 'failed';
  rows: { read: number; inserted: number; updated: number; unchanged: number; rejected: number };
  duration_ms: number;
  error?: string;
  meta?: { encoding: string; delimiter: string | null; ignored_columns: string[] };
  timings: Record<string, number>;
}

export function stageTableName(importId: string): string {
  return `sluice_stage_${importId.replace(/-/g, '')}`;
}

/** Imports `file` with `pipeline`; never throws for bad input (the result says failed). */
export async function runImport(o: ImportOptions): Promise<ImportResult> {
  if (o.maxRejectRatio !== undefined && !(o.maxRejectRatio >= 0 && o.maxRejectRatio <= 1)) {
    throw new InvalidInputError(`--max-reject-ratio must be between 0 and 1, got ${o.maxRejectRatio}`);
  }
  const t0 = performance.now();
  const timings: Record<string, number> = {};
  const mark = (name: string, since: number) => (timings[name] = Math.round(performance.now() - since));
  let meta: FileMeta | undefined;
  let bytes: number | null = null;
  try {
    meta = detectFile(o.file, o.pipeline.format.kind, { encoding: o.encoding, delimiter: o.delimiter });
    bytes = meta.bytes;
  } catch (err) {
    if (!(err instanceof InvalidFileError) && (err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new InvalidInputError(`no such file: ${o.file}`);
    const id = await createImport(o.pool, {
      pipeline: o.pipeline.name, fileName: o.fileName ?? path.basename(o.file), fileBytes: null,
      source: o.source ?? 'cli', status: 'running',
    });
    return fail(o, id, t0, timings, errorMessage(err), { read: 0, rejected: 0 });
  }
  const id = await createImport(o.pool, {
    pipeline: o.pipeline.name, fileName: o.fileName ?? path.basename(o.file), fileBytes: bytes,
    source: o.source ?? 'cli', status: 'running', options: { maxRejectRatio: o.maxRejectRatio ?? 1 },
  });
  const rejects = new RejectSink(o.pool, id);
  const stage = stageTableName(id);
  const client = await o.pool.connect();
  let mapper: RowMapper | undefined;
  let ignored: string[] = [];
  try {
    let t = performance.now();
    await client.query(createStageSql(o.pipeline, stage));
    mapper = await stageFile(client, o, meta, stage, rejects, (m, ig) => {
      mapper = m;
      ignored = ig;
    });
    mark('parse_and_copy', t);
    await rejects.flush();
    if (mapper.read === 0) throw new InvalidFileError('invalid file: no data rows after the header');
    const ratio = mapper.rejected / mapper.read;
    const max = o.maxRejectRatio ?? 1;
    if (ratio > max) {
      throw new InvalidFileError(
        `rejected ${mapper.rejected} of ${mapper.read} rows (${(ratio * 100).toFixed(1)}%), above --max-reject-ratio ${max}: nothing was imported`,
      );
    }
    o.onProgress?.({ bytes: meta.bytes, totalBytes: meta.bytes, rows: mapper.read, phase: 'merging' });
    t = performance.now();
    const counts = await mergeStage(
      client,
      o.pipeline,
      stage,
      { rows: mapper.accepted, hasKeyCandidates: mapper.hasKeyCandidates, possibleDuplicates: mapper.possibleDuplicates() },
      timings,
    );
    mark('merge', t);
    timings.total = Math.round(performance.now() - t0);
    const outcome: ImportOutcome = { status: 'completed', read: mapper.read, rejected: mapper.rejected, ...counts, timings };
    await finishImport(o.pool, id, outcome);
    importRows.inc({ pipeline: o.pipeline.name, outcome: 'inserted' }, counts.inserted);
    importRows.inc({ pipeline: o.pipeline.name, outcome: 'updated' }, counts.updated);
    importRows.inc({ pipeline: o.pipeline.name, outcome: 'unchanged' }, counts.unchanged);
    importRows.inc({ pipeline: o.pipeline.name, outcome: 'rejected' }, mapper.rejected);
    o.onProgress?.({ bytes: meta.bytes, totalBytes: meta.bytes, rows: mapper.read, phase: 'done' });
    return {
      id,
      pipeline: o.pipeline.name,
      status: 'completed',
      rows: { read: mapper.read, inserted: counts.inserted, updated: counts.updated, unchanged: counts.unchanged, rejected: mapper.rejected },
      duration_ms: Math.round(performance.now() - t0),
      meta: { encoding: meta.encoding, delimiter: meta.delimiter, ignored_columns: ignored },
      timings,
    };
  } catch (err) {
    // Bad input and unexpected failures alike end the import as failed, with its reason;
    // the merge transaction (if it started) was rolled back, so nothing is half-written.
    await rejects.flush().catch(() => {});
    return fail(o, id, t0, timings, errorMessage(err), { read: mapper?.read ?? 0, rejected: mapper?.rejected ?? 0 });
  } finally {
    await client.query(`DROP TABLE IF EXISTS ${ident(stage)}`).catch(() => {});
    client.release();
  }
}

async function fail(
  o: ImportOptions,
  id: string,
  t0: number,
  timings: Record<string, number>,
  message: string,
  rows: { read: number; rejected: number },
): Promise<ImportResult> {
  timings.total = Math.round(performance.now() - t0);
  await finishImport(o.pool, id, { status: 'failed', error: message, read: rows.read, inserted: 0, updated: 0, unchanged: 0, rejected: rows.rejected, timings });
  return {
    id,
    pipeline: o.pipeline.name,
    status: 'failed',
    rows: { read: rows.read, inserted: 0, updated: 0, unchanged: 0, rejected: rows.rejected },
    duration_ms: Math.round(performance.now() - t0),
    error: message,
    timings,
  };
}

/** The batch without its first record (the header). */
function withoutFirstRow(b: ParsedBatch): ParsedBatch {
  return { rows: b.rows.slice(1), lines: b.lines.slice(1), raw: (i) => b.raw(i + 1), errors: b.errors };
}

/** Parses the file and COPYs accepted rows into `stage`; returns the mapper with counts. */
async function stageFile(
  client: Client,
  o: ImportOptions,
  meta: FileMeta,
  stage: string,
  rejects: RejectSink,
  onHeader: (m: RowMapper, ignored: string[]) => void,
): Promise<RowMapper> {
  const cols = ['line', 'part', ...stageColumns(o.pipeline).map((c) => c.name), 'key_candidates'].map(ident);
  const copy = client.query(copyFrom(`COPY ${ident(stage)} (${cols.join(', ')}) FROM STDIN`)) as Writable;
  let mapper: RowMapper | undefined;
  let rows = 0;
  let lastProgress = 0;
  let bytes = 0;
  try {
    for await (const batch of readRecords(o.file, meta, { format: meta.format, chunkBytes: 1 << 20 }, (p) => (bytes = p.bytes))) {
      const out: string[] = [];
      if (!mapper && batch.rows.length === 0) {
        // Records rejected by the parser before any header: kept as rejects.
        for (const e of batch.errors) rejects.add(e.line, null, e.reason, e.raw);
        continue;
      }
      if (!mapper) {
        // The first record is the header; the rest of the batch is data.
        const mapping = mapHeader(o.pipeline, batch.rows[0]!);
        mapper = new RowMapper(o.pipeline, mapping, 0, rejects);
        onHeader(mapper, mapping.ignored);
        mapper.mapBatch(withoutFirstRow(batch), out);
      } else {
        mapper.mapBatch(batch, out);
      }
      rows = mapper?.read ?? 0;
      if (out.length > 0 && !copy.write(`${out.join('\n')}\n`)) {
        await new Promise<void>((resolve, reject) => {
          copy.once('error', reject);
          copy.once('drain', () => {
            copy.off('error', reject);
            resolve();
          });
        });
      }
      const now = performance.now();
      if (o.onProgress && now - lastProgress > 200) {
        lastProgress = now;
        o.onProgress({ bytes, totalBytes: meta.bytes, rows, phase: 'parsing' });
      }
    }
    if (!mapper) throw new InvalidFileError('invalid file: no header row');
    copy.end();
    await finished(copy);
    return mapper;
  } catch (err) {
    copy.destroy(err as Error);
    await finished(copy).catch(() => {});
    throw err;
  }
}
