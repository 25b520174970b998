/**
 * The main thread's side of a sync attempt's parse thread (parse-worker.ts): give it the
 * feed's chunks with `write`, then `end`; each batch it sends back (COPY text and rejects)
 * goes to `onBatch`, one at a time, in order. `close` ends the thread, on every path.
 *
 * Why a thread: parsing and checking a big feed is seconds of CPU (a 97 MB feed: ~5 s), and
 * on `sluice serve`'s event loop it delayed every request by up to 230 ms at a time. Slicing
 * that work did not help; another thread does. Each attempt gets a fresh reader; its thread is
 * a new one (~0.1 s to start, while the attempt's BEGIN and request run) or the one a clean
 * attempt left idle (IDLE_MS); a failed attempt's thread is ended, so nothing of it is left
 * over. The CLI takes the same path: one way of syncing, tested once.
 *
 * Failures all end the same way: the first one (an error of the feed, rebuilt as its own
 * class by thread-errors.ts; `onBatch` failing; the thread dying, out of memory or otherwise)
 * is kept, the thread is terminated, and the waiting `write` or `end` throws it. Nothing waits
 * on a thread that is gone.
 */
import { isMarkedAsUntransferable, Worker } from 'node:worker_threads';
import { NonRetryableError } from '../../core/errors.ts';
import type { FeedReject } from './feed-event.ts';
import { fromWire, type WireError } from './thread-errors.ts';

/** A batch for the stage: its COPY text (absent when it holds only rejects) and its rejects. */
export interface ParsedBatch {
  copy?: Uint8Array;
  /** Events in `copy`. */
  events: number;
  rejects: FeedReject[];
}

/** How far the thread read: bytes given to the reader, events closed. */
export interface ParseProgress {
  bytes: number;
  eventsSeen: number;
}

/** `start` begins an attempt (a fresh reader); `ack`: a batch was written. */
export type ToThread = { type: 'start'; batchSize: number } | { type: 'chunk'; chunk: Uint8Array } | { type: 'end' } | { type: 'ack' };

export type FromThread =
  | ({ type: 'read' } & ParseProgress)
  | ({ type: 'batch' } & ParsedBatch & ParseProgress)
  | ({ type: 'done' } & ParseProgress)
  | ({ type: 'error'; error: WireError } & ParseProgress);

export interface ParseThreadOptions {
  /** Events (and rejects) per batch. */
  batchSize: number;
  /** Writes one batch; the next is not given before this settles. A rejection fails the parse. */
  onBatch: (batch: ParsedBatch) => Promise<void>;
  /** The thread's heap limit in MB (tests); default V8's own (see below). */
  heapMb?: number;
}

/**
 * Chunks sent ahead of the parser (~64 KiB each from fetch): enough to keep it busy while the
 * next one arrives, few enough that a slow parser holds back the download, not memory.
 */
const MAX_CHUNKS_IN_FLIGHT = 4;

/**
 * The parse thread's heap is not capped below V8's default (the main thread's). A cap is no
 * safety net: V8 answers an allocation past it by aborting the whole process ("Reached heap
 * limit", serve gone), not only this thread, whenever the allocation is large; and a valid
 * feed needs far more than its size (one event of 15 zones whose 1,000,000-character names
 * escape 4x for JSON and COPY is a 60 M-character batch held several times: a 256 MB cap
 * killed serve on a 15 MB feed the single-threaded sync took). The reader's limits (a tag of
 * 1 Mi characters, an event of 16 Mi) and the batches' bound what it holds, as before.
 * (`heapMb` caps it for a test of a thread running out of memory.)
 */

const WORKER_URL = new URL('./parse-worker.ts', import.meta.url);

/**
 * How long a thread is kept after a clean attempt, for the next one (30 s). Starting one costs
 * ~0.1-0.2 CPU-s (Node's bootstrap, the modules' type stripping): a 3-event sync took 4 times
 * longer when every sync started its own. Back-to-back syncs and an attempt's retries reuse it;
 * `serve`'s sync, every 60 s by default, starts one each time and holds no idle heap between.
 */
