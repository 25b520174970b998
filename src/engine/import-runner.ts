/**
 * Runs one file through a pipeline: detect -> parse -> validate/normalize -> COPY into
 * staging -> set-based merge, all in one transaction. Pipelined: the file is merged in
 * chunks of CHUNK_ROWS rows, Postgres merging one chunk while Node parses the next (both
 * cores busy). A chunk holds the first row of each of its keys; a row whose key may have
 * been met before is kept for a last merge, so every key's rows still apply in file order,
 * and so is the first row of a key that recurred before its chunk was merged (all of that
 * key's rows are then folded together).
 * Bad input fails the import with a clear error and leaves the target tables untouched
 * (the transaction rolls back); rejects are kept for review.
 */
import type { Writable } from 'node:stream';
import { finished } from 'node:stream/promises';
import { randomUUID } from 'node:crypto';
import path from 'node:path';
import { from as copyFrom } from 'pg-copy-streams';
import { InvalidFileError, InvalidInputError, errorMessage } from '../core/errors.ts';
import { faultPause } from '../core/fault.ts';
import type { Client, Pool } from '../db/pool.ts';
import { createImport, failInterruptedImports, finishImport, lockImportOwner, unlockImportOwner, type ImportOutcome } from '../db/sql/imports.ts';
import type { ParsedBatch } from '../formats/csv-parser.ts';
import { detectFile, readRecords, type FileMeta } from '../formats/record-reader.ts';
import type { Encoding } from '../formats/sniff.ts';
import { MergeSession, type MergeCounts } from '../load/merge.ts';
import { PreparedChunks } from '../load/prepared-chunk.ts';
import { createStageSql, ident, stageCopySql } from '../load/merge-sql.ts';
import { env, intEnv } from '../config.ts';
import { RejectSink } from '../load/rejects.ts';
import { dropStaging, stageTableName } from '../load/staging.ts';
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

/** Imports `file` with `pipeline`; never throws for bad input (the result says failed). */
export async function runImport(o: ImportOptions): Promise<ImportResult> {
  if (o.maxRejectRatio !== undefined && !(o.maxRejectRatio >= 0 && o.maxRejectRatio <= 1)) {
    throw new InvalidInputError(`--max-reject-ratio must be between 0 and 1, got ${o.maxRejectRatio}`);
  }
  const t0 = performance.now();
  const timings: Record<string, number> = {};
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
  const client = await o.pool.connect();
  // Imports killed before they finished are recorded as such and their staging dropped;
  // this one holds its owner lock from before its row exists until it has ended.
  const id = randomUUID();
  let locked = false;
  try {
    await failInterruptedImports(client, (dead) => dropStaging(client, dead));
    await lockImportOwner(client, id);
    locked = true;
    await createImport(o.pool, {
      id, pipeline: o.pipeline.name, fileName: o.fileName ?? path.basename(o.file), fileBytes: bytes,
      source: o.source ?? 'cli', status: 'running', options: { maxRejectRatio: o.maxRejectRatio ?? 1 },
    });
    return await stageMergeAndRecord(client, o, id, meta, t0, timings);
  } finally {
    await dropStaging(client, id).catch(() => {});
    // A connection that cannot unlock goes back to the pool broken (destroyed), not locked.
    const broken = locked ? await unlockImportOwner(client, id).then(() => undefined, (e: unknown) => e as Error) : undefined;
    client.release(broken);
  }
}

