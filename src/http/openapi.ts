/**
 * The OpenAPI 3.0 document the server publishes (GET /docs/openapi.json, rendered at
 * /docs). Each feature adds its paths and schemas with `addOpenApi` next to its routes, so
 * the document and the routes change together.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { FastifyInstance } from 'fastify';
import { repoRoot } from '../config.ts';

type Json = Record<string, unknown>;

export interface OpenApiPart {
  paths?: Record<string, Json>;
  schemas?: Record<string, Json>;
  tags?: Array<{ name: string; description?: string }>;
}

/**
 * The pieces every feature's operations share: the error body of src/http/errors.ts, the
 * 500 and 503 any route may answer, and the API token of src/http/auth.ts.
 */
const apiErrorSchema: Json = {
  type: 'object',
  description: 'Every error: `{"error":{"code","message"}}` (src/http/errors.ts)',
  properties: {
    error: {
      type: 'object',
      properties: {
        code: {
          type: 'string',
          enum: ['invalid_input', 'invalid_file', 'unauthorized', 'forbidden', 'not_found', 'conflict', 'too_large', 'unavailable', 'internal'],
          example: 'invalid_input',
        },
        message: { type: 'string' },
      },
      required: ['code', 'message'],
    },
  },
  required: ['error'],
};

const securitySchemes: Record<string, Json> = {
  apiToken: {
    type: 'http',
    scheme: 'bearer',
    description:
      'The API token, `SLUICE_API_TOKEN` (src/http/auth.ts). When the server has one set, every operation that lists it, reads included, needs `Authorization: Bearer <token>` (else 401). ' +
      'Without one the server listens on loopback only and these operations need a loopback `Host` instead (else 403), the visits (beacons from any site) aside. ' +
      'The public operations (GET /healthz, /search, /live, /live/snapshot, /live/stream; the pages / and /docs) list no security: they are open to anyone, under any Host.',
  },
};

/** `security` of an operation that is not public: the API token when one is set (src/http/auth.ts guardRoutes). */
export const apiTokenSecurity = [{ apiToken: [] }];

/** A response with the `{"error":{"code","message"}}` body. */
export function errorResponse(description: string): Json {
  return { description, content: { 'application/json': { schema: { $ref: '#/components/schemas/ApiError' } } } };
}

/** The 503 every route answers while the server shuts down (the onRequest hook of src/http/server.ts). */
export const UNAVAILABLE_CLOSING = 'the server is shutting down (a request on a kept-alive connection; `Connection: close` is added): retry on another instance';
/** The 503 of a route that reads PostgreSQL (src/http/errors.ts). */
export const UNAVAILABLE_DATABASE = 'the database cannot be reached (restarting, connection cut): retry shortly';

/** The 500 and 503 answers: `unavailable` when `unavailableWhen` (default: the database, or a shutdown), `internal` for any other fault. */
export function serverErrors(unavailableWhen = `${UNAVAILABLE_DATABASE}; or ${UNAVAILABLE_CLOSING}`): Record<string, Json> {
  return {
    '500': errorResponse('Any other server fault: code `internal`, message `internal error` (the cause stays in the server log)'),
    '503': errorResponse(`Code \`unavailable\`: ${unavailableWhen}`),
  };
}

/** The Host check of src/http/auth.ts (guardRoutes), for every operation with `apiTokenSecurity`. */
export const HOST_FORBIDDEN =
  'without SLUICE_API_TOKEN, a `Host` header that is not a loopback name (port and IPv6 brackets left out): `localhost` (any case, a trailing dot allowed) or a literal IP address ' +
  'in 127.0.0.0/8, `::1` or `::ffff:127.0.0.0/104`, and not a DNS name such as `127.attacker.example` (or no `Host` at all). ' +
  'A server without a token listens on loopback and answers its loopback names only, so a page whose DNS name was rebound to 127.0.0.1 gets nothing. ' +
  'With a token set, the Host is not checked';

/** The 403 of an operation with `apiTokenSecurity` (the Host check; `extra` adds other causes). */
export function hostForbiddenResponse(extra = ''): Json {
  return errorResponse(`Code \`forbidden\`: ${extra}${HOST_FORBIDDEN}`);
}

