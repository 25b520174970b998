/**
 * GET /search: events of the provider feed in a time range, in the shape of the provider
 * API spec ("Fever Providers API" 1.0.0). Answers come from the search cache
 * (src/pipelines/events/search-cache.ts) and never wait on the provider: a sync failing,
 * slow or running does not touch this path.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { env } from '../../config.ts';
import { InvalidInputError } from '../../core/errors.ts';
import { DATABASE_UNAVAILABLE } from '../errors.ts';
import type { SearchRange } from '../../db/sql/events.ts';
import { isDatabaseUnavailable } from '../../db/unavailable.ts';
import { realDateTime, realOffset, storableYear } from '../../validate/values.ts';
import { SearchBatcher, searchKey } from '../../pipelines/events/search-batcher.ts';
import { SearchCache, type CacheMode } from '../../pipelines/events/search-cache.ts';
import type { AppContext } from '../context.ts';
import { addOpenApi } from '../openapi.ts';

// Date, or date-time with optional seconds, fraction and offset (RFC 3339 and its
// common relaxations: "2021-02-01", "2021-02-01T10:00", "2021-02-01 10:00:00Z").
const DATE_TIME = /^(\d{4})-(\d{2})-(\d{2})(?:[Tt ](\d{2}):(\d{2})(?::(\d{2})(\.\d{1,9})?)?(Z|z|[+-](\d{2}):?(\d{2}))?)?$/;

/**
 * Parses a search bound to the provider's local wall-clock time, `YYYY-MM-DDTHH:MM:SS[.ffffff]`.
 * Provider times carry no zone (they are the venue's local time), so an offset is accepted
 * but not applied: `2021-06-30T21:00:00+02:00` and `...Z` both mean 21:00 local.
 */
export function parseSearchBound(name: string, value: unknown): string | null {
  if (value === undefined || value === '') return null;
  if (typeof value !== 'string') throw new InvalidInputError(`${name} must be given once`);
  const m = DATE_TIME.exec(value);
  if (!m) throw new InvalidInputError(`${name} must be an ISO 8601 date-time, e.g. 2021-06-30T21:00:00Z; got ${JSON.stringify(value.slice(0, 64))}`);
  const [y, mo, d, h = '00', mi = '00', s = '00'] = m.slice(1, 7) as string[];
  // Postgres would refuse year 0000 in the search statement (a 500, and the statement is
  // shared with concurrent searches): refuse it here as the bad parameter it is.
  if (!storableYear(Number(y))) throw new InvalidInputError(`${name} must be in the years 0001-9999: ${value}`);
  if (!realDateTime(Number(y), Number(mo), Number(d), Number(h), Number(mi), Number(s))) {
    throw new InvalidInputError(`${name} is not a real date-time: ${value}`);
  }
  // Not applied, but held to the rule of POST /visits (src/pipelines/visits/visit.ts): hours
  // 00-23, minutes 00-59. `+25:00` passed here while /visits refused `+24:00`.
  if (m[9] !== undefined && !realOffset(Number(m[9]), Number(m[10]))) {
    throw new InvalidInputError(`${name} has an impossible UTC offset (hours 00-23, minutes 00-59): ${m[8]}`);
  }
  // One spelling per instant: microseconds at most (Postgres' precision), without trailing
  // zeros, so `21:00:00.000` is `21:00:00` and `.50` is `.5`. With fixed-width fields and a
  // fraction without trailing zeros, comparing two bounds as strings compares their instants
  // (parseSearch's `starts_at` after `ends_at`; it compared `…00.000` > `…00` and refused equal
  // times), and one instant has one cache key.
  const digits = m[7] ? m[7].slice(1, 7).replace(/0+$/, '') : '';
  return `${y}-${mo}-${d}T${h}:${mi}:${s}${digits ? `.${digits}` : ''}`;
}

