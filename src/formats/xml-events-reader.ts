/**
 * A streaming reader for the provider's event feed (`eventList > output > base_event >
 * event > zone`, attributes only). It holds one event at a time, so memory stays bounded
 * whatever the feed's size: feed it chunks with `write`, it calls `onEvent` per closed
 * `<event>`.
 *
 * Memory: saxes holds a whole tag (its attribute values) or comment until it ends, so a feed
 * with one 150 MB attribute needed 150 MB+ of heap at once. A tag longer than
 * MAX_TOKEN_CHARS (with the text and comments before it) fails the feed, and an event longer
 * than MAX_EVENT_CHARS keeps no more zones (it is rejected), so what one event holds is
 * bounded too.
 *
 * The root element must be `<eventList>`: a provider in trouble may answer 200 with another
 * document (`<error>rate limited</error>`, an XHTML maintenance page), which holds no events
 * and must not pass for a feed that lists none (FeedRootError).
 *
 * Security: a DOCTYPE is refused outright. saxes expands no external entities anyway, but a
 * feed has no use for a DTD, and refusing it closes XXE and entity-expansion ("billion
 * laughs") attacks before any of their declarations is read.
 */
import { SaxesParser, type SaxesTagPlain } from 'saxes';
import { InvalidFileError } from '../core/errors.ts';

export type Attributes = Record<string, string>;

/** The root element of the provider's feed. */
export const FEED_ROOT = 'eventList';

/**
 * A well-formed document that is not the feed: its root element is not `<eventList>`. An
 * invalid file (nothing of it is stored), but unlike bad bytes it is the provider's trouble
 * (an error page served with 200), so a sync retries it as it does an HTTP 5xx.
 */
export class FeedRootError extends InvalidFileError {
  readonly root: string;
  constructor(root: string) {
    const shown = root.length > 100 ? `${root.slice(0, 100)}…` : root;
    super(`the document's root element is <${shown}>, not <${FEED_ROOT}>: not the event feed (an error or maintenance page?)`);
    this.root = root;
  }
}

/**
 * Longest tag, with the text and comments since the tag before it, in characters (1 Mi): far
 * above any real one (a zone tag is ~100 characters, a base event's ~300), far below a heap.
 */
export const MAX_TOKEN_CHARS = 1 << 20;

/** Longest `<event>...</event>`, in characters (16 Mi): 10,000 zones of ~100 characters fit 16 times. */
export const MAX_EVENT_CHARS = 1 << 24;

/** One `<event>` with its base event's and zones' attributes, as text. */
export interface RawFeedEvent {
  /** Line of the `<event>` tag (1-based), for rejects. */
  line: number;
  base: Attributes;
  event: Attributes;
  zones: Attributes[];
  /** Zones past `maxZonesPerEvent` were dropped (the event should be rejected). */
  truncatedZones: boolean;
  /** The event ran past MAX_EVENT_CHARS: zones after that point were dropped (the event should be rejected). */
  oversized: boolean;
}

export interface XmlEventsReaderOptions {
  /** Zones kept per event before the rest are dropped (default 10,000). */
  maxZonesPerEvent?: number;
  /** Deepest element nesting accepted (default MAX_FEED_DEPTH). */
  maxDepth?: number;
}

/**
 * Deepest element nesting accepted (64). The provider's feed needs 5 (`eventList > output >
 * base_event > event > zone`). saxes keeps a stack of the open elements: `<eventList>`
 * followed by millions of `<a>` grew it without bound (30 MB of them took 2.9 GB and killed
 * `sluice serve`). Deeper fails as an invalid file, like a tag over MAX_TOKEN_CHARS.
 */
export const MAX_FEED_DEPTH = 64;

/** Characters looked at for an HTML doctype before the parser gets them (an XML declaration, then `<!DOCTYPE html`). */
const HEAD_CHARS = 128;
/** An HTML document's start, in any case: a BOM, white space and an XML declaration may come first. */
const HTML_DOCTYPE = /^\ufeff?\s*(<\?xml[^>]*\?>\s*)?<!doctype\s+html(\s|>)/i;

/**
 * A 200 answer that declares itself an HTML document (`<!DOCTYPE html>`, XHTML's `<!DOCTYPE
 * html PUBLIC …>`): a maintenance or error page, a FeedRootError, so the sync retries it as
 * it does an HTTP 5xx. Every other DOCTYPE is refused (XXE, entity expansion).
 */
export class HtmlPageError extends FeedRootError {
  constructor() {
    super('html');
    this.message = 'the document declares <!DOCTYPE html>: an HTML page, not the event feed (an error or maintenance page?)';
  }
}

export class XmlEventsReader {
  private readonly parser = new SaxesParser({ xmlns: false, position: true });
  private readonly decoder = new TextDecoder('utf-8', { fatal: true });
  private readonly maxZones: number;
  private readonly maxDepth: number;
  /** Elements open now. */
  private depth = 0;
  /**
   * The document's first characters, held back from the parser until they tell whether it
   * is an HTML page: HTML5's `<!doctype html>` is not XML (saxes calls a lower-case doctype
   * malformed, which is not retried), so it is recognised here first.
   */
  private head: string | undefined = '';
  private base: Attributes | undefined;
  private current: RawFeedEvent | undefined;
  private sawRoot = false;
  private nonBlank = false;
  private failure: Error | undefined;
  /** Characters given to the parser so far, and where the last tag ended. */
  private chars = 0;
  private tokenEnd = 0;
  /** Where the current event's tag ended. */
  private eventStart = 0;
  /** Bytes given to `write` so far. */
  bytes = 0;

