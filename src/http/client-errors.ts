/**
 * Requests Node's HTTP parser cannot read (a malformed chunk, a bad Content-Length, headers
 * too large, a request timeout): Fastify's own answer had another body,
 * `{"error":"Bad Request","message":"Client Error","statusCode":400}`, and was written even
 * when an earlier request of the connection was still being answered (a pipelined upload):
 * the client then read that 400 as the upload's answer while the upload was accepted, and a
 * retry imported the file twice. Now:
 * - with a request of the connection still unanswered, the connection is cut and nothing
 *   is written (the client sees the connection fail, not a wrong answer);
 * - otherwise the answer is in Sluice's one error form, `{"error":{"code","message"}}`,
 *   and the connection is closed.
 */
import { STATUS_CODES } from 'node:http';
import type { Socket } from 'node:net';
import type { FastifyInstance } from 'fastify';
import { errorBody } from './errors.ts';

/** Requests of each connection received and not yet answered. */
const unanswered = new WeakMap<object, number>();

function count(socket: object | undefined, by: number): void {
  if (!socket) return;
  const n = (unanswered.get(socket) ?? 0) + by;
  if (n > 0) unanswered.set(socket, n);
  else unanswered.delete(socket);
}

/** Counts each connection's unanswered requests (clientErrorHandler reads them). */
export function trackUnanswered(app: FastifyInstance): void {
  app.addHook('onRequest', async (req) => count(req.raw.socket, 1));
  app.addHook('onResponse', async (req) => count(req.raw.socket, -1));
}

export function clientErrorHandler(err: NodeJS.ErrnoException, socket: Socket): void {
  if (err.code === 'ECONNRESET' || socket.destroyed) return;
  if ((unanswered.get(socket) ?? 0) > 0 || !socket.writable) {
    socket.destroy(err);
    return;
  }
  const status = err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 408 : err.code === 'HPE_HEADER_OVERFLOW' ? 431 : 400;
  const message =
    status === 408 ? 'the request did not arrive in time'
    : status === 431 ? 'the request headers are too large'
    : `malformed HTTP request${err.code ? ` (${err.code})` : ''}`;
  const body = JSON.stringify(errorBody('invalid_input', message));
  socket.end(
    `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nContent-Type: application/json; charset=utf-8\r\n` +
      `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
  );
  socket.destroySoon();
}
