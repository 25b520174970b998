/**
 * The small error vocabulary of Sluice. Every error a user can see has a stable `code`;
 * HTTP maps it to a status in one place (src/http/errors.ts). Per-row problems are not
 * errors: they are rejects (data), see src/load/rejects.ts.
 */
export type ErrorCode =
  | 'invalid_input'
  | 'invalid_file'
  | 'not_found'
  | 'conflict'
  | 'unauthorized'
  | 'forbidden'
  | 'too_large'
  | 'unavailable'
  | 'internal';

export class SluiceError extends Error {
  readonly code: ErrorCode;
  /** When trying again may succeed, in seconds (HTTP: the Retry-After header). */
  readonly retryAfter: number | undefined;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown; retryAfter?: number }) {
    super(message, options);
    this.code = code;
    this.retryAfter = options?.retryAfter;
    this.name = new.target.name;
  }
}

/** Bad arguments, parameters or request bodies (HTTP 400, CLI exit 2). */
export class InvalidInputError extends SluiceError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('invalid_input', message, options);
  }
}

/** A file that cannot be imported as a whole (no key column, binary, bad encoding...). */
export class InvalidFileError extends SluiceError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('invalid_file', message, options);
  }
}

export class NotFoundError extends SluiceError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('not_found', message, options);
  }
}

/** Retrying will not help (bad data, bad configuration); jobs fail at once. */
export class NonRetryableError extends SluiceError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('internal', message, options);
  }
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
