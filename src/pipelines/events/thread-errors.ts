/**
 * Errors across the parse thread's boundary (parse-worker.ts to parse-thread.ts). postMessage
 * clones an Error as a plain Error: its class, and so what `retryable()` in sync.ts decides
 * from it, would be lost (a maintenance page, FeedRootError, is retried; malformed XML,
 * InvalidFileError, is not). So the thread sends the class's name and what its constructor
 * needs, and the main thread builds the same class again, with the same message.
 */
import { InvalidFileError } from '../../core/errors.ts';
import { FeedRootError, HtmlPageError } from '../../formats/xml-events-reader.ts';

/** An error as it crosses the boundary. */
export interface WireError {
  kind: 'HtmlPageError' | 'FeedRootError' | 'InvalidFileError' | 'Error';
  message: string;
  /** FeedRootError's root element. */
  root?: string;
  /** The cause's message (saxes' own error, a TextDecoder's TypeError). */
  cause?: string;
  /** The thread's stack, for an unexpected error (a bug is found where it was thrown). */
  stack?: string;
}

/** `err` as the thread sends it. Subclasses first: an HtmlPageError is a FeedRootError is an InvalidFileError. */
export function toWire(err: unknown): WireError {
  const message = err instanceof Error ? err.message : String(err);
  const cause = err instanceof Error && err.cause instanceof Error ? { cause: err.cause.message } : {};
  if (err instanceof HtmlPageError) return { kind: 'HtmlPageError', message };
  if (err instanceof FeedRootError) return { kind: 'FeedRootError', message, root: err.root };
  if (err instanceof InvalidFileError) return { kind: 'InvalidFileError', message, ...cause };
  return { kind: 'Error', message, ...cause, ...(err instanceof Error && err.stack ? { stack: err.stack } : {}) };
}

/** The error `toWire` described, of the same class, with the same message. */
export function fromWire(w: WireError): Error {
  const options = w.cause === undefined ? undefined : { cause: new Error(w.cause) };
  let err: Error;
  switch (w.kind) {
    case 'HtmlPageError':
      err = new HtmlPageError();
      break;
    case 'FeedRootError':
      err = new FeedRootError(w.root ?? '');
      break;
    case 'InvalidFileError':
      err = new InvalidFileError(w.message, options);
      break;
    default:
      err = new Error(w.message, options);
      if (w.stack) err.stack = w.stack;
  }
  // The constructors above build the same text; the thread's is the truth if they ever differ.
  err.message = w.message;
  return err;
}
