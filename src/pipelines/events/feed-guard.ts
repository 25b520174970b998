/**
 * A byte-level look at the feed's markup, run on each chunk before the XML reader parses it,
 * for two things the reader cannot bound or tell apart by itself:
 *
 * - Nesting depth. saxes keeps a stack of the open elements, so `<eventList>` followed by
 *   millions of `<a>` grew it without bound (30 MB of them took 2.9 GB and killed `sluice
 *   serve`). A feed nested deeper than MAX_FEED_DEPTH fails as an invalid file, like a tag
 *   over the reader's length limit: nothing of it is stored, and it is not retried. It is
 *   checked before the reader sees the chunk, so the stack never holds more than the limit.
 * - An HTML page. A DOCTYPE naming `html` (`<!DOCTYPE html>`, XHTML's `<!DOCTYPE html PUBLIC
 *   …>`) is a maintenance or error page served with 200: it fails as HtmlPageError, a
 *   FeedRootError, so the sync retries it as it does an HTTP 5xx. Every other DOCTYPE is left
 *   to the reader, which refuses it (XXE, entity expansion); this guard reads no declaration
 *   past the DOCTYPE's name.
 *
 * It only counts: a tag opened, closed or self-closed, skipping quoted attribute values,
 * comments, CDATA sections and processing instructions. Bytes are enough, since UTF-8 never
 * puts an ASCII byte inside a multi-byte character. Malformed markup is not its concern: the
 * reader fails on it within the same chunk, and up to that point the counts match saxes'.
 */
import { InvalidFileError } from '../../core/errors.ts';
import { FeedRootError } from '../../formats/xml-events-reader.ts';

/**
 * Deepest element nesting accepted (64). The provider's feed needs 5 (`eventList > output >
 * base_event > event > zone`).
 */
export const MAX_FEED_DEPTH = 64;

/** A 200 answer that declares itself an HTML document: a maintenance page, retried like a 5xx. */
export class HtmlPageError extends FeedRootError {
  constructor(doctypeName: string) {
    super(doctypeName);
    this.message = `the document declares <!DOCTYPE ${doctypeName}>: an HTML page, not the event feed (an error or maintenance page?)`;
  }
}

const LT = 0x3c; // <
const GT = 0x3e; // >
const SLASH = 0x2f;
const QUOTE = 0x22;
const APOS = 0x27;
const BANG = 0x21;
const QUESTION = 0x3f;
const DASH = 0x2d;
const RBRACKET = 0x5d;
const LBRACKET = 0x5b;

// States of the scan (plain numbers: Node's type stripping has no enums).
/** Between tags. */
const TEXT = 0;
/** After `<`. */
const OPEN = 1;
/** In a start tag, outside quotes. */
const START_TAG = 2;
/** In a quoted attribute value (`quote` says which). */
const QUOTED = 3;
/** In an end tag, or in markup skipped to its `>`. */
const TO_GT = 4;
/** After `<!`, until the kind of declaration is known. */
const DECL = 5;
const COMMENT = 6;
const CDATA = 7;
/** After `<?`. */
const PI = 8;
/** After `<!DOCTYPE`, reading its name. */
const DOCTYPE = 9;
/** After a DOCTYPE the reader refuses: nothing more to count. */
const DONE = 10;

const isSpace = (b: number) => b === 0x20 || b === 0x09 || b === 0x0a || b === 0x0d;

export class FeedGuard {
  private readonly maxDepth: number;
  private state: number = TEXT;
  private depth = 0;
  /** Bytes seen in earlier chunks. */
  private offset = 0;
  private quote = QUOTE;
  /** In a start tag: the last byte outside quotes was `/`. */
  private slash = false;
  /** Trailing `-` (comment), `]` (CDATA) or `?` (PI) bytes just seen. */
  private run = 0;
  /** What follows `<!` so far, or the DOCTYPE's name. */
  private text = '';

  /** `maxDepth`: deepest nesting accepted (default MAX_FEED_DEPTH). */
  constructor(maxDepth = MAX_FEED_DEPTH) {
    this.maxDepth = maxDepth;
  }

