/**
 * The parse thread's body (started by parse-thread.ts; one attempt at a time): reads the feed's
 * chunks with XmlEventsReader, checks each event (checkFeedEvent), cuts batches and builds
 * each batch's COPY text (stageCopyText). That was the sync's CPU (saxes, the checks, zones'
 * JSON, the COPY escaping: ~5 s for a 97 MB feed), which held `sluice serve`'s event loop for
 * 100-230 ms at a time; here it holds only this thread's. The main thread keeps the fetch,
 * the transaction and the COPY itself.
 *
 * Flow control (memory stays what it was on one thread: two batches and a few chunks):
 * - the main thread sends at most MAX_CHUNKS_IN_FLIGHT chunks ahead; each parsed chunk is
 *   answered with `read`, which lets it send one more;
 * - at most MAX_BATCHES_POSTED batch is with the main thread (being written) until it answers
 *   `ack`; the next one waits here, finished, and no chunk is parsed meanwhile.
 */
import { parentPort } from 'node:worker_threads';
import { stageCopyText } from '../../db/sql/events.ts';
import { XmlEventsReader, type RawFeedEvent } from '../../formats/xml-events-reader.ts';
import { checkFeedEvent, type FeedEvent, type FeedReject } from './feed-event.ts';
import type { FromThread, ToThread } from './parse-thread.ts';
import { toWire } from './thread-errors.ts';

/** Zones per staged batch: bounds a batch's memory (~75 bytes of JSON per zone). */
const MAX_BATCH_ZONES = 50_000;

/**
 * Characters of zones JSON and titles per staged batch (16 Mi): attributes may be long (up to
 * the reader's 1 Mi characters each), and 1,000 such events would hold gigabytes.
 */
const MAX_BATCH_CHARS = 1 << 24;

/** Batches sent and not yet written (acknowledged): one, as the single-thread sync had one writing. */
const MAX_BATCHES_POSTED = 1;

const port = parentPort;
if (!port) throw new Error('parse-worker.ts runs as a worker thread (see parse-thread.ts)');

/** One attempt's parse: a fresh reader and counts for each `start` (a thread may serve several attempts in turn). */
class Attempt {
  private readonly batchSize: number;
  private readonly reader: XmlEventsReader;
  private pending: FeedEvent[] = [];
  private pendingZones = 0;
  private pendingChars = 0;
  private rejects: FeedReject[] = [];
  /** Events cut into batches so far: the next batch's first `seq`. */
  private staged = 0;
  private eventsSeen = 0;
  /** Messages ready to send, in order: batches (held while one is unacknowledged), then `done`. */
  private readonly outbox: FromThread[] = [];
  private posted = 0;
  /** Chunks received, not yet parsed; `null` is the end of the feed. */
  private readonly inbox: Array<Uint8Array | null> = [];
  private failed = false;

  constructor(batchSize: number) {
    this.batchSize = batchSize;
    this.reader = new XmlEventsReader((raw: RawFeedEvent) => {
      this.eventsSeen += 1;
      const checked = checkFeedEvent(raw);
      if (checked.ok) {
        this.pending.push(checked.event);
        this.pendingZones += checked.event.zones.length;
        this.pendingChars += checked.event.zonesJson.length + checked.event.title.length;
      } else this.rejects.push(checked.reject);
      this.cut(false);
    });
  }

  receive(m: ToThread): void {
    if (m.type === 'chunk') this.inbox.push(m.chunk);
    else if (m.type === 'end') this.inbox.push(null);
    else if (m.type === 'ack') this.posted -= 1;
    if (!this.failed) this.pump();
  }

  /** Moves the pending events and rejects into a batch when a limit is reached (or at the end: `all`). */
  private cut(all: boolean): void {
    const { pending, batchSize } = this;
    const events = pending.length >= batchSize || this.pendingZones >= MAX_BATCH_ZONES || this.pendingChars >= MAX_BATCH_CHARS || (all && pending.length > 0);
    const rejected = this.rejects.length >= batchSize || (all && this.rejects.length > 0);
    if (!events && !rejected) return;
    let copy: Uint8Array | undefined;
    if (events) {
      copy = stageCopyText(pending, this.staged);
      this.staged += pending.length;
      this.pending = [];
      this.pendingZones = 0;
      this.pendingChars = 0;
    }
    const rejects = rejected ? this.rejects : [];
    if (rejected) this.rejects = [];
    this.outbox.push({ type: 'batch', ...(copy ? { copy } : {}), events: events ? pending.length : 0, rejects, ...this.progress() });
  }

  private progress() {
    return { bytes: this.reader.bytes, eventsSeen: this.eventsSeen };
  }

  /** Sends what may be sent, then parses received chunks while nothing waits to be sent. */
  private pump(): void {
    try {
      for (;;) {
        while (this.outbox.length > 0) {
          const next = this.outbox[0]!;
          if (next.type === 'batch' && this.posted >= MAX_BATCHES_POSTED) return; // resumed by `ack`
          this.outbox.shift();
          if (next.type === 'batch') {
            this.posted += 1;
            // The COPY text is moved, not copied, to the main thread.
            port!.postMessage(next, next.copy ? [next.copy.buffer as ArrayBuffer] : []);
          } else port!.postMessage(next);
        }
        if (this.inbox.length === 0) return; // resumed by the next chunk
        const chunk = this.inbox.shift()!;
        if (chunk === null) {
          this.reader.end();
          this.cut(true);
          this.outbox.push({ type: 'done', ...this.progress() });
        } else {
          this.reader.write(chunk);
          this.cut(false);
          port!.postMessage({ type: 'read', ...this.progress() } satisfies FromThread);
        }
      }
    } catch (err) {
      // The feed is bad (or this code is): reported once; the main thread ends this thread.
      this.failed = true;
      this.inbox.length = 0;
      this.outbox.length = 0;
      port!.postMessage({ type: 'error', error: toWire(err), ...this.progress() } satisfies FromThread);
    }
  }
}

let attempt: Attempt | undefined;
port.on('message', (m: ToThread) => {
  if (m.type === 'start') attempt = new Attempt(m.batchSize);
  else attempt?.receive(m);
});
