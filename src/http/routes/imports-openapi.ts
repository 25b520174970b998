/** The OpenAPI description of the intake routes (src/http/routes/imports.ts). */
import { apiTokenSecurity, errorResponse as error, guardedResponses, hostForbiddenResponse, serverErrors, unauthorizedResponse } from '../openapi.ts';

const crossSiteText =
  'a write from a page of another site, with or without a token: `Sec-Fetch-Site: cross-site` or `same-site`, or an `Origin` that is not this server ' +
  '(its host and port compared with the `Host` header; `null` or an unparsable Origin refused too), checked before the body is read. Clients that are not browsers send neither header; or ';
/** 401 and 403 `forbidden` of the reads (GET) of /imports*: the token, or without one the Host. */
const readGuarded = guardedResponses();
/** 403 `forbidden` of the writes (POST) of /imports*: the cross-site check, or the Host. */
const writeForbidden = hostForbiddenResponse(crossSiteText);
/** Said by every operation of /imports*: the rejects and the lists carry the customers' data. */
const tokenText = ' With SLUICE_API_TOKEN set this needs `Authorization: Bearer <token>`, as every operation of the imports API does, reads included.';
const givenOnce = 'a query parameter given more than once';

const idParam = { in: 'path', name: 'id', required: true, description: 'The import id (a UUID)', schema: { type: 'string', format: 'uuid' } };
const statusOk = {
  description: 'The import',
  content: { 'application/json': { schema: { $ref: '#/components/schemas/ImportStatus' } } },
};
const count = { type: 'integer', minimum: 0 };
const encodingText =
  "The file's encoding, instead of the one detected from its first 64 KiB (UTF-8, else windows-1252): utf-8 or windows-1252, or any WHATWG label of either, " +
  'ASCII case-insensitive (utf8, unicode-1-1-utf-8...; latin1, iso-8859-1, cp1252, us-ascii, ascii... all mean windows-1252)';
const delimiterText = 'The CSV delimiter, instead of the sniffed one: `,` `;` `|` or a tab (also `tab` or `\\t`). Refused for fixed-width pipelines (purchases)';
const ratioText =
  'The largest share of rejected rows (rejected / read) the import may have, from 0 to 1 (as `sluice import --max-reject-ratio`): ' +
  'above it the import fails and nothing is merged (0: any rejected row fails it). Default 1 (no limit)';
const rawText =
  'The file itself, streamed as it arrives. The `charset` parameter of Content-Type gives its encoding (as `?encoding=`, which must then name the same one)';
const encoding = { type: 'string', description: encodingText, example: 'windows-1252' };
const delimiter = { type: 'string', description: delimiterText, example: ';' };
const maxRejectRatio = { type: 'number', minimum: 0, maximum: 1, description: ratioText, example: 0.05 };

