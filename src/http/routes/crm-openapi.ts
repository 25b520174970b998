/** The OpenAPI description of the CRM sync runs' routes (src/http/routes/crm.ts, docs/crm.md). */
import { apiTokenSecurity, errorResponse as error, guardedResponses, serverErrors } from '../openapi.ts';

const count = { type: 'integer', minimum: 0 };
const numberText = 'in plain decimal digits (`1e2`, `0x10` or a repeated parameter are 400s; src/http/query-params.ts)';

export const crmOpenApi = {
  tags: [{ name: 'crm', description: 'CRM sync runs (docs/crm.md): what each run did, and the records that failed. Read-only; with SLUICE_API_TOKEN set they need the token (the failures name customers\' records).' }],
  paths: {
    '/crm/runs': {
      get: {
        tags: ['crm'],
        operationId: 'listCrmRuns',
        security: apiTokenSecurity,
        summary: 'Lists CRM sync runs, newest first',
        description: 'URL passwords in what is shown (sources\' locations, errors) are masked, also in runs recorded before they were masked at the source.',
        parameters: [
          {
            in: 'query', name: 'limit', required: false, description: `Runs to list, an integer from 1 to 500 (default 50), ${numberText}`,
            schema: { type: 'integer', minimum: 1, maximum: 500, default: 50 },
          },
          { in: 'query', name: 'pipeline', required: false, description: 'Only the runs of this pipeline (the config\'s `name`); empty: all', schema: { type: 'string' } },
        ],
        responses: {
          '200': {
            description: 'The runs',
            content: {
              'application/json': {
                schema: {
                  type: 'object',
                  properties: { runs: { type: 'array', items: { $ref: '#/components/schemas/CrmRun' } } },
                  required: ['runs'],
                },
              },
            },
          },
          '400': error('Code `invalid_input`: limit is not an integer from 1 to 500 (or is given more than once)'),
          ...guardedResponses(),
          ...serverErrors(),
        },
      },
    },
    '/crm/runs/{id}/failures': {
      get: {
        tags: ['crm'],
        operationId: 'listCrmRunFailures',
        security: apiTokenSecurity,
        summary: 'The records that failed (or were not confirmed) in a run',
        parameters: [
          { in: 'path', name: 'id', required: true, description: `The run id, a positive integer, ${numberText}`, schema: { type: 'integer', minimum: 1 } },
          {
            in: 'query', name: 'limit', required: false, description: `Failures to list, an integer from 1 to 10,000 (default 1,000), ${numberText}`,
            schema: { type: 'integer', minimum: 1, maximum: 10000, default: 1000 },
          },
        ],
        responses: {
          '200': {
            description: 'The run\'s failures, in the order they were recorded (empty for a run without any)',
            content: {
              'application/json': {
                schema: {
                  type: 'object',
                  properties: { failures: { type: 'array', items: { $ref: '#/components/schemas/CrmFailure' } } },
                  required: ['failures'],
                },
              },
            },
          },
          '400': error('Code `invalid_input`: the id is not a positive integer, or limit is not an integer from 1 to 10,000'),
          ...guardedResponses(),
          '404': error('Code `not_found`: no such run (`no CRM run 999`)'),
          ...serverErrors(),
        },
      },
    },
  },
  schemas: {
    CrmRun: {
      type: 'object',
      properties: {
        id: { type: 'integer' },
        pipeline: { type: 'string' },
        trigger: { type: 'string', enum: ['cli', 'schedule', 'api'] },
        destination: { type: 'string', example: 'pipedrive' },
        status: { type: 'string', enum: ['running', 'completed', 'skipped', 'failed'] },
        forced: { type: 'boolean' },
        requests: { ...count, description: 'Requests that reached the destination' },
        retries_429: count,
        summary: { type: 'object', additionalProperties: true, description: 'Counts per record kind and outcome' },
        sources: { type: 'object', additionalProperties: true, description: 'Each source read, with its location (URL passwords masked)' },
        details: {
          type: 'object',
          additionalProperties: true,
          description: 'Plan sizes, requests per route, retries, `unsent` attempts, list reads and step timings',
        },
        error: { type: 'string', nullable: true },
        started_at: { type: 'string', format: 'date-time' },
        finished_at: { type: 'string', format: 'date-time', nullable: true },
      },
      required: [
        'id', 'pipeline', 'trigger', 'destination', 'status', 'forced', 'requests', 'retries_429', 'summary', 'sources', 'details', 'error', 'started_at', 'finished_at',
      ],
    },
    CrmFailure: {
      type: 'object',
      properties: {
        kind: { type: 'string', enum: ['person', 'deal'] },
        key: { type: 'string', description: 'The record\'s key in the sources' },
        operation: { type: 'string', example: 'create' },
        error: { type: 'string', description: 'Why; `unconfirmed: ...` for a write whose outcome is not known' },
      },
      required: ['kind', 'key', 'operation', 'error'],
    },
  },
};
