/** The OpenAPI description of the visits routes (src/http/routes/visits.ts, docs/visits.md). */
import { apiTokenSecurity, errorResponse as error, serverErrors, UNAVAILABLE_CLOSING, unauthorizedResponse } from '../openapi.ts';

const visit = { $ref: '#/components/schemas/Visit' };

const cookieParam = {
  in: 'cookie',
  name: 'sluice_visitor',
  required: false,
  description:
    'The visitor of the visits that carry no `visitor_id`. When absent, or not 1 to 128 of `A-Z a-z 0-9 -`, a random UUID is minted and set as this cookie ' +
    '(only when a visit needs it, as soon as one does: a batch refused on a later item may carry the Set-Cookie on its 400)',
  schema: { type: 'string', pattern: '^[A-Za-z0-9-]{1,128}$' },
};

const accepted = (what: string) => ({
  description: `${what} committed to PostgreSQL (group commit): a 202 means stored`,
  headers: {
    'Set-Cookie': {
      description:
        'When a visit without `visitor_id` came without a usable `sluice_visitor` cookie: ' +
        '`sluice_visitor=<uuid>; Path=/; Max-Age=31536000; HttpOnly; SameSite=Lax`',
      schema: { type: 'string' },
    },
  },
  content: { 'application/json': { schema: { $ref: '#/components/schemas/VisitsAccepted' } } },
});

const unavailable =
  'the visits were *not acknowledged* (they may or may not be stored; retry): too many visits waiting to be stored (SLUICE_VISITS_MAX_PENDING, SLUICE_VISITS_MAX_PENDING_MB), ' +
  'the flush failed (the database unavailable) or did not commit within SLUICE_VISITS_TIMEOUT_MS (default 5 s) of the arrival, ' +
  `or ${UNAVAILABLE_CLOSING}`;

const common = (bodyLimit: string) => ({
  // No 403: beacons come from any site by design, so a server without a token does not check their Host (src/http/auth.ts).
  '401': unauthorizedResponse(', checked before the body is read: whatever its size, type or content'),
  '413': error(`Code \`too_large\`: the body is over ${bodyLimit}`),
  '415': error(
    'Code `invalid_input`: a content type other than application/json, application/x-ndjson, application/ndjson, application/jsonl and text/plain, ' +
      'or a body without Content-Type',
  ),
  ...serverErrors(unavailable),
});

const textBatch = {
  type: 'string',
  description:
    'NDJSON: one Visit object per line (blank lines skipped; LF or CRLF), or, when the body starts with `[`, a JSON array of Visit objects',
  example: '{"page_path":"/pricing","visitor_id":"3f0c"}\n{"page_path":"/","visited_at":"2025-01-31T12:00:00Z"}\n',
};

export const visitsOpenApi = {
  tags: [{ name: 'visits', description: 'Page visits, acknowledged once committed; shown live on /live (docs/visits.md).' }],
  paths: {
    '/visits': {
      post: {
        tags: ['visits'],
        operationId: 'recordVisit',
        summary: 'Records one page visit; answers 202 once it is committed',
        description:
          'The body is one Visit JSON object, whatever its content type (application/json, or text/plain as navigator.sendBeacon sends; the NDJSON types are read the same way), ' +
          'and must be valid UTF-8 (invalid bytes are refused, not replaced). At most 16 KiB. With SLUICE_API_TOKEN set this needs `Authorization: Bearer <token>`.',
        security: apiTokenSecurity,
        parameters: [cookieParam],
        requestBody: {
          required: true,
          content: {
            'application/json': { schema: visit },
            'text/plain': { schema: visit },
            'application/x-ndjson': { schema: visit },
            'application/ndjson': { schema: visit },
            'application/jsonl': { schema: visit },
          },
        },
        responses: {
          '202': accepted('The visit'),
          '400': error(
            'Code `invalid_input`: a bad visit (the message says which field and why: `page_path must start with "/"`, `unknown field "pagePath"`, ' +
              '`visited_at is in the future`...), a body that is not valid JSON or not valid UTF-8, or no body at all',
          ),
          ...common('16 KiB'),
        },
      },
    },
    '/visits/batch': {
      post: {
        tags: ['visits'],
        operationId: 'recordVisits',
        summary: 'Records many page visits at once (all or nothing); answers 202 once all are committed, in one transaction',
        description:
          'NDJSON (application/x-ndjson, application/ndjson, application/jsonl), a JSON array (application/json), or either of them as text/plain. ' +
          'Each item is a Visit; items without `visitor_id` take the cookie visitor. At most SLUICE_VISITS_BATCH_MAX visits (default 10,000) and ' +
          'SLUICE_VISITS_BATCH_BYTES bytes (default 8 MiB). The first bad item fails the request and nothing is stored; the message says where ' +
          '(`line 3: not valid JSON`, `item 7: visited_at is in the future`; lines count from 1, array items from 0, their index). The body must be valid UTF-8. ' +
          'With SLUICE_API_TOKEN set this needs `Authorization: Bearer <token>`.',
        security: apiTokenSecurity,
        parameters: [cookieParam],
        requestBody: {
          required: true,
          content: {
            'application/json': { schema: { type: 'array', items: visit, minItems: 1, maxItems: 10000, description: 'A JSON array of visits (default limit 10,000)' } },
            'application/x-ndjson': { schema: textBatch },
            'application/ndjson': { schema: textBatch },
            'application/jsonl': { schema: textBatch },
            'text/plain': { schema: textBatch },
          },
        },
        responses: {
          '202': accepted('All the visits'),
          '400': error(
            'Code `invalid_input`: a bad item (with its line or item number), an empty batch, more visits than SLUICE_VISITS_BATCH_MAX, ' +
              'an application/json body that is not an array, a body that is not valid JSON or not valid UTF-8, or no body at all. Nothing is stored',
          ),
          ...common('SLUICE_VISITS_BATCH_BYTES (default 8 MiB)'),
        },
      },
    },
  },
  schemas: {
    Visit: {
      type: 'object',
      description:
        'One page visit. Strings must be well-formed Unicode (no lone surrogate such as `"\\ud800"`) without control characters ' +
        '(U+0000 to U+001F, U+007F to U+009F). Any other field is refused.',
      properties: {
        page_path: {
          type: 'string',
          pattern: '^/',
          maxLength: 2048,
          description:
            'The page, starting with `/`, at most 2,048 characters (UTF-16 code units). A query string and fragment are stored as sent; top pages count the path without them',
          example: '/pricing',
        },
        visitor_id: {
          type: 'string',
          minLength: 1,
          maxLength: 128,
          nullable: true,
          description: 'The visitor, 1 to 128 characters (UTF-16 code units). Absent or null: the visitor of the `sluice_visitor` cookie',
          example: '3f0c6a51-2a5e-4a4e-9d7c-0c1f0b1e2d3f',
        },
        visited_at: {
          type: 'string',
          format: 'date-time',
          nullable: true,
          description:
            'RFC 3339 (`T` or a space, `Z` or an offset, lower case allowed, up to 9 fractional digits of which milliseconds are kept); absent or null: the time of receipt. ' +
            'At most 7 days old and at most 5 minutes in the future; a date or time that does not exist (`2026-02-30`, `24:00:00`, `+24:00`, a leap second) is refused',
          example: '2025-01-31T12:00:00Z',
        },
      },
      required: ['page_path'],
      additionalProperties: false,
    },
    VisitsAccepted: {
      type: 'object',
      properties: { accepted: { type: 'integer', minimum: 1, description: 'Visits committed (1 for POST /visits)' } },
      required: ['accepted'],
    },
  },
};