/** The import once its row exists: staged and merged, its outcome recorded either way. */
async function stageMergeAndRecord(
  client: Client,
  o: ImportOptions,
  id: string,
  meta: FileMeta,
  t0: number,
  timings: Record<string, number>,
): Promise<ImportResult> {
  const mark = (name: string, since: number) => (timings[name] = Math.round(performance.now() - since));
  const rejects = new RejectSink(o.pool, id);
  const stage = stageTableName(id);
  let mapper: RowMapper | undefined;
  let ignored: string[] = [];
  try {
    const t = performance.now();
    await client.query(createStageSql(o.pipeline, stage));
    const staged = await stageAndMerge(client, o, meta, stage, rejects, timings, (m, ig) => {
      mapper = m;
      ignored = ig;
    });
    mapper = staged.mapper;
    const counts = staged.counts;
    mark('parse_and_merge', t);
    // merge: the part of the merge after the last row was parsed (the rest overlapped it).
    timings.merge = timings.parse_and_merge! - (timings.parse ?? 0);
    timings.total = Math.round(performance.now() - t0);
    const outcome: ImportOutcome = { status: 'completed', read: mapper.read, rejected: mapper.rejected, ...counts, timings };
    await finishImport(o.pool, id, outcome);
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
export function withoutFirstRow(b: ParsedBatch): ParsedBatch {
  return { rows: b.rows.slice(1), lines: b.lines.slice(1), raw: (i) => b.raw(i + 1), errors: b.errors };
}

/**
 * Bytes parsed between two turns of the event loop: small, so that the statements of the
 * chunk being merged are sent as soon as the previous one returns (Postgres idles while
 * Node is in a batch).
 */
const BATCH_BYTES = 128 << 10;

/**
 * Rows per merged chunk: SLUICE_CHUNK_ROWS when set (every chunk that size), else adaptive
 * (chunkTarget) up to CHUNK_ROWS. Big enough for set-based statements to pay off.
 */
const CHUNK_ROWS = 25_000;
/** The first chunk of an adaptive import: the merge starts once it is parsed. */
const FIRST_CHUNK_ROWS = 5_000;
/** The smallest adaptive chunk. */
const MIN_CHUNK_ROWS = 2_500;

/** SLUICE_CHUNK_ROWS (checked by its rule in src/config.ts SETTINGS), or adaptive. */
function chunkRows(): { size: number; fixed: boolean } {
  const fixed = env('SLUICE_CHUNK_ROWS') !== undefined;
  return { size: intEnv('SLUICE_CHUNK_ROWS', CHUNK_ROWS), fixed };
}

/**
 * The size of the next chunk of an adaptive import. Its merge runs in two stages on two
 * connections behind the parse (prepare, then write), so the first and last chunks are
 * merged while the other core has little to do: the first is small, and near the end of
 * the file each chunk takes half of the rows estimated to be left (from the bytes read so
 * far), so that the last one to be merged is small too.
 */
export function chunkTarget(chunks: number, rowsRead: number, bytesRead: number, totalBytes: number): number {
  if (chunks === 0) return FIRST_CHUNK_ROWS;
  if (bytesRead <= 0 || rowsRead <= 0) return CHUNK_ROWS;
  const left = ((totalBytes - bytesRead) / bytesRead) * rowsRead;
  return Math.max(MIN_CHUNK_ROWS, Math.min(CHUNK_ROWS, Math.ceil(left / 2)));
}

/**
 * Staging lines waiting for their COPY, as Buffers: strings kept across many batches would
 * be promoted to V8's old generation and grow the heap; Buffers live outside it.
 */
class Lines {
  pieces: Buffer[] = [];
  rows = 0;
  /**
   * Of a chunk: the mapper's recurredCount before it mapped the batch of the chunk's first
   * row. A key that recurred since may have its first row here; one that recurred before
   * cannot (its first row was mapped earlier, and later rows of a key never join a chunk).
   */
  mark = 0;

  add(lines: string[], from = 0, to = lines.length): void {
    if (to <= from) return;
    this.pieces.push(Buffer.from(`${lines.slice(from, to).join('\n')}\n`));
    this.rows += to - from;
  }

  /**
   * Moves to `to` the lines whose key is in `keys` (COPY text, as staged). A staging line is
   * `line\tpart\tkey\t...\n`, and COPY text escapes tabs and newlines inside values, so the
   * key lies between the second and third tab byte (UTF-8 never uses those bytes inside a
   * character). Pieces are cut, not decoded: only the keys are read as strings.
   */
  moveKeys(keys: Set<string>, to: Lines): void {
    const pieces: Buffer[] = [];
    const moved: Buffer[] = [];
    for (const piece of this.pieces) {
      const kept: Buffer[] = [];
      let keptFrom = 0;
      for (let start = 0; start < piece.length; ) {
        const end = piece.indexOf(0x0a, start) + 1;
        const key = piece.indexOf(0x09, piece.indexOf(0x09, start) + 1) + 1;
        if (keys.has(piece.toString('utf8', key, piece.indexOf(0x09, key)))) {
          if (start > keptFrom) kept.push(piece.subarray(keptFrom, start));
          moved.push(piece.subarray(start, end));
          keptFrom = end;
          this.rows--;
          to.rows++;
        }
        start = end;
      }
      if (keptFrom === 0) {
        pieces.push(piece);
        continue;
      }
      if (keptFrom < piece.length) kept.push(piece.subarray(keptFrom));
      // Copied out: a subarray would keep the whole piece alive.
      if (kept.length > 0) pieces.push(Buffer.concat(kept));
    }
    this.pieces = pieces;
    if (moved.length > 0) to.pieces.push(Buffer.concat(moved));
  }
}

/** COPYs staging lines into `table`. */
async function copyLines(client: Client, pipeline: Pipeline, table: string, lines: Lines): Promise<void> {
  const copy = client.query(copyFrom(stageCopySql(pipeline, table))) as Writable;
  const done = finished(copy);
  // A connection lost mid-COPY fails `done`, and no 'drain' follows: wait for either.
  done.catch(() => {});
  for (const piece of lines.pieces) {
    if (!copy.write(piece)) await Promise.race([new Promise<void>((r) => copy.once('drain', r)), done]);
  }
  copy.end();
  await done;
}

/**
 * Parses the file and merges it in one transaction: chunks of first-met keys while the
 * parse goes on, then the rows of keys met before (in `stage`). Returns the mapper (row
 * counts) and the merge counts; throws, after rolling back, on bad input.
 */
async function stageAndMerge(
  client: Client,
  o: ImportOptions,
  meta: FileMeta,
  stage: string,
  rejects: RejectSink,
  timings: Record<string, number>,
  onHeader: (m: RowMapper, ignored: string[]) => void,
): Promise<{ mapper: RowMapper; counts: MergeCounts }> {
  const { size, fixed } = chunkRows();
  let chunks = 0;
  const session = new MergeSession(client, o.pipeline, timings, true);
  // The chunk being merged: on the preparing connection a temporary table of its session
  // (local buffers, no shared buffer locking; a 25,000-row chunk fits in the default 8 MB
  // of temp_buffers), dropped with it; merged here whole, an unlogged table like the stage.
  const CHUNK = `${stage}_chunk`;
  const TEMP_CHUNK = 'sluice_chunk';
  let mapper: RowMapper | undefined;
  let chunk = new Lines();
  let later = new Lines();
  let laterRows = 0;
  let lastProgress = 0;
  let bytes = 0;
  // Several key columns: a row's key is resolved against existing records, so every row
  // waits for the last merge (no chunks).
  let allLater = false;
  // Chunks are prepared on a second connection and written on this one (src/load/
  // prepared-chunk.ts); without an id sequence on the target (null), merged here whole
  // (`merging`: the last chunk's merge).
  let chunked: PreparedChunks | undefined | null;
  let merging: Promise<unknown> | undefined;
  const timed = async <T>(name: string, f: () => Promise<T>): Promise<T> => {
    const t0 = performance.now();
    try {
      return await f();
    } finally {
      timings[name] = Math.round((timings[name] ?? 0) + performance.now() - t0);
    }
  };
  /** Waits for every chunk being prepared or merged; this connection is then free. */
  const settle = async () => {
    await timed('wait_for_merge', async () => {
      await merging;
      await chunked?.settle();
    });
  };
  const flushLater = async () => {
    if (later.rows === 0) return;
    await settle();
    laterRows += later.rows;
    const lines = later;
    later = new Lines();
    await timed('copy', () => copyLines(client, o.pipeline, stage, lines));
  };
  const openChunks = async (): Promise<PreparedChunks | null> => {
    // Assigned before the table is created: whoever ends the import closes it.
    const c = (chunked = await PreparedChunks.open(o.pool, client, session, o.pipeline, timings));
    await (c ? c.db : client).query(createStageSql(o.pipeline, c ? TEMP_CHUNK : CHUNK, c !== null));
    return c;
  };
  /**
   * Moves out of the chunk, to the last merge, the rows of its keys that recurred before
   * its merge: their later rows wait there already, so every row of such a key is folded
   * together (a file imported twice is then all unchanged, as the intake does within a
   * part). A key that recurs only after its chunk was merged stays split (README). The
   * chunk is scanned only when some key recurred since its first batch was mapped; past
   * MAX_SUSPECTS recurring keys (row-mapper.ts) they are no longer listed, and stay split.
   */
  const takeRecurred = () => {
    const now = mapper!.recurredCount();
    if (chunk.rows === 0 || now === undefined || now <= chunk.mark) return;
    chunk.moveKeys(mapper!.recurredSince(chunk.mark)!, later);
  };
  /** Starts the merge of the chunk; with `wait`, waits for it. */
  const flushChunk = async (wait: boolean) => {
    takeRecurred();
    if (chunk.rows === 0) {
      // The last chunk may have filled up, and started merging, with the file's last row.
      if (wait) await settle();
      return;
    }
    const prepared = chunked === undefined ? await openChunks() : chunked;
    // A count, not milliseconds: how many chunks the file was merged in.
    timings.chunks = ++chunks;
    const lines = chunk;
    chunk = new Lines();
    if (prepared === null) {
      await settle();
      await timed('copy', async () => {
        await client.query(`TRUNCATE ${ident(CHUNK)}`);
        await copyLines(client, o.pipeline, CHUNK, lines);
      });
      // Each key occurs once in a chunk: no duplicates to fold.
      merging = session.mergeChunk(CHUNK, lines.rows);
      // An unobserved rejection would crash the process before settle() sees it.
      merging.catch(() => {});
    } else {
      await prepared.add(
        `${stage}_m${prepared.chunks.length}`,
        async (db) => {
          await timed('copy', async () => {
            await db.query(`TRUNCATE ${ident(TEMP_CHUNK)}`);
            await copyLines(db, o.pipeline, TEMP_CHUNK, lines);
          });
          return { source: TEMP_CHUNK };
        },
        // Fault injection (test/leads/crash.test.ts): a chunk prepared, not yet written.
        () => faultPause('SLUICE_FAULT_PAUSE_APPLY_FILE'),
      );
    }
    if (wait) await settle();
  };

  const t0 = performance.now();
  await session.begin();
  try {
    for await (const batch of readRecords(o.file, meta, { format: meta.format, chunkBytes: BATCH_BYTES }, (p) => (bytes = p.bytes))) {
      if (!mapper && batch.rows.length === 0) {
        // Records rejected by the parser before any header: kept as rejects.
        for (const e of batch.errors) rejects.add(e.line, null, e.reason, e.raw);
        continue;
      }
      const out: string[] = [];
      const outLater: string[] = [];
      // Keys recurring from here on may have their first row in this batch (Lines.mark).
      const mark = mapper?.recurredCount() ?? 0;
      if (!mapper) {
        // The first record is the header; the rest of the batch is data.
        const mapping = mapHeader(o.pipeline, batch.rows[0]!);
        mapper = new RowMapper(o.pipeline, mapping, 0, rejects);
        allLater = mapping.keyIndexes.length > 1;
        onHeader(mapper, mapping.ignored);
        mapper.mapBatch(withoutFirstRow(batch), allLater ? outLater : out, outLater);
      } else {
        mapper.mapBatch(batch, allLater ? outLater : out, outLater);
      }
      const limit = fixed ? size : chunkTarget(chunks, mapper.read, bytes, meta.bytes);
      for (let i = 0; i < out.length; ) {
        const n = Math.max(0, Math.min(limit - chunk.rows, out.length - i));
        if (chunk.rows === 0 && n > 0) chunk.mark = mark;
        chunk.add(out, i, i + n);
        i += n;
        if (chunk.rows >= limit) await flushChunk(false);
      }
      later.add(outLater);
      if (later.rows >= size) await flushLater();
      const now = performance.now();
      if (o.onProgress && now - lastProgress > 200) {
        lastProgress = now;
        o.onProgress({ bytes, totalBytes: meta.bytes, rows: mapper?.read ?? 0, phase: 'parsing' });
      }
    }
    if (!mapper) throw new InvalidFileError('invalid file: no header row');
    timings.parse = Math.round(performance.now() - t0);
    // Nothing is committed before the whole file is read and checked.
    await flushChunk(true);
    await flushLater();
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
    if (laterRows > 0) {
      if (chunked) await session.rememberPrepared(chunked.chunks, stage);
      await session.mergeStaged(stage, { rows: laterRows, hasKeyCandidates: mapper.hasKeyCandidates }, true);
    }
    // Every merge has returned: a COMMIT queued behind a chunk's first round trip would end
    // the transaction before its second (the child table and counts) ran.
    await settle();
    await session.commit();
    return { mapper, counts: session.total };
  } catch (err) {
    await merging?.catch(() => {});
    await chunked?.close();
    await session.rollback();
    throw err;
  } finally {
    // The chunk tables go with the import's other staging tables (runImport's dropStaging).
    await chunked?.close();
  }
}