  /**
   * Looks at the next chunk. Throws InvalidFileError when the nesting goes past the limit,
   * HtmlPageError on a DOCTYPE naming html.
   */
  write(chunk: Uint8Array): void {
    const n = chunk.length;
    const max = this.maxDepth;
    // The hot loop, on locals: a feed is almost all start tags, end tags and whitespace, and
    // this costs about 2 ns a byte (0.17-0.2 s for the benchmark's 97 MB feed, which the reader
    // parses in about 2 s: measured, Node 24).
    let state = this.state;
    let depth = this.depth;
    let slash = this.slash;
    let quote = this.quote;
    let i = 0;
    try {
      while (i < n) {
        if (state === TEXT) {
          while (i < n && chunk[i] !== LT) i++;
          if (i === n) break;
          i++;
          state = OPEN;
        } else if (state === OPEN) {
          const b = chunk[i++]!;
          if (b === SLASH) {
            depth -= 1;
            state = TO_GT;
          } else if (b === BANG || b === QUESTION) {
            state = b === BANG ? DECL : PI;
            this.text = '';
            this.run = 0;
          } else {
            if (++depth > max) {
              throw new InvalidFileError(`the feed nests elements more than ${max} deep (at byte ${this.offset + i - 1}; the event feed needs 5): not read further`);
            }
            slash = false;
            // `<>` is malformed: the reader fails on it.
            state = b === GT ? TEXT : START_TAG;
          }
        } else if (state === START_TAG) {
          while (i < n) {
            const b = chunk[i++]!;
            if (b === QUOTE || b === APOS) {
              quote = b;
              state = QUOTED;
              break;
            } else if (b === GT) {
              if (slash) depth -= 1; // `<zone … />`
              state = TEXT;
              break;
            }
            slash = b === SLASH;
          }
        } else if (state === QUOTED) {
          while (i < n && chunk[i] !== quote) i++;
          if (i === n) break;
          i++;
          slash = false;
          state = START_TAG;
        } else if (state === TO_GT) {
          while (i < n && chunk[i] !== GT) i++;
          if (i === n) break;
          i++;
          state = TEXT;
        } else if (state === DONE) {
          break;
        } else {
          state = this.declaration(state, chunk[i++]!);
        }
      }
    } finally {
      this.state = state;
      this.depth = depth;
      this.slash = slash;
      this.quote = quote;
      this.offset += n;
    }
  }

  /** The next state after byte `b` of a comment, CDATA section, PI or DOCTYPE (rare: byte by byte). */
  private declaration(state: number, b: number): number {
    switch (state) {
      case DECL:
        this.text += String.fromCharCode(b);
        if (this.text === '--') return COMMENT;
        if (this.text === '[CDATA[') return CDATA;
        // `<!doctype html>` (HTML5's spelling) is no XML, but it is a page all the same.
        if (this.text.toUpperCase() === 'DOCTYPE') {
          this.text = '';
          return DOCTYPE;
        }
        // Anything else after `<!` is malformed here: the reader fails on it.
        return ['--', '[CDATA[', 'DOCTYPE'].some((d) => d.startsWith(this.text.toUpperCase())) ? DECL : TO_GT;
      case COMMENT:
      case CDATA:
        if (b === GT && this.run >= 2) return TEXT;
        this.run = b === (state === COMMENT ? DASH : RBRACKET) ? this.run + 1 : 0;
        return state;
      case PI:
        if (b === GT && this.run > 0) return TEXT;
        this.run = b === QUESTION ? 1 : 0;
        return state;
      case DOCTYPE:
        if (isSpace(b) && this.text === '') return state;
        if (isSpace(b) || b === GT || b === LBRACKET || this.text.length > 16) {
          if (this.text.toLowerCase() === 'html') throw new HtmlPageError(this.text);
          return DONE; // any other DOCTYPE: the reader refuses it when it ends
        }
        this.text += String.fromCharCode(b);
        return state;
      default:
        throw new Error(`feed guard: unknown state ${state}`);
    }
  }
}
