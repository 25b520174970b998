/**
 * Accepting an upload: the body streams through the record splitter into parts stored in
 * Postgres (never the whole file in memory: at most one part), each part enqueued as a
 * job in the same transaction as its row, so workers start on part 0 while the rest of
 * the file is still arriving; the merge job goes with part 0 and merges the parts as they
 * are staged (merge-job.ts). Bad files (empty, binary, unusable header, too big) fail the
 * upload with a clear error and leave nothing behind, as does a record that never ends
 * (splitter.ts bounds the memory an upload can take).
 *
 * An upload holds one database connection from its start to its end, and never asks for a
 * second (owned()); a process takes at most maxUploads() at once, the others get 503 with
 * Retry-After before their body is read; a body that sends nothing for
 * UPLOAD_IDLE_TIMEOUT_MS is cut. So uploads, however many and however slow, cannot take the
 * pool from the workers, the merges and the other requests.
 */
import { randomUUID } from 'node:crypto';
import type { Readable } from 'node:stream';
import { errorMessage, InvalidFileError, InvalidInputError, SluiceError } from '../core/errors.ts';
import { intEnv } from '../config.ts';
import { transactionOn, type Client, type Pool } from '../db/pool.ts';
import { createImport, lockImportOwner, unlockImportOwner } from '../db/sql/imports.ts';
import { cancelImportRow, endedStatus, insertPart, setImportFormat, setMergeEnqueued, setPartsTotal } from '../db/sql/intake.ts';
import { mapHeader } from '../engine/row-mapper.ts';
import { DETECT_SAMPLE_BYTES, delimiterName, delimiterProblem, detectSample, type EncodingWording, type FileMeta, type FormatKind } from '../formats/record-reader.ts';
import type { Delimiter, Encoding } from '../formats/sniff.ts';
import { inTransaction, MERGE_QUEUE, PART_QUEUE, sendJob } from '../jobs/boss.ts';
import { createStageSql } from '../load/merge-sql.ts';
import { getPipeline } from '../pipelines/index.ts';
import type { Pipeline } from '../engine/pipeline.ts';
import type { IntakeContext } from './context.ts';
import { parserFor } from './part-job.ts';
import { intakeConnections, serveWorkers } from './service.ts';
import { lineTerminator, RecordSplitter, type Part } from './splitter.ts';
import { discardStaged, dropStaging, stageTableName } from './staging.ts';
import { logImportReceived } from './status.ts';

export interface AcceptOptions {
  /** Upload limit in bytes (default SLUICE_MAX_UPLOAD_BYTES or 2 GiB). */
  maxBytes?: number;
  /** Records per part at most (default SLUICE_PART_ROWS or 10,000). */
  partRows?: number;
  /** The upload's size when known in advance (Content-Length): small files get smaller parts. */
  expectedBytes?: number | undefined;
  /** How long the body may send nothing before the upload is cut (default UPLOAD_IDLE_TIMEOUT_MS; tests use less). */
  idleTimeoutMs?: number | undefined;
  /**
   * Aborted when nobody waits for the answer any more (`POST /imports {"url"}` whose client
   * hung up). Whoever aborts it also ends the body (the fetch it stops); the upload checks it
   * once the body has ended, before the end is recorded: a file read whole just as its
   * client left is not accepted for nobody.
   */
  signal?: AbortSignal | undefined;
  /**
   * Called right before the body's first byte is read, once the upload has its slot, its
   * import and its staging: a raw upload's `100 Continue` (src/http/continue.ts).
   */
  beforeRead?: (() => void) | undefined;
  /** Write the operator's line of an upload stored whole (logImportReceived; `sluice serve`). */
  logReceived?: boolean | undefined;
}

/**
 * An upload whose body sends no byte for this long is cut: it fails as one whose client hung
 * up (nothing of it stays) and its connection goes back to the pool. Without it a client that
 * stalls mid-file held its upload's database connection for ever (the server's sockets have
 * no timeout: a big file may take as long as it needs, byte after byte). Only the time spent
 * waiting for the body counts, never the time the server takes to store a part. 60 s: far
 * longer than any pause of a working client or network, short enough that stalled clients
 * cannot keep the uploads' share of the pool (maxUploads) busy for long.
 */
