/**
 * POST /visits and POST /visits/batch: take page visits, answer 202 once they are durably
 * committed (group commit, src/pipelines/visits/ingest-buffer.ts). A 202 therefore means
 * "stored"; a 503 means "not acknowledged, retry" (the visits may or may not be stored).
 *
 * Visitor cookie: a visit without visitor_id belongs to the visitor of the `sluice_visitor`
 * cookie, which is minted (a random UUID, like the original app's session id) when absent.
 */
import { randomUUID, timingSafeEqual } from 'node:crypto';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { intEnv } from '../../config.ts';
import { SluiceError } from '../../core/errors.ts';
import { IngestBuffer, type IngestOptions } from '../../pipelines/visits/ingest-buffer.ts';
import { visitsRejected } from '../../pipelines/visits/metrics.ts';
import { VisitorApplier } from '../../pipelines/visits/visitor-applier.ts';
import { parseBatch, parseBatchText, parseVisit, type Visit } from '../../pipelines/visits/visit.ts';
import type { AppContext } from '../context.ts';
import { HttpError } from '../errors.ts';

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

  // Encapsulated: the NDJSON parser and the close hook stay out of other features' routes.
  app.register(async (scope) => {
    const applier = new VisitorApplier(ctx.pool);
    const buffer = new IngestBuffer(ctx.pool, { ...options.ingest, onFlushed: () => applier.poke() });
    // Runs after the server stopped accepting requests: everything received gets flushed,
    // then the visitor updates those flushes queued get applied.
    scope.addHook('onClose', async () => {
      await buffer.close();
      await applier.close();
    });

    // NDJSON, and text/plain (what navigator.sendBeacon sends), arrive as text; a JSON
    // string literal sent as application/json must not be mistaken for them.
    for (const type of ['application/x-ndjson', 'application/ndjson', 'application/jsonl', 'text/plain']) {
      scope.addContentTypeParser(type, { parseAs: 'string' }, (_req, body, done) => done(null, new TextBody(String(body))));
    }

    scope.post('/visits', { bodyLimit: visitBytes }, async (req, reply) => {
      requireToken(ctx, req);
      const receivedAt = Date.now();
      const visitor = cookieVisitor(req, reply);
      let visit: Visit;
      try {
        visit = parseVisit(req.body instanceof TextBody ? parseJsonText(req.body.text) : req.body, receivedAt, visitor);
      } catch (err) {
        visitsRejected.inc({ reason: 'invalid' });
        throw err;
      }
      await buffer.add([visit]);
      return reply.status(202).send({ accepted: 1 });
    });

    scope.post('/visits/batch', { bodyLimit: batchBytes }, async (req, reply) => {
      requireToken(ctx, req);
      const receivedAt = Date.now();
      const visitor = cookieVisitor(req, reply);
      let visits: Visit[];
      try {
        visits = req.body instanceof TextBody ? parseBatchText(req.body.text, receivedAt, visitor, batchMax) : parseBatch(req.body, receivedAt, visitor, batchMax);
      } catch (err) {
        visitsRejected.inc({ reason: 'invalid' });
        throw err;
      }
      await buffer.add(visits);
      return reply.status(202).send({ accepted: visits.length });
    });
  });
}

/** A body that arrived as text (NDJSON, text/plain), as opposed to parsed JSON. */
class TextBody {
  readonly text: string;
  constructor(text: string) {
    this.text = text;
  }
}

function parseJsonText(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new HttpError(400, 'invalid_input', `the body is not valid JSON: ${(err as Error).message}`);
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

/** With SLUICE_API_TOKEN set, writes need `Authorization: Bearer <token>`. */
function requireToken(ctx: AppContext, req: FastifyRequest): void {
  if (!ctx.apiToken) return;
  const given = Buffer.from(req.headers.authorization ?? '');
  const wanted = Buffer.from(`Bearer ${ctx.apiToken}`);
  if (given.length !== wanted.length || !timingSafeEqual(given, wanted)) {
    throw new SluiceError('unauthorized', 'missing or wrong API token (Authorization: Bearer ...)');
  }
}