/** The 401 and 403 of every operation with `apiTokenSecurity` (a write may give its own). */
export function guardedResponses(): Record<string, Json> {
  return { '401': unauthorizedResponse(', checked before the route runs and before any body is read'), '403': hostForbiddenResponse() };
}

/** The 401 of an operation with `apiTokenSecurity`. */
export function unauthorizedResponse(extra = ''): Json {
  return {
    ...errorResponse(`SLUICE_API_TOKEN is set and \`Authorization: Bearer <token>\` is missing or wrong (code \`unauthorized\`)${extra}`),
    headers: { 'WWW-Authenticate': { description: 'The scheme expected', schema: { type: 'string', example: 'Bearer realm="sluice"' } } },
  };
}

const paths: Record<string, Json> = {};
const schemas: Record<string, Json> = {};
const tags = new Map<string, { name: string; description?: string }>();

/** Adds paths, component schemas and tags (idempotent: re-adding replaces). */
export function addOpenApi(part: OpenApiPart): void {
  for (const [p, item] of Object.entries(part.paths ?? {})) paths[p] = { ...paths[p], ...item };
  Object.assign(schemas, part.schemas);
  for (const t of part.tags ?? []) tags.set(t.name, t);
}

function packageVersion(): string {
  try {
    return (JSON.parse(fs.readFileSync(path.join(repoRoot, 'package.json'), 'utf8')) as { version: string }).version;
  } catch {
    return '0.0.0';
  }
}

/** The whole document as registered so far. */
export function openApiDocument(): Json {
  const sortedPaths = Object.fromEntries(Object.entries(paths).sort(([a], [b]) => a.localeCompare(b)));
  return {
    openapi: '3.0.3',
    info: {
      title: 'Sluice API',
      version: packageVersion(),
      description: 'Big, messy data in; clean, queryable and fast inside PostgreSQL.',
    },
    tags: [...tags.values()],
    paths: sortedPaths,
    components: { schemas: { ApiError: apiErrorSchema, ...schemas }, securitySchemes },
  };
}

/** GET /docs/openapi.json and GET /docs (a dependency-free HTML rendering of it). */
export function openApiRoutes(app: FastifyInstance): void {
  app.get('/docs/openapi.json', async () => openApiDocument());
  app.get('/docs', async (_req, reply) => {
    reply.header('content-type', 'text/html; charset=utf-8');
    return renderHtml(openApiDocument());
  });
}

function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function renderHtml(doc: Json): string {
  const info = doc.info as { title: string; version: string; description?: string };
  const ops: string[] = [];
  for (const [p, item] of Object.entries(doc.paths as Record<string, Record<string, Json>>)) {
    for (const [method, op] of Object.entries(item)) {
      const params = ((op.parameters as Json[] | undefined) ?? [])
        .map((x) => `<li><code>${escapeHtml(String(x.name))}</code> (${escapeHtml(String(x.in))}${x.required ? ', required' : ''}): ${escapeHtml(String(x.description ?? ''))}</li>`)
        .join('');
      const responses = Object.entries((op.responses as Record<string, Json>) ?? {})
        .map(([code, r]) => `<li><code>${escapeHtml(code)}</code> ${escapeHtml(String(r.description ?? ''))}</li>`)
        .join('');
      ops.push(`<section><h2><code>${escapeHtml(method.toUpperCase())} ${escapeHtml(p)}</code></h2>
<p>${escapeHtml(String(op.summary ?? ''))}</p><p>${escapeHtml(String(op.description ?? ''))}</p>
${params ? `<h3>Parameters</h3><ul>${params}</ul>` : ''}<h3>Responses</h3><ul>${responses}</ul></section>`);
    }
  }
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>${escapeHtml(info.title)}</title>
<style>body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}code{background:#f3f3f3;padding:0 .2em}section{border-top:1px solid #ddd}</style>
</head><body><h1>${escapeHtml(info.title)} <small>${escapeHtml(info.version)}</small></h1>
<p>${escapeHtml(info.description ?? '')}</p><p>Machine-readable: <a href="/docs/openapi.json">/docs/openapi.json</a> (OpenAPI ${escapeHtml(String(doc.openapi))}).</p>
${ops.join('\n')}</body></html>`;
}
