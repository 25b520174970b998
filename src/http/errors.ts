/**
 * One place maps errors to HTTP: `{"error":{"code","message"}}` with a 4xx/5xx status.
 * Raw database errors never reach a response: a database out of reach is a 503
 * "unavailable", anything else unknown a 500 "internal error".
 */
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import { SluiceError, type ErrorCode } from '../core/errors.ts';
import { isDatabaseUnavailable } from '../db/unavailable.ts';
import { awaitsContinue } from './continue.ts';
import { DRAIN_MAX_BYTES, drainRequest } from './drain.ts';

const STATUS: Record<ErrorCode, number> = {
  invalid_input: 400,
  invalid_file: 400,
  unauthorized: 401,
  forbidden: 403,
  not_found: 404,
  conflict: 409,
  too_large: 413,
  unavailable: 503,
  internal: 500,
};

/** An error with an explicit HTTP status (hono's HTTPException). */
export class HttpError extends SluiceError {
  readonly status: number;
  constructor(status: number, code: ErrorCode, message: string) {
    super(code, message);
    this.status = status;
  }
}

/** The message of a 503 for a database out of reach (restarting, connection lost). */
export const DATABASE_UNAVAILABLE = 'the database is unavailable; try again shortly';

export function errorBody(code: string, message: string) {
  return { error: { code, message } };
}

export function handleError(err: FastifyError | Error, req: FastifyRequest, reply: FastifyReply) {
  if (err instanceof SluiceError && err.retryAfter !== undefined) {
    // An error that knows when to try again (a server busy with as many uploads as it takes,
    // src/intake/accept.ts) says so in Retry-After, and closes the connection: a busy server
    // does not read the refused body (it may be gigabytes).
    reply.header('retry-after', String(err.retryAfter)).header('connection', 'close');
  } else if (!req.raw.complete && awaitsContinue(req.raw)) {
    // Refused before its `100 Continue`: the client never sent the body (continue.ts).
    reply.header('connection', 'close');
  } else if (!req.raw.complete && Number(req.headers['content-length']) > DRAIN_MAX_BYTES) {
    // A body announced bigger than the drain would read: not read at all, the connection
    // closed (a client writing it all before reading may then see a reset, not the answer).
    reply.header('connection', 'close');
  } else if (!req.raw.complete) {
    // Answered before the body was read to its end: the rest is read and dropped (bounded),
    // so the client gets this answer and the connection its next request (drain.ts).
    drainRequest(req.raw);
  }
  if (err instanceof HttpError) return reply.status(err.status).send(errorBody(err.code, err.message));
  if (err instanceof SluiceError) return reply.status(STATUS[err.code]).send(errorBody(err.code, err.message));
  const fe = err as FastifyError;
  // Fastify's own client errors (bad JSON, body too large, bad content type...).
  if (typeof fe.statusCode === 'number' && fe.statusCode >= 400 && fe.statusCode < 500) {
    const code = fe.statusCode === 413 ? 'too_large' : fe.statusCode === 401 ? 'unauthorized' : 'invalid_input';
    return reply.status(fe.statusCode).send(errorBody(code, fe.message));
  }
  // The database restarting or out of reach: the request may succeed again soon.
  if (isDatabaseUnavailable(err)) {
    req.log.warn({ err }, 'database unavailable');
    return reply.status(503).send(errorBody('unavailable', DATABASE_UNAVAILABLE));
  }
  req.log.error({ err }, 'request failed');
  return reply.status(500).send(errorBody('internal', 'internal error'));
}