export const UPLOAD_IDLE_TIMEOUT_MS = 60_000;

/**
 * Connections of `serve`'s pool kept for everything but uploads and the intake's workers:
 * short requests (/healthz, GET /imports, the dashboard), the reaper's connection, and
 * the event and CRM syncs (a CRM sync holds its lock's connection while it writes).
 */
const OTHER_CONNECTIONS = 4;

/**
 * Uploads a process receives at once; more are refused (503 and Retry-After) before a byte
 * of their body is read. Each upload holds one pool connection from its start to its end
 * (its owner lock, and every statement of the upload on it), so without a cap enough slow
 * uploads took every connection, and the workers, merges and every other request waited
 * for ever. The cap leaves the intake what it needs to make progress (intakeConnections:
 * SLUICE_WORKERS + 3, none without workers, src/intake/service.ts) and OTHER_CONNECTIONS
 * for the rest:
 *
 *   maxUploads = SLUICE_DB_POOL - intakeConnections(SLUICE_WORKERS) - 4
 *
 * (11 with the defaults, 20 connections and 2 workers; 16 with SLUICE_WORKERS=0). `serve`
 * refuses a smaller pool than servePoolMinimum, so it is at least 1 there; a smaller pool
 * (tests) still takes one upload at a time. `pool` is the uploads' own: `serve` has one,
 * whose size (`options.max`) is SLUICE_DB_POOL.
 */
export function maxUploads(pool: Pool): number {
  const size = pool.options.max ?? 10; // pg's default
  return Math.max(1, size - intakeConnections(serveWorkers()) - OTHER_CONNECTIONS);
}

/** The smallest pool `serve` runs with: the intake's connections, the others', one upload. */
export function servePoolMinimum(workers: number): number {
  return intakeConnections(workers) + OTHER_CONNECTIONS + 1;
}

/** What a refused upload is told to wait before it tries again (Retry-After, in seconds). */
const UPLOAD_RETRY_AFTER_SECONDS = 5;

/**
 * An upload taken: its import, and (`received`, when it was stored whole) its parts and
 * bytes; an upload a worker failed while it arrived is answered with the id alone.
 */
export interface Accepted {
  id: string;
  received?: { parts: number; bytes: number };
}

/** Uploads in progress, by pool (one pool per process in `serve`). */
const uploading = new WeakMap<Pool, number>();

/** A 503 for an upload beyond maxUploads, with a Retry-After (src/http/errors.ts). */
export class UploadsBusyError extends SluiceError {
  constructor(cap: number) {
    super('unavailable', `${cap} upload${cap === 1 ? ' is' : 's are'} in progress on this server, the most it takes at once; retry shortly`, {
      retryAfter: UPLOAD_RETRY_AFTER_SECONDS,
    });
  }
}

/** Counts an upload in (UploadsBusyError beyond maxUploads); the returned function counts it out. */
function takeUploadSlot(pool: Pool): () => void {
  const cap = maxUploads(pool);
  const now = uploading.get(pool) ?? 0;
  if (now >= cap) throw new UploadsBusyError(cap);
  uploading.set(pool, now + 1);
  let done = false;
  return () => {
    if (done) return;
    done = true;
    uploading.set(pool, (uploading.get(pool) ?? 1) - 1);
  };
}

/**
 * A file of known size is cut into at least this many parts, so every worker gets some...
 * Not more: each part costs its own job, transaction, staging table and chunk merge. The
 * 49,998-row file in 5 parts of 10,000 rows (the maximum) against 8 of 6,250: 2.00 s
 * against 2.22 s, 2.29 against 2.62 CPU-seconds (medians of 5 alternated runs, 2 workers).
 */
const TARGET_PARTS = 4;
/** ...but no part is made smaller than this (below it, per-part overhead dominates). */
const MIN_PART_ROWS = 1000;

/** How the file is to be read when the client says so; what is not given is detected. */
export interface FileFormat {
  /** The file's encoding (default: detected from its first 64 KiB, UTF-8 else windows-1252). */
  encoding?: Encoding | undefined;
  /** The CSV delimiter (default: sniffed); refused for fixed-width pipelines. */
  delimiter?: Delimiter | undefined;
}