const IDLE_MS = 30_000;

/** Parse threads started and not yet exited, in this process, idle ones included (tests check that none leak). */
let live = 0;
export function liveParseThreads(): number {
  return live;
}

/** The thread kept for the next attempt: unref'd (it never keeps the process alive), ended after IDLE_MS. */
let idle: { worker: Worker; heapMb: number | undefined; timer: NodeJS.Timeout; onExit: () => void; onError: () => void } | undefined;

/** Ends the idle thread now, if there is one (tests; a process that wants no thread left). */
export async function endIdleParseThread(): Promise<void> {
  const kept = takeIdle();
  if (kept) await kept.terminate();
}

function takeIdle(): Worker | undefined {
  const kept = idle;
  if (!kept) return undefined;
  idle = undefined;
  clearTimeout(kept.timer);
  kept.worker.off('exit', kept.onExit);
  kept.worker.off('error', kept.onError);
  return kept.worker;
}

/** For tests only: called with each thread as an attempt takes it (a test kills one mid-sync through it). */
export const parseThreadHooks: { started?: (worker: Worker) => void } = {};

export class ParseThread {
  private readonly worker: Worker;
  private readonly heapMb: number | undefined;
  private readonly onBatch: (batch: ParsedBatch) => Promise<void>;
  /** The first failure; everything after it is ignored. */
  private failure: Error | undefined;
  private closed = false;
  private readonly exited: Promise<void>;
  private sent = 0;
  private read = 0;
  private done = false;
  /** The batches' writes, chained: one at a time, in order. Never rejects (failures go to `fail`). */
  private writing: Promise<void> = Promise.resolve();
  /** Woken at every message and failure; `write` and `end` (never both at once) wait on it. */
  private wake: (() => void) | undefined;
  /** What the thread read so far (of the feed's bytes and events), for a failed attempt's counts. */
  progress: ParseProgress = { bytes: 0, eventsSeen: 0 };
  private readonly onMessage = (m: FromThread) => this.receive(m);
  private readonly onError = (err: Error) => {
    // Out of memory (ERR_WORKER_OUT_OF_MEMORY), a failed start, an error outside the parse.
    this.fail(new NonRetryableError(`the feed's parse thread failed: ${err.message}`, { cause: err }));
  };
  private onExit: (code: number) => void = () => {};
  /** Resolves `exited` for a thread handed on (it does not exit). */
  private handedOn: () => void = () => {};

  constructor(options: ParseThreadOptions) {
    this.onBatch = options.onBatch;
    this.heapMb = options.heapMb;
    let worker = idle && idle.heapMb === this.heapMb ? takeIdle() : undefined;
    if (worker) worker.ref();
    else {
      worker = new Worker(WORKER_URL, this.heapMb === undefined ? {} : { resourceLimits: { maxOldGenerationSizeMb: this.heapMb } });
      live += 1;
      worker.once('exit', () => {
        live -= 1;
      });
    }
    this.worker = worker;
    this.exited = new Promise((resolve) => {
      this.handedOn = resolve;
      this.onExit = (code) => {
        // An exit nobody asked for: the attempt must not wait for messages that will never come.
        if (!this.closed) this.fail(new NonRetryableError(`the feed's parse thread stopped (exit code ${code}) before the end of the feed`));
        resolve();
      };
    });
    worker.once('exit', this.onExit);
    worker.on('error', this.onError);
    worker.on('message', this.onMessage);
    worker.postMessage({ type: 'start', batchSize: options.batchSize } satisfies ToThread);
    parseThreadHooks.started?.(worker);
  }

