/** The OpenAPI description of GET /healthz and GET /metrics (src/http/routes/health.ts, docs/operations.md). */
import { DATABASE_UNAVAILABLE } from '../errors.ts';
import { apiTokenSecurity, errorResponse, guardedResponses, serverErrors, UNAVAILABLE_CLOSING } from '../openapi.ts';

export const healthOpenApi = {
  tags: [{ name: 'operations', description: 'For load balancers and monitoring: health (open to anyone, under any Host: probes use the container\'s address) and Prometheus metrics (protected: with SLUICE_API_TOKEN set the scraper sends the token).' }],
  paths: {
    '/healthz': {
      get: {
        tags: ['operations'],
        operationId: 'health',
        summary: 'Whether the database answers (`SELECT 1`)',
        description: 'Never a 500: a failed check is the 503. Public: no token, and any `Host` (container probes name the container\'s address).',
        responses: {
          '200': {
            description: 'The database answered',
            content: { 'application/json': { schema: { $ref: '#/components/schemas/Health' } } },
          },
          '503': errorResponse(
            'Code `unavailable`, in the one error form of every route, whichever the cause (a probe needs only the status): ' +
              `the database did not answer (message \`${DATABASE_UNAVAILABLE}\`); or ${UNAVAILABLE_CLOSING} ` +
              '(message `the server is shutting down; retry on another instance`). ' +
              'Until this version the database\'s 503 also had `"status":"unavailable"` and the message `database unreachable`',
          ),
        },
      },
    },
    '/metrics': {
      get: {
        tags: ['operations'],
        operationId: 'metrics',
        security: apiTokenSecurity,
        summary: 'The metrics of this process, in the Prometheus text format',
        description:
          'HTTP requests by route and status, uploads, rows imported and part attempts retried by this process\'s workers, visits, live viewers, CRM runs, and the Node.js process metrics, ' +
          'all prefixed `sluice_` (docs/operations.md and each feature\'s doc).',
        responses: {
          '200': {
            description: 'Prometheus text exposition format 0.0.4',
            content: { 'text/plain; version=0.0.4; charset=utf-8': { schema: { type: 'string', example: 'sluice_http_requests_total{route="/healthz",status="200"} 3\n' } } },
          },
          ...guardedResponses(),
          ...serverErrors(UNAVAILABLE_CLOSING),
        },
      },
    },
  },
  schemas: {
    Health: {
      type: 'object',
      properties: { status: { type: 'string', enum: ['ok'] } },
      required: ['status'],
    },
  },
};
