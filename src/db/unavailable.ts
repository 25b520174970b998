/**
 * Errors that mean "the database cannot be reached right now" (it is restarting, the
 * connection was cut, the network dropped): worth retrying after a backoff, and answered
 * 503 by the HTTP server rather than 500 (src/http/errors.ts, src/pipelines/visits/flush.ts).
 */

/** SQLSTATEs and Node errnos of a database that went away or is not taking connections. */
const UNAVAILABLE_CODES: ReadonlySet<string> = new Set([
  '57P01', // admin_shutdown (also pg_terminate_backend)
  '57P02', // crash_shutdown
  '57P03', // cannot_connect_now (starting up, shutting down, in recovery)
  '08000', // connection_exception
  '08006', // connection_failure
  '08003', // connection_does_not_exist
  '08001', // sqlclient_unable_to_establish_sqlconnection; also ConnectTimeoutError's (below)
  'ECONNRESET',
  'ECONNREFUSED',
  'ETIMEDOUT',
  'EPIPE',
]);

/**
 * A connection that did not open within SLUICE_DB_CONNECT_TIMEOUT_MS (src/db/connection.ts):
 * the server out of reach (a partition dropping packets) or too busy to start a backend.
 * Its code is the standard's SQLSTATE for a client that cannot establish a connection
 * (08001, which PostgreSQL's JDBC driver gives a connect timeout), so it is "database
 * unavailable" wherever a refused connection is. Its message names the host, port
 * and database, never the password.
 */
export class ConnectTimeoutError extends Error {
  readonly code = '08001';
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ConnectTimeoutError';
  }
}

/**
 * node-pg reports a connection that went away without a word from the server (closed by a
 * proxy, a load balancer or the network) with a plain Error that has no `code`: these are
 * its messages (pg/lib/client.js).
 */
const LOST_CONNECTION = /^(Connection terminated|Client has encountered a connection error|Client was closed)/;

/** The SQLSTATE or errno of `err`; a Node AggregateError (one error per address tried) gives its first. */
export function errorCode(err: unknown): string | undefined {
  const e = err as { code?: unknown; errors?: unknown[] } | null;
  if (typeof e?.code === 'string' && e.code !== '') return e.code;
  return Array.isArray(e?.errors) ? errorCode(e.errors[0]) : undefined;
}

export function isDatabaseUnavailable(err: unknown): boolean {
  const code = errorCode(err);
  if (code !== undefined) return UNAVAILABLE_CODES.has(code);
  return err instanceof Error && LOST_CONNECTION.test(err.message);
}
