/**
 * A streaming reader for the provider's event feed (`eventList > output > base_event >
 * event > zone`, attributes only). It holds one event at a time, so memory stays bounded
 * whatever the feed's size: feed it chunks with `write`, it calls `onEvent` per closed
 * `<event>`.
 *
 * Security: a DOCTYPE is refused outright. saxes expands no external entities anyway, but a
 * feed has no use for a DTD, and refusing it closes XXE and entity-expansion ("billion
 * laughs") attacks before any of their declarations is read.
 */
import { SaxesParser, type SaxesTagPlain } from 'saxes';
import { InvalidFileError } from '../core/errors.ts';

export type Attributes = Record<string, string>;

/** One `<event>` with its base event's and zones' attributes, as text. */
export interface RawFeedEvent {
  /** Line of the `<event>` tag (1-based), for rejects. */
  line: number;
  base: Attributes;
  event: Attributes;
  zones: Attributes[];
  /** Zones past `maxZonesPerEvent` were dropped (the event should be rejected). */
  truncatedZones: boolean;
}

export interface XmlEventsReaderOptions {
  /** Zones kept per event before the rest are dropped (default 10,000). */
  maxZonesPerEvent?: number;
}

export class XmlEventsReader {
  private readonly parser = new SaxesParser({ xmlns: false, position: true });
  private readonly decoder = new TextDecoder('utf-8', { fatal: true });
  private readonly maxZones: number;
  private base: Attributes | undefined;
  private current: RawFeedEvent | undefined;
  private sawRoot = false;
  private nonBlank = false;
  private failure: Error | undefined;
  /** Bytes given to `write` so far. */
  bytes = 0;

  constructor(onEvent: (event: RawFeedEvent) => void, options: XmlEventsReaderOptions = {}) {
    this.maxZones = options.maxZonesPerEvent ?? 10_000;
    const p = this.parser;
    p.on('doctype', () => {
      throw new InvalidFileError('the feed declares a DOCTYPE: DTDs and entities are refused');
    });
    p.on('error', (err) => {
      // saxes continues after an error unless we stop it: the first one ends the feed.
      throw new InvalidFileError(`malformed XML: ${err.message}`, { cause: err });
    });
    p.on('opentag', (tag: SaxesTagPlain) => {
      this.sawRoot = true;
      switch (tag.name) {
        case 'base_event':
          this.base = tag.attributes;
          break;
        case 'event':
          // An event outside a base event has no title or sell mode: it is read with an
          // empty base and rejected by validation, not silently dropped.
          this.current = { line: p.line, base: this.base ?? {}, event: tag.attributes, zones: [], truncatedZones: false };
          break;
        case 'zone':
          if (!this.current) break;
          if (this.current.zones.length < this.maxZones) this.current.zones.push(tag.attributes);
          else this.current.truncatedZones = true;
          break;
        default:
          break;
      }
    });
    p.on('closetag', (tag) => {
      if (tag.name === 'event' && this.current) {
        const e = this.current;
        this.current = undefined;
        onEvent(e);
      } else if (tag.name === 'base_event') {
        this.base = undefined;
      }
    });
  }

  /** Parses the next chunk; throws InvalidFileError on bad UTF-8, bad XML or a DOCTYPE. */
  write(chunk: Uint8Array | string): void {
    if (this.failure) throw this.failure;
    try {
      const text = typeof chunk === 'string' ? chunk : this.decoder.decode(chunk, { stream: true });
      this.bytes += typeof chunk === 'string' ? Buffer.byteLength(chunk) : chunk.byteLength;
      if (!this.nonBlank && /\S/.test(text)) this.nonBlank = true;
      this.parser.write(text);
    } catch (err) {
      this.failure = asFileError(err);
      throw this.failure;
    }
  }

  /** Ends the document; throws if it is empty, truncated or malformed. */
  end(): void {
    if (this.failure) throw this.failure;
    if (!this.nonBlank) throw new InvalidFileError('the feed is empty');
    try {
      const rest = this.decoder.decode();
      if (rest) this.parser.write(rest);
      this.parser.close();
    } catch (err) {
      this.failure = asFileError(err);
      throw this.failure;
    }
    if (!this.sawRoot) throw new InvalidFileError('the feed has no XML element');
  }
}

function asFileError(err: unknown): Error {
  if (err instanceof InvalidFileError) return err;
  if (err instanceof TypeError) return new InvalidFileError('the feed is not valid UTF-8', { cause: err });
  return new InvalidFileError(`malformed XML: ${(err as Error).message}`, { cause: err });
}