  /** Sends a chunk; waits while MAX_CHUNKS_IN_FLIGHT are unread. The chunk is moved to the thread (unusable here after). */
  async write(chunk: Uint8Array): Promise<void> {
    if (this.failure) throw this.failure;
    const own = transferable(chunk);
    this.worker.postMessage({ type: 'chunk', chunk: own } satisfies ToThread, [own.buffer as ArrayBuffer]);
    this.sent += 1;
    while (!this.failure && this.sent - this.read >= MAX_CHUNKS_IN_FLIGHT) await this.changed();
    if (this.failure) throw this.failure;
  }

  /** Ends the feed; resolves once every batch is written, with what was read. */
  async end(): Promise<ParseProgress> {
    if (this.failure) throw this.failure;
    this.worker.postMessage({ type: 'end' } satisfies ToThread);
    while (!this.failure && !this.done) await this.changed();
    await this.writing;
    if (this.failure) throw this.failure;
    return this.progress;
  }

  /**
   * Ends the attempt: after a clean one the thread is kept for the next (IDLE_MS), after any
   * other it is terminated, waited for, and a batch being written too. Idempotent; call it on
   * every path (a `finally`): a thread left running keeps the process alive.
   */
  async close(): Promise<void> {
    if (!this.closed) {
      this.closed = true;
      await this.writing;
      if (this.done && !this.failure) return this.keep();
      this.failure ??= new Error('the parse thread was closed');
      this.wake?.();
      await this.worker.terminate();
    }
    await this.exited;
    await this.writing;
  }

  /** Hands the thread, idle and unref'd, to the next attempt; an older idle one is ended. */
  private keep(): void {
    const worker = this.worker;
    worker.off('exit', this.onExit);
    worker.off('error', this.onError);
    worker.off('message', this.onMessage);
    void endIdleParseThread();
    worker.unref();
    const onExit = () => {
      if (idle?.worker === worker) takeIdle();
    };
    worker.once('exit', onExit);
    // An 'error' with no listener would throw in this process (serve): an idle thread that
    // fails somehow just exits, and the next attempt starts a new one.
    const onError = () => {};
    worker.on('error', onError);
    // Unref'd: an idle thread waiting to be ended never keeps the process alive either.
    const timer = setTimeout(() => void endIdleParseThread(), IDLE_MS).unref();
    idle = { worker, heapMb: this.heapMb, timer, onExit, onError };
    this.handedOn();
  }

  private receive(m: FromThread): void {
    if (this.failure) return;
    this.progress = { bytes: m.bytes, eventsSeen: m.eventsSeen };
    switch (m.type) {
      case 'read':
        this.read += 1;
        break;
      case 'batch': {
        const batch: ParsedBatch = { ...(m.copy ? { copy: m.copy } : {}), events: m.events, rejects: m.rejects };
        this.writing = this.writing
          .then(() => (this.failure ? undefined : this.onBatch(batch)))
          .then(
            () => {
              if (!this.failure) this.worker.postMessage({ type: 'ack' } satisfies ToThread);
            },
            (err: unknown) => this.fail(err instanceof Error ? err : new Error(String(err))),
          );
        break;
      }
      case 'done':
        this.done = true;
        break;
      case 'error':
        this.fail(fromWire(m.error));
        break;
    }
    this.wake?.();
  }

  /** Keeps the first failure and terminates the thread (not waited for here: `close` does). */
  private fail(err: Error): void {
    if (this.failure) return;
    this.failure = err;
    this.wake?.();
    void this.worker.terminate();
  }

  private changed(): Promise<void> {
    return new Promise((resolve) => {
      this.wake = () => {
        this.wake = undefined;
        resolve();
      };
    });
  }
}

/**
 * `chunk` if its ArrayBuffer is its own, else a copy: moving a chunk that is a view of a larger
 * buffer (Node's Buffer pool, a socket's read buffer) would take that whole buffer from its owner.
 */
function transferable(chunk: Uint8Array): Uint8Array {
  const own = chunk.byteOffset === 0 && chunk.byteLength === chunk.buffer.byteLength && !isMarkedAsUntransferable(chunk.buffer);
  return own ? chunk : chunk.slice();
}