/**
 * Refuses (InvalidInputError) a format the pipeline cannot use: any delimiter for a
 * fixed-width pipeline (its columns are not delimited). Called before anything is stored
 * or fetched.
 */
export function checkFileFormat(pipeline: Pipeline, format: FileFormat): void {
  const problem = format.delimiter === undefined ? undefined : delimiterProblem(pipeline.name, pipeline.format.kind);
  if (problem) throw new InvalidInputError(`delimiter ${problem}`);
}

/** Bytes of part 0 read for the samples of a fixed-width header (hundreds of lines). */
const SAMPLE_BYTES = 64 * 1024;

/**
 * Records per part: `max`, or fewer for a file whose size is known, estimated from the
 * records of the first bytes (the sample), so that it makes about TARGET_PARTS parts.
 */
export function partRowsFor(max: number, expectedBytes: number | undefined, sample: Buffer, terminator = 0x0a): number {
  if (!expectedBytes || expectedBytes <= sample.length) return max;
  let lines = 0;
  for (let i = sample.indexOf(terminator); i >= 0; i = sample.indexOf(terminator, i + 1)) lines++;
  if (lines < 2) return max;
  const estimatedRows = expectedBytes / (sample.length / lines);
  return Math.min(max, Math.max(MIN_PART_ROWS, Math.ceil(estimatedRows / TARGET_PARTS)));
}

/** SLUICE_PART_ROWS (default 10,000; a whole number >= 100, src/config.ts SETTINGS). */
export function partRowsSetting(): number {
  return intEnv('SLUICE_PART_ROWS', 10_000);
}

export async function acceptUpload(
  ctx: IntakeContext,
  input: { pipeline: string; fileName: string | null; source: string; maxRejectRatio?: number } & FileFormat,
  body: Readable,
  options: AcceptOptions = {},
): Promise<Accepted> {
  const pipeline = getPipeline(input.pipeline);
  checkFileFormat(pipeline, input);
  const format: FileFormat = { encoding: input.encoding, delimiter: input.delimiter };
  const maxBytes = options.maxBytes ?? intEnv('SLUICE_MAX_UPLOAD_BYTES', 2 ** 31);
  const partRows = options.partRows ?? partRowsSetting();
  const { pool, boss } = ctx;
  if (!boss) throw new SluiceError('unavailable', 'the job queue is not running in this process');
  // Refused before a byte of the body is read or a connection taken (maxUploads).
  const release = takeUploadSlot(pool);
  const id = randomUUID();
  const t0 = performance.now();
  try {
    const accepted = await owned(pool, id, async (owner) => {
      await createImport(owner.client, {
        id, pipeline: pipeline.name, fileName: input.fileName, fileBytes: null, source: input.source, status: 'queued',
        options: { maxRejectRatio: input.maxRejectRatio ?? 1, partRows },
      });
      return await receive({ ...ctx, boss }, owner, { id, pipeline, partRows, maxBytes, format }, body, options);
    });
    if (options.logReceived && accepted.received) {
      logImportReceived({ id, pipeline: pipeline.name, fileName: input.fileName, ...accepted.received, ms: performance.now() - t0 });
    }
    return accepted;
  } catch (err) {
    if (!(err instanceof UploadEnded)) throw err;
    // Ended while its file arrived: cancelled by a user (POST /imports/<id>/cancel), or
    // failed by a worker on an earlier part. The import stays as it ended, for them to see;
    // no more of the file was read, and what its parts staged goes (again: a part stored
    // while the end committed came after the ender's own drop). Once the upload's connection
    // is back in the pool: discardStaged takes connections of its own, and an upload never
    // waits for one while it holds another.
    await discardStaged(pool, id).catch(() => {});
    if (err.status === 'cancelled') {
      throw new SluiceError('conflict', `import ${id} was cancelled while its file was being uploaded: the rest of the file was not read`);
    }
    // Failed: accepted as before, its status tells why (GET /imports/<id>).
    return { id };
  } finally {
    release();
  }
}

/** An upload's one connection, and whether it is still fit to go back to the pool. */
interface Owner {
  client: Client;
  /** Set when the connection may be left in a transaction (a ROLLBACK failed): destroyed, never reused. */
  broken?: Error;
}

