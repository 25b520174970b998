/**
 * One part of an upload, on a worker: parse and validate its rows, then in ONE transaction
 * COPY them into the part's own staging table (and its rejects), mark the part completed
 * and wake the merge (or, for an import whose merge was not sent with its first part,
 * enqueue it when this is the last part). A worker killed at any point leaves either nothing or the whole
 * part: re-running a part never duplicates rows. Where the time went (ms) is kept in
 * import_parts.timings: start (claim, connection, bytes), parse (decode, parse, validate), copy (the
 * COPY's time beyond the parsing it overlaps), lock (waiting for the import row), the rest
 * is commit.
 */
import { from as copyFrom } from 'pg-copy-streams';
import { pipeline as streamPipeline } from 'node:stream/promises';
import { Readable } from 'node:stream';
import { setImmediate } from 'node:timers/promises';
import { InvalidFileError, errorMessage } from '../core/errors.ts';
import { completePart, failPart, lockImport, notifyPartDone, partCompleted, partData, startPart, type PartWork } from '../db/sql/intake.ts';
import { mapHeader, RowMapper } from '../engine/row-mapper.ts';
import { CsvParser, type ParsedBatch } from '../formats/csv-parser.ts';
import { invalidUtf8At, type Encoding } from '../formats/sniff.ts';
import { WhitespaceColumnsParser } from '../formats/whitespace-columns.ts';
import { JOBS_CHANNEL, MERGE_QUEUE, PART_RETRY_LIMIT, sendJob } from '../jobs/boss.ts';
import { stageCopySql } from '../load/merge-sql.ts';
import { BufferedRejects, REJECTS_COPY } from '../load/rejects.ts';
import { faultPause } from '../core/fault.ts';
import { getPipeline } from '../pipelines/index.ts';
import type { Pool } from '../db/pool.ts';
import type { IntakeContext } from './context.ts';
import { failImport, gaveUp } from './fail.ts';
import { partRetries } from './metrics.ts';
import { lineTerminator } from './splitter.ts';
import { createPartTable, partTableName } from './staging.ts';

export type PartOutcome = 'completed' | 'skipped' | 'failed';

/** A parser of the part's text, pushed a slice at a time (csv-parser.ts, whitespace-columns.ts). */
interface RecordParser {
  push(text: string): ParsedBatch;
  end(): ParsedBatch;
}

export function parserFor(kind: 'csv' | 'fixed-width', delimiter: string | null, firstLine: number): RecordParser {
  if (kind === 'fixed-width') return new WhitespaceColumnsParser({ firstLine });
  return new CsvParser({ delimiter: delimiter ?? ',', firstLine });
}

/**
 * Characters of the part's text parsed at a time. Each slice's rows are mapped before the
 * next slice is parsed, so only one slice's parsed rows are alive at once (a young-generation
 * collection finds almost nothing left to copy: with the whole part parsed first, collections
 * took ~40% of the mapping time), and the COPY sends a slice's rows to Postgres while the
 * next slice is parsed.
 */
const SLICE_CHARS = 16 * 1024;

/**
 * The staging rows of the part as COPY text, one chunk per slice (ends at a line end; a CSV
 * record spanning two slices is completed by the parser). `spent.parse` adds up the ms
 * spent decoding, parsing and validating.
 */
export function* stagingText(text: string, parser: RecordParser, mapper: RowMapper, spent: { parse: number }): Generator<string> {
  let from = 0;
  for (;;) {
    const t = performance.now();
    const end = from >= text.length;
    let batch: ParsedBatch;
    if (end) batch = parser.end();
    else {
      const nl = text.indexOf('\n', from + SLICE_CHARS);
      const to = nl < 0 ? text.length : nl + 1;
      batch = parser.push(text.slice(from, to));
      from = to;
    }
    const out: string[] = [];
    mapper.mapBatch(batch, out);
    spent.parse += performance.now() - t;
    if (out.length > 0) yield `${out.join('\n')}\n`;
    if (end) return;
  }
}

/**
 * The slices' COPY text, letting the event loop turn between slices: a merge running in
 * this process (it follows the parts as they are staged) and the jobs' heartbeats are not
 * held up for a whole part's parsing.
 */
async function* yielding(chunks: Iterable<string>): AsyncGenerator<string> {
  for (const chunk of chunks) {
    yield chunk;
    await setImmediate();
  }
}

/**
 * The part's text. Bytes that are not valid in the import's encoding (detected from the
 * first 64 KiB of the file unless the upload gave one: a Windows-1252 accent further down a
 * file that looked like UTF-8) fail the import, as `sluice import` does: decoding them as
 * U+FFFD would store corrupted text. The error names the line of the first invalid byte
 * (as `sluice import` names its offset), not just the part's range of lines. Only UTF-8 can
 * fail (every byte is a windows-1252 character), hence the advice to send the file with
 * encoding=windows-1252.
 */
export function decodePart(work: Pick<PartWork, 'encoding' | 'first_line'>, data: Buffer): string {
  try {
    return new TextDecoder(work.encoding as Encoding, { fatal: true }).decode(data);
  } catch {
    const at = Math.max(0, invalidUtf8At(data, true));
    // Lines end where the splitter cut them and counted first_line: its lineTerminator.
    const eol = lineTerminator(data);
    let line = Number(work.first_line);
    let lineStart = 0;
    for (let i = data.indexOf(eol); i >= 0 && i < at; i = data.indexOf(eol, i + 1)) {
      line++;
      lineStart = i + 1;
    }
    const byte = `0x${(data[at] ?? 0).toString(16).toUpperCase().padStart(2, '0')}`;
    throw new InvalidFileError(
      `invalid file: line ${line} is not valid ${work.encoding} (byte ${byte}, the line's byte ${at - lineStart + 1}), the encoding detected from the start of the file (or given with the upload); save the file as UTF-8, or send it with encoding=windows-1252`,
    );
  }
}

