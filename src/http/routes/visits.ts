/**
 * POST /visits and POST /visits/batch: take page visits, answer 202 once they are durably
 * committed (group commit, src/pipelines/visits/ingest-buffer.ts). A 202 therefore means
 * "stored"; a 503 means "not acknowledged, retry" (the visits may or may not be stored).
 *
 * Visitor cookie: a visit without visitor_id belongs to the visitor of the `sluice_visitor`
 * cookie, which is minted (a random UUID, like the original app's session id) when absent.
 */
import { randomUUID } from 'node:crypto';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { intEnv } from '../../config.ts';
import { InvalidInputError } from '../../core/errors.ts';
import { IngestBuffer, type IngestOptions } from '../../pipelines/visits/ingest-buffer.ts';
import { invalidVisitRequests } from '../../pipelines/visits/metrics.ts';
import { VisitorApplier } from '../../pipelines/visits/visitor-applier.ts';
import { parseBatch, parseBatchText, parseVisit, type Visit } from '../../pipelines/visits/visit.ts';
import type { AppContext } from '../context.ts';
import { addOpenApi } from '../openapi.ts';
import { visitsOpenApi } from './visits-openapi.ts';

export const VISITOR_COOKIE = 'sluice_visitor';
const COOKIE_VALUE = /^[A-Za-z0-9-]{1,128}$/;
const COOKIE_MAX_AGE = 365 * 86_400;

export interface VisitsRouteOptions {
  ingest?: IngestOptions;
  /** Most visits in one batch request (default SLUICE_VISITS_BATCH_MAX or 10,000). */
  batchMax?: number;
  /** Largest batch body in bytes (default SLUICE_VISITS_BATCH_BYTES or 8 MiB). */
  batchBytes?: number;
  /** Largest single-visit body in bytes (default 16 KiB). */
  visitBytes?: number;
}

export function visitsRoutes(app: FastifyInstance, ctx: AppContext, options: VisitsRouteOptions = {}): void {
  const batchMax = options.batchMax ?? intEnv('SLUICE_VISITS_BATCH_MAX', 10_000);
  const batchBytes = options.batchBytes ?? intEnv('SLUICE_VISITS_BATCH_BYTES', 8 << 20);
  const visitBytes = options.visitBytes ?? 16 << 10;
  addOpenApi(visitsOpenApi);

  // Encapsulated: the body parsers and the close hook stay out of other features' routes.
  // The token is checked by the server's guardRoutes (src/http/auth.ts) onRequest: a request
  // without it is refused (401) before its body is read, so neither its size (413), its type
  // (415) nor its content (400) is looked at, and an 8 MiB body is never parsed for an
  // anonymous client.
  app.register(async (scope) => {
    const applier = new VisitorApplier(ctx.pool);
    const buffer = new IngestBuffer(ctx.pool, { ...options.ingest, onFlushed: () => applier.poke() });
    // Runs after the server stopped accepting requests: everything received gets flushed,
    // then the visitor updates those flushes queued get applied.
    scope.addHook('onClose', async () => {
      await buffer.close();
      await applier.close();
    });

    // Bodies are taken as bytes and decoded in the handler as strict UTF-8: a decoder that
    // replaces invalid bytes with U+FFFD (what Fastify's parsers do) would store something
    // else than was sent, and make distinct ids equal. NDJSON, and text/plain (what
    // navigator.sendBeacon sends), are text; a JSON string literal sent as application/json
    // must not be mistaken for them.
    scope.removeContentTypeParser('application/json');
    scope.addContentTypeParser('application/json', { parseAs: 'buffer' }, (_req, body, done) => done(null, new RawBody(body as Buffer, true)));
    for (const type of ['application/x-ndjson', 'application/ndjson', 'application/jsonl', 'text/plain']) {
      scope.addContentTypeParser(type, { parseAs: 'buffer' }, (_req, body, done) => done(null, new RawBody(body as Buffer, false)));
    }

    scope.post('/visits', { bodyLimit: visitBytes }, async (req, reply) => {
      const receivedAt = Date.now();
      const visitor = cookieVisitor(req, reply);
      let visit: Visit;
      try {
        visit = parseVisit(parseJson(bodyText(req.body)), receivedAt, visitor);
      } catch (err) {
        invalidVisitRequests.inc();
        throw err;
      }
      await buffer.add([visit]);
      return reply.status(202).send({ accepted: 1 });
    });

    scope.post('/visits/batch', { bodyLimit: batchBytes }, async (req, reply) => {
      const receivedAt = Date.now();
      const visitor = cookieVisitor(req, reply);
      let visits: Visit[];
      try {
        const text = bodyText(req.body);
        visits = (req.body as RawBody).json
          ? parseBatch(parseJson(text), receivedAt, visitor, batchMax)
          : parseBatchText(text, receivedAt, visitor, batchMax);
      } catch (err) {
        invalidVisitRequests.inc();
        throw err;
      }
      await buffer.add(visits);
      return reply.status(202).send({ accepted: visits.length });
    });
  });
}

/** A body as received: its bytes, and whether it was sent as application/json (else NDJSON or text). */
class RawBody {
  readonly bytes: Buffer;
  readonly json: boolean;
  constructor(bytes: Buffer, json: boolean) {
    this.bytes = bytes;
    this.json = json;
  }
}

// fatal: invalid UTF-8 throws instead of becoming U+FFFD (RFC 8259 section 8.1: JSON is UTF-8).
const UTF8 = new TextDecoder('utf-8', { fatal: true });

/** The body's text; a request without a body (no content type) has none. */
function bodyText(body: unknown): string {
  if (!(body instanceof RawBody)) throw new InvalidInputError('the body is missing (send application/json, NDJSON or text/plain)');
  try {
    return UTF8.decode(body.bytes);
  } catch (err) {
    throw new InvalidInputError('the body is not valid UTF-8', { cause: err });
  }
}

/**
 * JSON.parse is enough: visits are checked field by field (an unknown key such as
 * "__proto__" is refused) and never merged into other objects.
 */
function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new InvalidInputError(`the body is not valid JSON: ${(err as Error).message}`, { cause: err });
  }
}

/**
 * The visitor id for visits that carry none: the cookie's, else a new UUID set as cookie.
 * Lazy, so requests whose visits all name their visitor never get a cookie.
 */
function cookieVisitor(req: FastifyRequest, reply: FastifyReply): () => string {
  let id: string | undefined;
  return () => {
    if (id) return id;
    id = readCookie(req.headers.cookie, VISITOR_COOKIE);
    if (!id || !COOKIE_VALUE.test(id)) {
      id = randomUUID();
      reply.header('set-cookie', `${VISITOR_COOKIE}=${id}; Path=/; Max-Age=${COOKIE_MAX_AGE}; HttpOnly; SameSite=Lax`);
    }
    return id;
  };
}

/** One cookie's value from a Cookie header (RFC 6265 section 5.4 syntax). */
export function readCookie(header: string | undefined, name: string): string | undefined {
  if (!header) return undefined;
  for (const part of header.split(';')) {
    const eq = part.indexOf('=');
    if (eq < 0) continue;
    if (part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim().replace(/^"(.*)"$/, '$1');
  }
  return undefined;
}