function cacheMode(): CacheMode {
  const v = env('SLUICE_SEARCH_CACHE') ?? 'strict';
  if (v !== 'strict' && v !== 'notify' && v !== 'off') throw new InvalidInputError(`SLUICE_SEARCH_CACHE must be strict, notify or off; got ${v}`);
  return v;
}

interface ParsedSearch {
  /** The raw parameters this was parsed from. */
  rawStartsAt: string | undefined;
  rawEndsAt: string | undefined;
  range: SearchRange;
  /** Cache key: the normalised bounds. */
  key: string;
}

/** Parses and checks the query's bounds (throws InvalidInputError). */
function parseSearch(startsAtParam: unknown, endsAtParam: unknown): ParsedSearch {
  const startsAt = parseSearchBound('starts_at', startsAtParam);
  const endsAt = parseSearchBound('ends_at', endsAtParam);
  // Canonical bounds (parseSearchBound): string order is time order.
  if (startsAt && endsAt && startsAt > endsAt) throw new InvalidInputError('starts_at must not be after ends_at');
  const range = { startsAt, endsAt };
  return { rawStartsAt: startsAtParam as string | undefined, rawEndsAt: endsAtParam as string | undefined, range, key: searchKey(range) };
}

/**
 * Valid searches by their raw parameters: clients repeat the same few searches, and parsing
 * them (regex, calendar check, strings) was a few per cent of a cached answer's CPU.
 * Bounded: emptied when full.
 */
class ParsedSearches {
  private readonly entries = new Map<string, ParsedSearch>();
  private readonly max: number;
  constructor(max = 10_000) {
    this.max = max;
  }

  get(startsAtParam: unknown, endsAtParam: unknown): ParsedSearch {
    // Repeated parameters arrive as arrays: not remembered (parseSearch rejects them).
    if ((startsAtParam !== undefined && typeof startsAtParam !== 'string') || (endsAtParam !== undefined && typeof endsAtParam !== 'string')) {
      return parseSearch(startsAtParam, endsAtParam);
    }
    const raw = `${startsAtParam ?? ''}\n${endsAtParam ?? ''}`;
    const hit = this.entries.get(raw);
    if (hit && hit.rawStartsAt === startsAtParam && hit.rawEndsAt === endsAtParam) return hit;
    const parsed = parseSearch(startsAtParam, endsAtParam);
    if (this.entries.size >= this.max) this.entries.clear();
    this.entries.set(raw, parsed);
    return parsed;
  }
}

function errorReply(reply: FastifyReply, status: number, code: string, message: string) {
  return reply.status(status).send({ error: { code, message }, data: null });
}

export function searchRoutes(app: FastifyInstance, ctx: AppContext): void {
  const cache = new SearchCache(ctx.pool, { mode: cacheMode(), listenUrl: ctx.pool.options.connectionString });
  // Reads that reach Postgres (cache misses, or all with the cache off) share statements.
  const batcher = new SearchBatcher(ctx.pool);
  const parsed = new ParsedSearches();
  app.addHook('onReady', () => cache.start());
  app.addHook('onClose', () => cache.stop());
  addOpenApi(searchOpenApi);

  app.get('/search', async (req: FastifyRequest<{ Querystring: Record<string, unknown> }>, reply) => {
    let search: ParsedSearch;
    try {
      search = parsed.get(req.query.starts_at, req.query.ends_at);
    } catch (err) {
      if (err instanceof InvalidInputError) return errorReply(reply, 400, err.code, err.message);
      throw err;
    }
    try {
      const body = await cache.get(search.key, () => batcher.search(search.range, search.key));
      return reply.header('content-type', 'application/json; charset=utf-8').send(body);
    } catch (err) {
      // The database out of reach (restarting, connection lost): 503 "unavailable", as every
      // endpoint answers it (src/http/errors.ts), in the spec's error shape; retry shortly.
      if (isDatabaseUnavailable(err)) {
        req.log.warn({ err }, 'search: database unavailable');
        return errorReply(reply, 503, 'unavailable', DATABASE_UNAVAILABLE);
      }
      // The spec's 500 shape; the database error itself stays in the log.
      req.log.error({ err }, 'search failed');
      return errorReply(reply, 500, 'internal', 'internal error');
    }
  });
}