/**
 * Runs `work` on one connection holding the import's owner lock, from before the import
 * exists until the upload ends: a merge waiting for parts that will never come (this process
 * killed mid-upload) sees the lock free and fails the import instead of waiting forever with
 * the target locked; a starting server fails the ones that had no part yet (service.ts).
 * Every statement of the upload runs on this connection (the lock is a session lock: the
 * parts' transactions on it leave it held), so an upload holds exactly one connection and
 * never waits for a second one: uploads holding every connection of the pool, each waiting
 * for one more, was a deadlock of the whole server.
 */
async function owned<T>(pool: Pool, id: string, work: (owner: Owner) => Promise<T>): Promise<T> {
  const owner: Owner = { client: await pool.connect() };
  try {
    await lockImportOwner(owner.client, id);
    return await work(owner);
  } finally {
    // A connection that cannot unlock (or may be inside a transaction) is not handed back to
    // the pool holding the lock: destroyed, its session (and so the lock) ends with it.
    if (owner.broken) owner.client.release(owner.broken);
    else await unlockImportOwner(owner.client, id).then(() => owner.client.release(), (err: Error) => owner.client.release(err));
  }
}

/** Stores the upload's parts (see acceptUpload); the import exists and `owner` holds its lock. */
async function receive(
  ctx: IntakeContext & { boss: NonNullable<IntakeContext['boss']> },
  owner: Owner,
  o: { id: string; pipeline: Pipeline; partRows: number; maxBytes: number; format: FileFormat },
  body: Readable,
  options: AcceptOptions,
): Promise<Accepted> {
  const { id, pipeline, partRows, maxBytes, format } = o;
  const { boss } = ctx;
  const db = owner.client;
  const stage = stageTableName(id);
  await db.query(createStageSql(pipeline, stage));
  const splitter = new RecordSplitter({ partRecords: partRows, quoted: pipeline.format.kind === 'csv' });
  let meta: FileMeta | undefined;
  let sample: Buffer[] = [];
  let sampleBytes = 0;
  let total = 0;
  let parts = 0;
  const store = async (part: Part) => {
    if (part.n === 0) await describe(db, id, pipeline, meta!, splitter.header!, part.data);
    // No fsync per part: the upload is acknowledged (202) only after the final, synchronous
    // commit below, which makes every earlier part durable with it. The connection goes on
    // with the upload (and holds its lock): out of the transaction, or marked broken.
    await transactionOn(db, 'BEGIN; SET LOCAL synchronous_commit = off', async () => {
      const r = await insertPart(db, id, part);
      if (!r.stored) throw new UploadEnded(r.status);
      await sendJob(boss, db, PART_QUEUE, { importId: id, n: part.n });
      if (part.n === 0) {
        // The merge starts with the first part and takes each part as soon as it is staged.
        await setMergeEnqueued(db, id);
        await sendJob(boss, db, MERGE_QUEUE, { importId: id });
      }
    }, (e) => (owner.broken ??= e));
    parts++;
  };
  // One part is stored while the next one arrives (never more than one in flight, so
  // memory stays at two parts and part n is enqueued before part n + 1). Nothing else runs
  // on the connection meanwhile: every other statement below waits for `inFlight` first.
  let inFlight: Promise<void> = Promise.resolve();
  const enqueue = async (part: Part) => {
    await inFlight;
    inFlight = store(part);
    inFlight.catch(() => {}); // awaited by the next enqueue or at the end
  };
  const feed = async (buf: Buffer) => {
    for (const part of splitter.push(buf)) await enqueue(part);
  };
  /** Once the sample is in (64 KiB, or the whole of a smaller file): the format, the cuts, then its bytes. */
  const begin = async (all: Buffer, whole: boolean) => {
    meta = detect(whole ? all : all.subarray(0, DETECT_SAMPLE_BYTES), whole ? all.length : 0, pipeline.format.kind, format);
    if (pipeline.format.kind === 'csv') {
      splitter.terminator = lineTerminator(all);
      splitter.delimiter = (meta.delimiter ?? ',').charCodeAt(0);
    }
    if (!whole) splitter.partRecords = partRowsFor(partRows, options.expectedBytes, all, splitter.terminator);
    if (meta.hint) {
      // Excel's `sep=;` line (its delimiter is meta.delimiter): never given to the splitter,
      // which takes its first line for the header. What follows it starts on line 2, so the
      // header is line 2 and the parts' lines (first_line, rejects) stay the file's, as in
      // `sluice import` (readRecords skips the same bytes). The sample holds the whole line.
      splitter.firstLine = 2;
      await feed(all.subarray(meta.hint.bytes));
    } else {
      await feed(all);
    }
  };
  try {
    options.beforeRead?.();
    for await (const chunk of chunksOf(body, options.idleTimeoutMs ?? UPLOAD_IDLE_TIMEOUT_MS)) {
      total += chunk.length;
      if (total > maxBytes) throw new SluiceError('too_large', `upload larger than the limit of ${maxBytes} bytes`);
      if (meta) {
        await feed(chunk);
        continue;
      }
      sample.push(chunk);
      sampleBytes += chunk.length;
      if (sampleBytes >= DETECT_SAMPLE_BYTES) {
        const all = Buffer.concat(sample);
        sample = [];
        await begin(all, false);
      }
    }
    if (!meta) await begin(Buffer.concat(sample), true);
    const last = splitter.end();
    if (last) await enqueue(last);
    await inFlight;
    options.signal?.throwIfAborted();
    // No header at all: a file of Excel's `sep=;` line alone (any other is refused as empty).
    if (parts === 0) throw new InvalidFileError(`invalid file: ${splitter.header === undefined ? 'no header row' : 'no data rows after the header'}`);
    // The upload is complete: parts_total tells the merge (sent with part 0) where the file
    // ends. This synchronous commit is what makes the parts durable before the 202.
    const ended = await setPartsTotal(db, id, parts, total);
    if (ended !== null) throw new UploadEnded(ended);
    return { id, received: { parts, bytes: total } };
  } catch (err) {
    // The part in flight may have found the import over (UploadEnded) while the loop waited
    // for the body, which then failed (cut for idleness, client gone, too large): the end
    // is what the client is told, not the body's error.
    const endedInFlight = await inFlight.then(() => undefined, (e: unknown) => (e instanceof UploadEnded ? e : undefined));
    // Cancelled or failed meanwhile: acceptUpload answers, once this connection is released.
    if (err instanceof UploadEnded) throw err;
    if (endedInFlight) throw endedInFlight;
    // Nothing half-written: the import row (its parts cascade), its waiting jobs and its
    // staging go. A broken connection cannot: its lock ended with it, and the import
    // (queued, no parts_total) is failed by its merge, or by a server's reaper when it has
    // none yet (service.ts).
    if (!owner.broken) {
      // Only an import still unfinished is taken back: one cancelled by a user or failed by
      // a worker meanwhile (no part in flight to tell) stays as it ended, like above.
      // (cancelImportRow also stops its workers; a row already gone has nothing to keep.)
      const ended = (await cancelImportRow(db, id).catch(() => false)) ? null : await endedStatus(db, id).catch(() => null);
      if (ended !== null && ended !== 'deleted') throw new UploadEnded(ended);
      if (parts > 0) await deleteWaitingJobs(boss, db, id).catch(() => {});
      await dropStaging(db, id).catch(() => {});
      await db.query('DELETE FROM imports WHERE id = $1', [id]).catch(() => {});
    }
    throw err;
  }
}