  constructor(onEvent: (event: RawFeedEvent) => void, options: XmlEventsReaderOptions = {}) {
    this.maxZones = options.maxZonesPerEvent ?? 10_000;
    this.maxDepth = options.maxDepth ?? MAX_FEED_DEPTH;
    const p = this.parser;
    p.on('doctype', (doctype: string) => {
      const name = /^\s*(\S+)/.exec(doctype)?.[1] ?? '';
      if (/^html$/i.test(name)) throw new HtmlPageError();
      throw new InvalidFileError('the feed declares a DOCTYPE: DTDs and entities are refused');
    });
    p.on('error', (err) => {
      // saxes continues after an error unless we stop it: the first one ends the feed.
      throw new InvalidFileError(`malformed XML: ${err.message}`, { cause: err });
    });
    // What saxes holds (a tag's name and attributes, a comment, an entity name) lies between the
    // end of one tag and the end of the next, so that span is what is bounded; the text in it
    // (whitespace, in a feed) counts too. No handler for text or comments to end the span
    // earlier: each handler is a property added to the parser, and past seven of them V8 turns
    // it into a dictionary object, which made parsing 4 times slower (measured, Node 24).
    const ended = () => {
      if (p.position - this.tokenEnd > MAX_TOKEN_CHARS) throw this.tooLong();
      this.tokenEnd = p.position;
    };
    p.on('opentag', (tag: SaxesTagPlain) => {
      ended();
      // Thrown inside the chunk's parse: the stack never holds more than the limit.
      if (++this.depth > this.maxDepth) {
        throw new InvalidFileError(`the feed nests elements more than ${this.maxDepth} deep (at line ${p.line}; the event feed needs 5): not read further`);
      }
      if (!this.sawRoot && tag.name !== FEED_ROOT) throw new FeedRootError(tag.name);
      this.sawRoot = true;
      switch (tag.name) {
        case 'base_event':
          this.base = tag.attributes;
          break;
        case 'event':
          // An event outside a base event has no title or sell mode: it is read with an
          // empty base and rejected by validation, not silently dropped.
          this.current = { line: p.line, base: this.base ?? {}, event: tag.attributes, zones: [], truncatedZones: false, oversized: false };
          this.eventStart = p.position;
          break;
        case 'zone':
          if (!this.current) break;
          if (p.position - this.eventStart > MAX_EVENT_CHARS) this.current.oversized = true;
          else if (this.current.zones.length < this.maxZones) this.current.zones.push(tag.attributes);
          else this.current.truncatedZones = true;
          break;
        default:
          break;
      }
    });
    p.on('closetag', (tag) => {
      ended();
      this.depth--;
      if (tag.name === 'event' && this.current) {
        const e = this.current;
        this.current = undefined;
        onEvent(e);
      } else if (tag.name === 'base_event') {
        this.base = undefined;
      }
    });
  }

  /** Parses the next chunk; throws InvalidFileError on bad UTF-8, bad XML, a DOCTYPE, a root other than `<eventList>` or a tag over MAX_TOKEN_CHARS. */
  write(chunk: Uint8Array | string): void {
    if (this.failure) throw this.failure;
    try {
      let text = typeof chunk === 'string' ? chunk : this.decoder.decode(chunk, { stream: true });
      this.bytes += typeof chunk === 'string' ? Buffer.byteLength(chunk) : chunk.byteLength;
      if (this.head !== undefined) {
        this.head += text;
        if (HTML_DOCTYPE.test(this.head)) throw new HtmlPageError();
        if (this.head.length < HEAD_CHARS) return;
        text = this.head;
        this.head = undefined;
      }
      this.parse(text);
    } catch (err) {
      this.failure = asFileError(err);
      throw this.failure;
    }
  }

  /** Gives `text` to the parser. */
  private parse(text: string): void {
    if (!this.nonBlank && /\S/.test(text)) this.nonBlank = true;
    this.parser.write(text);
    this.chars += text.length;
    // A tag still open: checked per chunk, so the parser holds at most the limit and one
    // chunk more (a tag that ends inside the chunk was checked as it ended).
    if (this.chars - this.tokenEnd > MAX_TOKEN_CHARS) throw this.tooLong();
  }

  private tooLong(): InvalidFileError {
    return new InvalidFileError(`a tag of the feed (with the text or comments before it) is longer than ${MAX_TOKEN_CHARS} characters (at line ${this.parser.line})`);
  }

  /** Ends the document; throws if it is empty, truncated or malformed. */
  end(): void {
    if (this.failure) throw this.failure;
    try {
      if (this.head !== undefined) {
        // A document shorter than the head: given to the parser now.
        const head = this.head;
        this.head = undefined;
        this.parse(head);
      }
    } catch (err) {
      this.failure = asFileError(err);
      throw this.failure;
    }
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
