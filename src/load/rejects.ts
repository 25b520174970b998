/**
 * Rejects: rows (or single fields) Sluice refused, stored in `import_rejects` with line,
 * reason and raw text. Buffered as COPY text and flushed in batches on their own
 * connection, so millions of rejects never sit in memory and never block the data COPY.
 */
import { pipeline as streamPipeline } from 'node:stream/promises';
import { Readable } from 'node:stream';
import { from as copyFrom } from 'pg-copy-streams';
import type { Pool } from '../db/pool.ts';
import { copyValue } from './copy-text.ts';

/** Raw text kept per reject (a 50 MB line is not stored whole). */
export const MAX_RAW_CHARS = 10_000;

/** Where a row mapper records rejects. */
export interface RejectCollector {
  add(line: number, field: string | null, reason: string, raw: string): void;
}

/** One reject as a line of COPY text for import_rejects. */
export function rejectCopyLine(importId: string, line: number, field: string | null, reason: string, raw: string): string {
  const r = raw.length > MAX_RAW_CHARS ? `${raw.slice(0, MAX_RAW_CHARS)}…` : raw;
  return `${importId}\t${line}\t${field === null ? '\\N' : copyValue(field)}\t${copyValue(reason)}\t${copyValue(r)}\n`;
}

export const REJECTS_COPY = 'COPY import_rejects (import_id, line, field, reason, raw) FROM STDIN';

/** Rejects kept in memory (a part's worth), written in the part's transaction. */
export class BufferedRejects implements RejectCollector {
  readonly lines: string[] = [];
  private readonly importId: string;
  constructor(importId: string) {
    this.importId = importId;
  }
  add(line: number, field: string | null, reason: string, raw: string): void {
    this.lines.push(rejectCopyLine(this.importId, line, field, reason, raw));
  }
}

export class RejectSink implements RejectCollector {
  private readonly pool: Pool;
  private readonly importId: string;
  private buffer: string[] = [];
  private bufferedChars = 0;
  private flushing: Promise<void> = Promise.resolve();
  /** Reject entries recorded (rows and fields). */
  count = 0;

  constructor(pool: Pool, importId: string) {
    this.pool = pool;
    this.importId = importId;
  }

  add(line: number, field: string | null, reason: string, raw: string): void {
    this.count++;
    const text = rejectCopyLine(this.importId, line, field, reason, raw);
    this.buffer.push(text);
    this.bufferedChars += text.length;
    if (this.bufferedChars > 4 << 20) void this.flush();
  }

  /** Writes what is buffered; resolves when every reject so far is stored. */
  flush(): Promise<void> {
    if (this.buffer.length === 0) return this.flushing;
    const batch = this.buffer;
    this.buffer = [];
    this.bufferedChars = 0;
    this.flushing = this.flushing.then(async () => {
      const client = await this.pool.connect();
      try {
        const stream = client.query(copyFrom(REJECTS_COPY));
        await streamPipeline(Readable.from([batch.join('')]), stream);
      } finally {
        client.release();
      }
    });
    return this.flushing;
  }
}