const errorSchema = {
  type: 'object',
  properties: {
    error: {
      type: 'object',
      properties: { code: { type: 'string' }, message: { type: 'string' } },
      required: ['code', 'message'],
    },
    data: { type: 'object', nullable: true, default: null },
  },
  required: ['error', 'data'],
};

/** The /search operation of the provider API spec, with Sluice's reading of its bounds. */
export const searchOpenApi = {
  tags: [{ name: 'events', description: 'Provider events. GET /search follows the provider API spec "Fever Providers API" 1.0.0.' }],
  paths: {
    '/search': {
      get: {
        tags: ['events'],
        operationId: 'searchEvents',
        summary: 'Lists the available events on a time range',
        description:
          'Events whose base event was on sale online in at least one fetch of the provider feed, including events the feed no longer lists, with their latest known values, sorted by start. ' +
          'Bounds are compared with the events\' local times by their wall-clock reading (a UTC offset is accepted and not applied); a date alone means its midnight. ' +
          'Spec: "Fever Providers API" 1.0.0.',
        parameters: [
          {
            in: 'query',
            name: 'starts_at',
            description: 'Return only events that start at or after this date-time',
            required: false,
            schema: { type: 'string', format: 'date-time' },
            example: '2017-07-21T17:32:28Z',
          },
          {
            in: 'query',
            name: 'ends_at',
            description: 'Return only events that end at or before this date-time',
            required: false,
            schema: { type: 'string', format: 'date-time' },
            example: '2021-07-21T17:32:28Z',
          },
        ],
        responses: {
          '200': {
            description: 'List of plans',
            content: {
              'application/json': {
                schema: {
                  type: 'object',
                  properties: {
                    data: {
                      type: 'object',
                      properties: { events: { $ref: '#/components/schemas/EventList' } },
                      required: ['events'],
                    },
                    error: { type: 'object', nullable: true, default: null },
                  },
                  required: ['data', 'error'],
                },
              },
            },
          },
          '400': {
            description: 'Bad request. Parameters were not well provided',
            content: { 'application/json': { schema: { $ref: '#/components/schemas/Error' } } },
          },
          '500': {
            description: 'Generic error',
            content: { 'application/json': { schema: { $ref: '#/components/schemas/Error' } } },
          },
          '503': {
            description: 'The database is unavailable (restarting, unreachable): retry shortly. Code `unavailable`.',
            content: { 'application/json': { schema: { $ref: '#/components/schemas/Error' } } },
          },
        },
      },
    },
  },
  schemas: {
    Event: {
      type: 'object',
      properties: {
        id: { type: 'string', format: 'uuid', description: 'Identifier for the plan (UUID v5 of the provider\'s base_event_id and event_id)' },
        title: { type: 'string', description: 'Title of the plan' },
        start_date: { type: 'string', format: 'date', description: 'Date when the event starts in local time' },
        start_time: { type: 'string', example: '22:38:19', format: 'time', description: 'Time when the event starts in local time' },
        end_date: { type: 'string', format: 'date', description: 'Date when the event ends in local time' },
        end_time: { type: 'string', example: '14:45:15', format: 'time', description: 'Time when the event ends in local time' },
        min_price: { type: 'number', description: 'Min price from all the available tickets' },
        max_price: { type: 'number', description: 'Max price from all the available tickets' },
      },
      required: ['id', 'title', 'start_date', 'start_time', 'end_date', 'end_time', 'min_price', 'max_price'],
    },
    EventList: { type: 'array', items: { $ref: '#/components/schemas/Event' } },
    Error: errorSchema,
  },
};