/**
 * Deletes the part and merge jobs of a failed upload's import that no worker has taken yet
 * (a job already taken finds the import cancelled, then gone, and does nothing), through
 * pg-boss (which keeps its queue counts), on the upload's connection, a page at a time.
 */
async function deleteWaitingJobs(boss: NonNullable<IntakeContext['boss']>, db: Client, id: string): Promise<void> {
  const on = inTransaction(db);
  for (const queue of [PART_QUEUE, MERGE_QUEUE]) {
    let page: { id: string }[];
    do {
      page = await boss.findJobs(queue, { ...on, data: { importId: id }, queued: true, limit: 1000 });
      if (page.length > 0) await boss.deleteJob(queue, page.map((j) => j.id), on);
    } while (page.length === 1000);
  }
}

/** The import of an upload still arriving is over (cancelled, failed): its next part is not stored. */
class UploadEnded extends Error {
  readonly status: string | null;
  constructor(status: string | null) {
    super(`the import ended (${status ?? 'deleted'}) during its upload`);
    this.status = status;
  }
}

/**
 * The body's chunks. A failure of the body itself (the client, or the server a URL is
 * fetched from, hung up mid-file) says so, and is not taken for the database's
 * (src/db/unavailable.ts also knows ECONNRESET: it would have answered 503). A body that
 * sends nothing for `idleMs` while it is waited for is destroyed (for a request, its
 * connection closes) and the upload fails the same way (UPLOAD_IDLE_TIMEOUT_MS).
 */