/**
 * Ends the import of a part pg-boss gave up on after its worker died during its last attempt
 * (the reaper in service.ts drains PART_DEAD_QUEUE): the part and its import fail, as on a
 * final error below, and what the import staged goes. Without it the merge waited for the
 * part for ever. False when the import was over already.
 */
export async function failAbandonedPart(pool: Pool, importId: string, n: number, reason: string, attempts: number): Promise<boolean> {
  // A worker killed after the part's commit but before it told the queue: the part is
  // staged, and its import (its merge following it) is fine.
  if (await partCompleted(pool, importId, n)) return false;
  const message = `part ${n}: ${reason}${gaveUp(attempts)}`;
  if (!(await failImport(pool, importId, message))) return false;
  await failPart(pool, importId, n, message, true);
  return true;
}

export async function runPart(ctx: IntakeContext, importId: string, n: number): Promise<PartOutcome> {
  const { pool, boss } = ctx;
  const t0 = performance.now();
  const timings: Record<string, number> = {};
  const mark = (name: string, since: number) => {
    const now = performance.now();
    timings[name] = Math.round(now - since);
    return now;
  };
  // One round trip: the import's format and the part claimed (attempts + 1); its bytes below.
  const work = await startPart(pool, importId, n);
  if (!work || work.attempts === null) return 'skipped';
  // A retry: an earlier attempt claimed this part and did not complete it (/metrics). The
  // pipeline is one the import was accepted for (a bounded label).
  if (work.attempts > 1) partRetries.inc({ pipeline: work.pipeline });
  if (!work.header || !work.encoding) throw new Error(`import ${importId} has no recorded header yet`);
  const pipeline = getPipeline(work.pipeline);
  let t = t0;
  try {
    const rejects = new BufferedRejects(importId);
    // The merge job detects repeated keys itself (engine/key-filter.ts, over hashtext).
    const mapper = new RowMapper(pipeline, mapHeader(pipeline, work.header), n, rejects, { trackKeys: false });
    const parser = parserFor(pipeline.format.kind, work.delimiter, Number(work.first_line));
    const client = await pool.connect();
    let begun = false;
    try {
      const data = await partData(client, importId, n);
      // Gone since the claim: the import ended (failed, cancelled) and its parts' bytes with it.
      if (data === null) return 'skipped';
      t = mark('start', t0);
      const text = decodePart(work, data);
      const spent = { parse: performance.now() - t };
      // The part's own table, (re)created in this transaction: whatever an earlier attempt
      // left is replaced, and nothing is left if this one does not commit.
      await client.query('BEGIN');
      begun = true;
      await createPartTable(client, importId, n);
      if (work.attempts > 1) {
        await client.query('DELETE FROM import_rejects WHERE import_id = $1 AND line BETWEEN $2 AND $3', [importId, work.first_line, work.last_line]);
      }
      // Parsing feeds the COPY: Node parses the next slice while Postgres stores the last.
      await streamPipeline(Readable.from(yielding(stagingText(text, parser, mapper, spent))), client.query(copyFrom(stageCopySql(pipeline, partTableName(importId, n)))));
      if (rejects.lines.length > 0) await streamPipeline(Readable.from([rejects.lines.join('')]), client.query(copyFrom(REJECTS_COPY)));
      timings.parse = Math.round(spent.parse);
      timings.copy = Math.round(performance.now() - t - spent.parse);
      t = performance.now();
      // Fault injection (test/intake/workers.test.ts): the part held with its rows COPYed.
      await faultPause('SLUICE_FAULT_PAUSE_FILE');
      // Serialize completions of this import so exactly one part sees "all done".
      const locked = await lockImport(client, importId);
      if (!locked || !['queued', 'running'].includes(locked.status)) {
        await client.query('ROLLBACK');
        return 'skipped';
      }
      timings.lock = Math.round(performance.now() - t);
      const last = await completePart(client, importId, n, {
        read: mapper.read, accepted: mapper.accepted, rejected: mapper.rejected, keyCandidates: mapper.hasKeyCandidates, timings,
      });
      if (last) await sendJob(boss!, client, MERGE_QUEUE, { importId });
      // Wakes the merge, which takes the parts in file order as they are staged.
      await notifyPartDone(client, JOBS_CHANNEL, importId);
      await client.query('COMMIT');
      return 'completed';
    } catch (err) {
      // (A client whose connection broke is not queryable: the pool drops it on release.)
      if (begun) await client.query('ROLLBACK').catch(() => {});
      throw err;
    } finally {
      client.release();
    }
  } catch (err) {
    // Bad data (an unbalanced quote, undecodable bytes) will not get better: fail at once.
    // Anything else (a dropped connection...) is retried by the queue with backoff.
    const final = err instanceof InvalidFileError || err instanceof TypeError || work.attempts > PART_RETRY_LIMIT;
    const message = `part ${n}: ${errorMessage(err)}`;
    await failPart(pool, importId, n, message, final).catch(() => {});
    if (!final) throw err;
    await failImport(pool, importId, message).catch(() => {});
    return 'failed';
  }
}