export const importsOpenApi = {
  tags: [{ name: 'imports', description: 'File intake: upload a file, follow its import part by part, read its rejects.' }],
  paths: {
    '/imports': {
      post: {
        tags: ['imports'],
        operationId: 'createImport',
        summary: 'Uploads a file (or names a URL to fetch) and queues its import',
        description:
          'Three ways in: (a) multipart/form-data with a text field `pipeline` (and optionally `encoding`, `delimiter`, `max_reject_ratio`) followed by a file field `file` ' +
          '(fields must come before the file, later ones are not read; `?pipeline=`, `?encoding=`, `?delimiter=`, `?max_reject_ratio=` also work, a form field wins); ' +
          '(b) any other content type (text/csv, text/plain, application/octet-stream, anything else, or none) with the file as the raw body, streamed as it arrives and never parsed, ' +
          'and `?pipeline=` (`?file_name=`, `?encoding=`, `?delimiter=`, `?max_reject_ratio=` optional; ' +
          'the `charset` of Content-Type is the encoding when `?encoding=` is not given, and must agree with it when both are); ' +
          '(c) application/json `{"pipeline","url","encoding"?,"delimiter"?,"max_reject_ratio"?}`: the server fetches the http(s) URL. ' +
          'Without an encoding, it is detected from the first 64 KiB; without a delimiter, it is sniffed. The upload is streamed into parts stored in PostgreSQL and answered once stored; ' +
          'workers import the parts in the background. File names are recorded, never used as paths.' + tokenText,
        security: apiTokenSecurity,
        parameters: [
          { in: 'query', name: 'pipeline', required: false, description: 'The pipeline (leads, purchases); required for raw bodies', schema: { type: 'string' } },
          { in: 'query', name: 'file_name', required: false, description: 'The file name to record for a raw body', schema: { type: 'string' } },
          { in: 'query', name: 'encoding', required: false, description: `${encodingText}. A form field \`encoding\` wins over it`, schema: { type: 'string' } },
          { in: 'query', name: 'delimiter', required: false, description: `${delimiterText}. A form field \`delimiter\` wins over it`, schema: { type: 'string' } },
          {
            in: 'query', name: 'max_reject_ratio', required: false, description: `${ratioText}. A form field \`max_reject_ratio\` wins over it`,
            schema: { type: 'number', minimum: 0, maximum: 1 },
          },
        ],
        requestBody: {
          required: true,
          content: {
            'multipart/form-data': {
              schema: {
                type: 'object',
                properties: { pipeline: { type: 'string' }, encoding, delimiter, max_reject_ratio: maxRejectRatio, file: { type: 'string', format: 'binary' } },
                required: ['file'],
              },
            },
            'text/csv': { schema: { type: 'string', format: 'binary', description: rawText } },
            'text/plain': { schema: { type: 'string', format: 'binary', description: rawText } },
            'application/octet-stream': { schema: { type: 'string', format: 'binary', description: rawText } },
            '*/*': {
              schema: {
                type: 'string',
                format: 'binary',
                description: `Any other type, or a body without Content-Type: the same as text/csv. ${rawText}`,
              },
            },
            'application/json': {
              schema: {
                type: 'object',
                properties: { pipeline: { type: 'string' }, url: { type: 'string', format: 'uri' }, encoding, delimiter, max_reject_ratio: maxRejectRatio },
                required: ['pipeline', 'url'],
              },
            },
          },
        },
        responses: {
          '202': {
            description: 'Stored and queued; follow status_url',
            headers: { Location: { description: 'The import, `/imports/<id>`', schema: { type: 'string' } } },
            content: { 'application/json': { schema: { $ref: '#/components/schemas/ImportAccepted' } } },
          },
          '400': error(
            'Unknown or missing pipeline, no `file` part or one under another name, too many or too long form fields, malformed multipart, malformed JSON, bad or unreachable URL or one answering non-2xx, ' +
              `${givenOnce}; an unknown encoding or delimiter, a charset that disagrees with \`encoding\` or is not an encoding Sluice reads, ` +
              'a delimiter for a fixed-width pipeline, a max_reject_ratio that is not a number from 0 to 1 (invalid_input); an empty or binary file, a header without data rows, ' +
              'no usable key column, a record over 16 MiB, a file whose first bytes contradict the encoding given, UTF-16 text, ' +
              'an Excel `sep=` first line for a character that is not a delimiter Sluice reads or other than the delimiter given (invalid_file)',
          ),
          '401': unauthorizedResponse(', checked before a byte of the body is read'),
          '403': writeForbidden,
          '409': error(
            'Code `conflict`: the import was cancelled (POST /imports/{id}/cancel) while its file was still arriving: the rest is not read, ' +
              'and the import stays `cancelled` with nothing staged. (An import a worker failed on an earlier part while the file arrived is answered 202; its status holds the error.)',
          ),
          '413': error(
            'Code `too_large`: the upload is larger than SLUICE_MAX_UPLOAD_BYTES (default 2 GiB), or a remote `Content-Length` says so; or an application/json body over 1 MiB',
          ),
          ...serverErrors(),
        },
      },
      get: {
        tags: ['imports'],
        operationId: 'listImports',
        summary: 'Lists imports, newest first',
        description: `Their file names, pipelines, counts and errors.${tokenText}`,
        security: apiTokenSecurity,
        parameters: [
          { in: 'query', name: 'limit', required: false, description: 'Imports per page, 1 to 100 (default 20)', schema: { type: 'integer', minimum: 1, maximum: 100 } },
          { in: 'query', name: 'cursor', required: false, description: 'next_cursor of the previous page', schema: { type: 'string' } },
        ],
        responses: {
          '200': {
            description: 'A page of imports',
            content: { 'application/json': { schema: { $ref: '#/components/schemas/ImportList' } } },
          },
          '400': error(`Bad limit or cursor, or ${givenOnce} (invalid_input)`),
          ...readGuarded,
          ...serverErrors(),
        },
      },
    },
    '/imports/{id}': {
      get: {
        tags: ['imports'],
        operationId: 'getImport',
        summary: 'The status of one import: counts, parts, rate and ETA',
        description: tokenText.trim(),
        security: apiTokenSecurity,
        parameters: [idParam],
        responses: { '200': statusOk, ...readGuarded, '404': error('No such import (or not a UUID)'), ...serverErrors() },
      },
    },
    '/imports/{id}/rejects': {
      get: {
        tags: ['imports'],
        operationId: 'getImportRejects',
        summary: 'Streams the rows (and fields) the import rejected, in line order',
        description: `Each reject with the raw text of its row: the customers' data.${tokenText}`,
        security: apiTokenSecurity,
        parameters: [
          idParam,
          { in: 'query', name: 'format', required: false, description: 'csv (default, as an attachment) or ndjson', schema: { type: 'string', enum: ['csv', 'ndjson'] } },
          { in: 'query', name: 'limit', required: false, description: 'At most this many rejects (default all)', schema: { type: 'integer', minimum: 1 } },
        ],
        responses: {
          '200': {
            description: 'CSV with the header line,field,reason,raw, or one JSON object per line',
            headers: {
              'Content-Disposition': { description: 'CSV only: `attachment; filename="rejects-<id>.csv"`', schema: { type: 'string' } },
            },
            content: {
              'text/csv': { schema: { type: 'string' } },
              'application/x-ndjson': { schema: { $ref: '#/components/schemas/Reject' } },
            },
          },
          '400': error(`Bad format or limit, or ${givenOnce}`),
          ...readGuarded,
          '404': error('No such import (or not a UUID)'),
          ...serverErrors(),
        },
      },
    },
    '/imports/{id}/cancel': {
      post: {
        tags: ['imports'],
        operationId: 'cancelImport',
        summary: 'Cancels a queued or running import (no-op when it has finished)',
        description:
          'Parts not yet imported are dropped; nothing is merged. An upload still arriving stops and is answered 409. No body is needed (any is ignored, ' +
          'but one sent as application/json is parsed first).' + tokenText,
        security: apiTokenSecurity,
        parameters: [idParam],
        responses: {
          '200': statusOk,
          '400': error('A body sent as application/json that is not valid JSON (invalid_input)'),
          '401': unauthorizedResponse(', checked before the body is read'),
          '403': writeForbidden,
          '404': error('No such import (or not a UUID)'),
          '413': error('A body sent as application/json over 1 MiB (too_large)'),
          ...serverErrors(),
        },
      },
    },
  },
  schemas: {
    ImportAccepted: {
      type: 'object',
      properties: { id: { type: 'string', format: 'uuid' }, status_url: { type: 'string', example: '/imports/0b6f…' } },
      required: ['id', 'status_url'],
    },
    ImportStatus: {
      type: 'object',
      properties: {
        id: { type: 'string', format: 'uuid' },
        pipeline: { type: 'string' },
        file_name: { type: 'string', nullable: true },
        status: { type: 'string', enum: ['queued', 'running', 'completed', 'failed', 'cancelled'] },
        error: { type: 'string', nullable: true },
        parts: {
          type: 'object',
          properties: { total: count, completed: count, failed: count, running: count },
          required: ['total', 'completed', 'failed', 'running'],
        },
        rows: {
          type: 'object',
          properties: { read: count, inserted: count, updated: count, unchanged: count, rejected: count },
          required: ['read', 'inserted', 'updated', 'unchanged', 'rejected'],
        },
        rejects_by_reason: { type: 'object', additionalProperties: { type: 'integer' }, description: 'Reject counts by reason class' },
        created_at: { type: 'string', format: 'date-time' },
        started_at: { type: 'string', format: 'date-time', nullable: true },
        finished_at: { type: 'string', format: 'date-time', nullable: true },
        rows_per_s: { type: 'number', nullable: true },
        eta_s: { type: 'number', nullable: true, description: 'Seconds left, estimated from the parts done so far' },
        part_list: {
          type: 'array',
          items: {
            type: 'object',
            properties: {
              n: { type: 'integer' },
              status: { type: 'string' },
              rows: count,
              attempts: count,
              error: { type: 'string', nullable: true },
            },
            required: ['n', 'status', 'rows', 'attempts', 'error'],
          },
        },
      },
      required: ['id', 'pipeline', 'file_name', 'status', 'error', 'parts', 'rows', 'rejects_by_reason', 'created_at', 'started_at', 'finished_at', 'rows_per_s', 'eta_s', 'part_list'],
    },
    ImportList: {
      type: 'object',
      properties: {
        imports: { type: 'array', items: { $ref: '#/components/schemas/ImportStatus' } },
        next_cursor: { type: 'string', nullable: true, description: 'Pass as ?cursor= for the next page; null on the last' },
      },
      required: ['imports', 'next_cursor'],
    },
    Reject: {
      type: 'object',
      properties: {
        line: { type: 'integer' },
        field: { type: 'string', nullable: true, description: 'The column when only that value was refused; null for a whole row' },
        reason: { type: 'string' },
        raw: { type: 'string' },
      },
      required: ['line', 'field', 'reason', 'raw'],
    },
  },
};