async function* chunksOf(body: Readable, idleMs: number): AsyncGenerator<Buffer> {
  const chunks = (body as AsyncIterable<Buffer>)[Symbol.asyncIterator]();
  for (;;) {
    let next: IteratorResult<Buffer>;
    try {
      next = await withIdleTimeout(chunks.next(), idleMs, () => body.destroy(), `the file stopped arriving before its end: no byte for ${idleMs / 1000} s, the upload was cut`);
    } catch (err) {
      if (err instanceof SluiceError) throw err;
      throw new InvalidInputError(`the file stopped arriving before its end: ${errorMessage(err)}`, { cause: err });
    }
    if (next.done) return;
    yield next.value;
  }
}

/** `pending`, or after `ms` without it an InvalidInputError saying `cut` (`onIdle` called first). */
export function withIdleTimeout<T>(pending: Promise<T>, ms: number, onIdle: () => void, cut: string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => {
      pending.catch(() => {}); // rejected by onIdle's destroy: nobody waits for it any more
      onIdle();
      reject(new InvalidInputError(cut));
    }, ms);
    pending.then(
      (v) => {
        clearTimeout(timer);
        resolve(v);
      },
      (err: unknown) => {
        clearTimeout(timer);
        reject(err);
      },
    );
  });
}

/** How an upload gives its encoding and delimiter, for the errors refusing one its first bytes contradict. */
const SENT: EncodingWording = {
  given: (e) => `sent as ${e}`,
  use: (e) => `send it with encoding=${e}`,
  none: 'without an encoding',
  delimiter: {
    given: (d) => `it was sent with delimiter ${delimiterName(d)}`,
    use: (d) => `send it with delimiter ${delimiterName(d)}`,
    none: 'without a delimiter',
  },
};

/**
 * The file's format from its first bytes, with what the client gave instead of what would be
 * detected. An encoding the first bytes contradict is refused here, before the 202, rather
 * than failing the import in its first part or misreading its header: bytes that are not
 * UTF-8 sent as utf-8, a UTF-8 byte order mark sent as windows-1252; so is a delimiter other
 * than the one of an Excel `sep=` first line (which, without one, is the delimiter).
 */
function detect(sample: Buffer, bytes: number, kind: FormatKind, format: FileFormat): FileMeta {
  return detectSample(sample, bytes, kind, format, SENT);
}

/** Parses the header (with the first data line, for fixed-width) and records the format. */
async function describe(db: Client, id: string, pipeline: Pipeline, meta: FileMeta, headerBytes: Buffer, firstPart: Buffer) {
  const decoder = new TextDecoder(meta.encoding);
  // The header as the workers and `sluice import` read it: their parser from line 1. A
  // fixed-width header is placed by the first data lines (fixed-width.ts), so those of part
  // 0 go with it, up to the last line end of its first 64 KiB (a CSV header needs none).
  const cut = meta.format === 'csv' ? -1 : firstPart.lastIndexOf(0x0a, SAMPLE_BYTES - 1);
  const parser = parserFor(meta.format, meta.delimiter, 1);
  const text = decoder.decode(headerBytes) + decoder.decode(firstPart.subarray(0, cut + 1));
  const header = [parser.push(text), parser.end()].flatMap((b) => b.rows)[0] ?? [];
  mapHeader(pipeline, header); // throws InvalidFileError on an unusable header
  await setImportFormat(db, id, { header, encoding: meta.encoding, delimiter: meta.delimiter });
}
