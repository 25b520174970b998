/**
 * The intake API: upload a file (multipart form, raw body, or a URL to fetch), follow its
 * import, page through imports, stream its rejects, cancel it. The heavy lifting (parts in
 * Postgres, pg-boss jobs, workers, merge) is src/intake/; this file only turns HTTP into
 * calls to it. Uploads are streamed end to end: no request body is ever buffered whole.
 */
import { Readable } from 'node:stream';
import multipart from '@fastify/multipart';
import client from 'prom-client';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { intEnv } from '../../config.ts';
import { InvalidInputError, NotFoundError, SluiceError } from '../../core/errors.ts';
import { getImport, listRejects } from '../../db/sql/imports.ts';
import { acceptUpload, cancelImport, fetchRemote, importStatus, listImports } from '../../intake/index.ts';
import { continueBody } from '../continue.ts';
import { checkFileFormat, UPLOAD_IDLE_TIMEOUT_MS, withIdleTimeout, type FileFormat } from '../../intake/accept.ts';
import { parseRatio } from '../../validate/values.ts';
import { parseDelimiter, parseEncoding } from '../../formats/sniff.ts';
import { formatReject, rejectsCsvHeader, type RejectFormat } from '../../load/reject-format.ts';
import type { Pool } from '../../db/pool.ts';
import { refuseCrossSite } from '../auth.ts';
import type { AppContext } from '../context.ts';
import { registry } from '../metrics.ts';
import { addOpenApi } from '../openapi.ts';
import { importsOpenApi } from './imports-openapi.ts';
import { getPipeline } from '../../pipelines/index.ts';
import { intParam, stringParam, type Query } from '../query-params.ts';
import { maskUrlPasswords } from '../../core/url-credentials.ts';
import { measureIntake } from '../../intake/metrics.ts';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const DEFAULT_MAX_UPLOAD_BYTES = 2 * 1024 ** 3;
/** Rejects read from Postgres per round trip while streaming them out. */
const REJECTS_PAGE = 5000;

type Source = 'multipart' | 'raw' | 'url';

const uploads = new client.Counter({
  name: 'sluice_http_uploads_total',
  help: 'Uploads received on POST /imports, by way in (multipart, raw, url) and outcome (accepted or the error code)',
  labelNames: ['source', 'outcome'] as const,
  registers: [registry],
});

export interface ImportsRouteOptions {
  /** Largest upload in bytes (default SLUICE_MAX_UPLOAD_BYTES or 2 GiB); more is a 413. */
  maxUploadBytes?: number;
  /** Rows per part (default: the intake engine's). */
  partRows?: number;
  /** How long an upload's body may send nothing before it is cut (default: the intake's, 60 s; tests use less). */
  uploadIdleTimeoutMs?: number;
  /** A line on stderr per upload stored (`sluice serve`; the end's line comes from the worker that merged it). */
  logUploads?: boolean;
}


export function importsRoutes(app: FastifyInstance, ctx: AppContext, options: ImportsRouteOptions = {}): void {
  const maxBytes = options.maxUploadBytes ?? intEnv('SLUICE_MAX_UPLOAD_BYTES', DEFAULT_MAX_UPLOAD_BYTES);
  if (!Number.isSafeInteger(maxBytes) || maxBytes < 1) throw new InvalidInputError(`SLUICE_MAX_UPLOAD_BYTES must be a positive integer, got ${maxBytes}`);
  const acceptOptions = {
    maxBytes,
    ...(options.partRows !== undefined ? { partRows: options.partRows } : {}),
    idleTimeoutMs: options.uploadIdleTimeoutMs,
    logReceived: options.logUploads,
  };
  addOpenApi(importsOpenApi);
  measureIntake(ctx.pool);

  // An encapsulated scope: the raw-body parser and the cross-site hook below apply to these
  // routes only, never to the rest of the server. The token (or, without one, a loopback
  // Host) is checked by the server's guardRoutes (src/http/auth.ts), onRequest: an
  // unauthorised upload is refused before a byte of its body is read.
  app.register(async (scope) => {
    scope.addHook('onRequest', refuseCrossSite());
    await scope.register(multipart, {
      // One more byte than allowed, so the engine (which counts) sees the excess and answers
      // 413 itself instead of busboy silently truncating the file at the limit.
      limits: { fileSize: maxBytes + 1, files: 1, fields: FORM_FIELDS + 1, fieldSize: FIELD_BYTES, fieldNameSize: 100, parts: 20, headerPairs: 50 },
    });
    // Every other content type (text/csv, text/plain, application/octet-stream, none) is
    // the file itself: hand over the request stream untouched, unbuffered and unlimited
    // by bodyLimit (acceptUpload enforces maxBytes while it reads).
    scope.removeContentTypeParser('text/plain');
    scope.addContentTypeParser('*', (_req, payload, done) => done(null, payload));

    scope.post('/imports', async (req: FastifyRequest<{ Querystring: Query }>, reply) => {
      const source: Source = req.isMultipart() ? 'multipart' : isJson(req) ? 'url' : 'raw';
      // The body's announced size (a multipart form is a little more than its file): lets
      // the intake cut a small file into smaller parts.
      const withLength = { ...acceptOptions, expectedBytes: Number(req.headers['content-length']) || undefined };
      try {
        // Announced larger than the limit allows: refused before a byte of it is read or
        // stored (what happens to the body is handleError's, as for every early answer).
        if (source !== 'url' && (withLength.expectedBytes ?? 0) > maxBytes + (source === 'multipart' ? FORM_OVERHEAD_BYTES : 0)) {
          throw new SluiceError('too_large', `upload larger than the limit of ${maxBytes} bytes (Content-Length: ${withLength.expectedBytes})`);
        }
        const { id } =
          source === 'multipart' ? await fromMultipart(ctx, req, reply, withLength)
          : source === 'url' ? await fromUrl(ctx, req.body, { ...acceptOptions, signal: whileClientWaits(reply) })
          : await fromRawBody(ctx, req, { ...withLength, beforeRead: () => continueBody(req.raw, reply.raw) });
        uploads.inc({ source, outcome: 'accepted' });
        return reply
          .status(202)
          .header('location', `/imports/${id}`)
          .send({ id, status_url: `/imports/${id}` });
      } catch (err) {
        uploads.inc({ source, outcome: err instanceof SluiceError ? err.code : 'error' });
        throw err;
      }
    });

    scope.get('/imports', async (req: FastifyRequest<{ Querystring: Query }>) => {
      const limit = intParam(req.query, 'limit', { min: 1, max: 100 }) ?? 20;
      const cursor = stringParam(req.query, 'cursor');
      // A cursor that cannot be decoded is an InvalidInputError (400) from the engine.
      return listImports(ctx.pool, { cursor, limit });
    });

    scope.get('/imports/:id', async (req: FastifyRequest<{ Params: { id: string } }>) => {
      const id = importId(req.params.id);
      const status = await importStatus(ctx.pool, id);
      if (!status) throw new NotFoundError(`no import ${id}`);
      return status;
    });

    scope.get('/imports/:id/rejects', async (req: FastifyRequest<{ Params: { id: string }; Querystring: Query }>, reply) => {
      const id = importId(req.params.id);
      const format = stringParam(req.query, 'format') ?? 'csv';
      if (format !== 'csv' && format !== 'ndjson') throw new InvalidInputError('format must be csv or ndjson');
      const limit = intParam(req.query, 'limit', { min: 1, max: Number.MAX_SAFE_INTEGER });
      if (!(await getImport(ctx.pool, id))) throw new NotFoundError(`no import ${id}`);
      if (format === 'csv') {
        reply
          .header('content-type', 'text/csv; charset=utf-8')
          .header('content-disposition', `attachment; filename="rejects-${id}.csv"`);
      } else {
        reply.header('content-type', 'application/x-ndjson; charset=utf-8');
      }
      return reply.send(Readable.from(rejectChunks(ctx.pool, id, format, limit)));
    });

    scope.post('/imports/:id/cancel', async (req: FastifyRequest<{ Params: { id: string } }>) => {
      return cancelImport(ctx, importId(req.params.id));
    });
  });
}

interface AcceptOptions {
  maxBytes: number;
  partRows?: number;
  expectedBytes?: number | undefined;
  idleTimeoutMs?: number | undefined;
  /** Aborted when the client is gone (whileClientWaits): stops a URL's fetch, and so its upload. */
  signal?: AbortSignal | undefined;
  /** Right before the body is first read (a raw upload's `100 Continue`). */
  beforeRead?: (() => void) | undefined;
  logReceived?: boolean | undefined;
}

/**
 * A signal aborted when the client's connection closes before its answer is sent: the client
 * hung up, or the server cut it (close() after its grace period, src/http/server.ts). A
 * file the server fetches itself does not arrive through the client's connection, so
 * nothing else stops it: the import went on, for as long as the remote server took, kept
 * `serve` from stopping, and was stored whole for a client that got no answer (and would
 * retry). The response's 'close' tells, not the request's: Node emits that one as soon as
 * the request's body is read.
 */
function whileClientWaits(reply: FastifyReply): AbortSignal {
  const controller = new AbortController();
  const res = reply.raw;
  const gone = () => {
    if (!res.writableFinished) {
      controller.abort(new InvalidInputError('the client closed its connection before the import was answered: the fetch of its file was stopped'));
    }
  };
  // Closed already (while the JSON body was read): aborted from the start.
  if (res.destroyed) gone();
  else res.once('close', gone);
  return controller.signal;
}

/**
 * Text fields a form may have, and their size. The parser is given one field more: one that
 * reaches it means there were too many (it skips those past its limit and says so only
 * after the file), and the form is refused.
 */
const FORM_FIELDS = 10;
const FIELD_BYTES = 4096;
/** What a form may hold beside its file: its fields, part headers and boundaries. */
const FORM_OVERHEAD_BYTES = FORM_FIELDS * (FIELD_BYTES + 512) + 64 * 1024;

/** The form fields read (before the file), each also a query parameter of the same name. */
const FORM_FIELD_NAMES = ['pipeline', 'encoding', 'delimiter', 'max_reject_ratio'] as const;
type FormFieldName = (typeof FORM_FIELD_NAMES)[number];

/**
 * multipart/form-data: the text field `pipeline` (and optionally `encoding`, `delimiter`,
 * `max_reject_ratio`), then the file field `file`. The form is read in order and the file is
 * streamed as it arrives, so the fields must come first (the dashboard's form does); fields
 * after the file are not read. `?pipeline=`, `?encoding=`, `?delimiter=`,
 * `?max_reject_ratio=` work too; a form field wins.
 */
async function fromMultipart(ctx: AppContext, req: FastifyRequest<{ Querystring: Query }>, reply: FastifyReply, o: AcceptOptions) {
  // Parts are taken strictly in arrival order (not from the plugin's `fields`, which may
  // already hold fields sent after the file when the body arrives in one chunk), so the
  // rule "pipeline before the file" holds whatever the file's size.
  // Its fields are in the body: `100 Continue` now, once the token, the Host and the
  // Content-Length have passed (src/http/continue.ts).
  continueBody(req.raw, reply.raw);
  const parts = req.parts();
  const fromForm: Partial<Record<FormFieldName, string>> = {};
  let fields = 0;
  // The file's own idle cut starts with the file: until then a form that stops arriving
  // (its fields half sent) is cut the same way, or it would hold its connection for ever.
  const idleMs = o.idleTimeoutMs ?? UPLOAD_IDLE_TIMEOUT_MS;
  for (;;) {
    const next = await withIdleTimeout(
      parts.next(),
      idleMs,
      () => req.raw.destroy(),
      `the form stopped arriving before its file: no byte for ${idleMs / 1000} s, the upload was cut`,
    ).catch((err: unknown) => {
      throw err instanceof SluiceError ? err : clientError(err, 'malformed multipart body');
    });
    if (next.done) throw new InvalidInputError('the form has no file: send the file in a field named "file"');
    const part = next.value;
    if (part.type === 'field') {
      if (++fields > FORM_FIELDS) throw new InvalidInputError(`the form has more than ${FORM_FIELDS} text fields: send only "pipeline", "encoding", "delimiter" and "max_reject_ratio", then the file`);
      if (part.valueTruncated) throw new InvalidInputError(`form field ${JSON.stringify(part.fieldname)} is longer than ${FIELD_BYTES} bytes`);
      if ((FORM_FIELD_NAMES as readonly string[]).includes(part.fieldname)) fromForm[part.fieldname as FormFieldName] = String(part.value);
      continue;
    }
    if (part.fieldname !== 'file') {
      part.file.resume();
      throw new InvalidInputError(`the file must be sent in a field named "file", not ${JSON.stringify(part.fieldname)}`);
    }
    try {
      // A form field wins over the query string (an empty field counts as not given).
      const pipeline = fromForm.pipeline || stringParam(req.query, 'pipeline');
      if (!pipeline) throw new InvalidInputError('pipeline is required: a form field "pipeline" before the file, or ?pipeline=');
      const format = fileFormat({
        encoding: fromForm.encoding || stringParam(req.query, 'encoding'),
        delimiter: fromForm.delimiter || stringParam(req.query, 'delimiter'),
      });
      const limits = rejectLimit(fromForm.max_reject_ratio || stringParam(req.query, 'max_reject_ratio'));
      return await acceptUpload(ctx, { pipeline, fileName: recordedName(part.filename), source: 'http', ...format, ...limits }, part.file, o);
    } finally {
      // Unread bytes (a refused upload) are drained so the parser reaches the end of the form.
      if (!part.file.readableEnded) part.file.resume();
    }
  }
}

/**
 * Any other content type: the body is the file, `?pipeline=` names the pipeline; the
 * encoding is `?encoding=` or else the Content-Type's charset (both: they must agree);
 * `?delimiter=` and `?max_reject_ratio=` are optional.
 */
async function fromRawBody(ctx: AppContext, req: FastifyRequest<{ Querystring: Query }>, o: AcceptOptions) {
  const pipeline = stringParam(req.query, 'pipeline');
  if (!pipeline) throw new InvalidInputError('pipeline is required: POST /imports?pipeline=<name> with the file as the body');
  const format = fileFormat({ encoding: stringParam(req.query, 'encoding'), delimiter: stringParam(req.query, 'delimiter') });
  const limits = rejectLimit(stringParam(req.query, 'max_reject_ratio'));
  const charset = charsetOf(req.headers['content-type']);
  if (charset !== undefined) {
    const declared = parseEncoding(charset);
    if (!declared) {
      throw new InvalidInputError(`the Content-Type charset ${JSON.stringify(charset.slice(0, 100))} is not an encoding Sluice reads: send the file as utf-8 or windows-1252`);
    }
    // Two answers to one question: refused rather than one picked.
    if (format.encoding && format.encoding !== declared) {
      throw new InvalidInputError(`encoding ${format.encoding} disagrees with the Content-Type charset ${JSON.stringify(charset.slice(0, 100))} (${declared}): give one, or the same encoding in both`);
    }
    format.encoding = declared;
  }
  // No body at all (no content type, no length) leaves req.body undefined: hand the engine an
  // empty stream so it answers as for any empty file.
  const body = req.body instanceof Readable ? req.body : Readable.from([]);
  const fileName = recordedName(stringParam(req.query, 'file_name'));
  return acceptUpload(ctx, { pipeline, fileName, source: 'http', ...format, ...limits }, body, o);
}

/**
 * application/json `{"pipeline": "...", "url": "https://...", "encoding"?, "delimiter"?,
 * "max_reject_ratio"?}`: the server fetches the file. `o.signal` (the client gone) stops
 * the fetch, and the upload fails as one whose client hung up: nothing of it stays.
 */
async function fromUrl(ctx: AppContext, body: unknown, o: AcceptOptions) {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    throw new InvalidInputError('the JSON body must be an object {"pipeline": "...", "url": "..."}');
  }
  const { pipeline, url, encoding, delimiter, max_reject_ratio: ratio } = body as Record<string, unknown>;
  if (typeof pipeline !== 'string' || pipeline === '') throw new InvalidInputError('"pipeline" must be a non-empty string');
  if (typeof url !== 'string' || url === '') throw new InvalidInputError('"url" must be a non-empty string');
  if (encoding !== undefined && typeof encoding !== 'string') throw new InvalidInputError('"encoding" must be a string');
  if (delimiter !== undefined && typeof delimiter !== 'string') throw new InvalidInputError('"delimiter" must be a string');
  if (ratio !== undefined && typeof ratio !== 'number') throw new InvalidInputError('"max_reject_ratio" must be a number from 0 to 1');
  const format = fileFormat({ encoding, delimiter });
  const limits = rejectLimit(ratio);
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new InvalidInputError(`"url" is not a URL: ${JSON.stringify(maskUrlPasswords(url.slice(0, 200)))}`);
  }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') throw new InvalidInputError('"url" must be http or https');
  // An unknown pipeline, or a delimiter for a fixed-width one, is refused before anything is fetched.
  checkFileFormat(getPipeline(pipeline), format);
  const stream = await fetchRemote(url, o.maxBytes, { signal: o.signal });
  try {
    return await acceptUpload(ctx, { pipeline, fileName: urlFileName(parsed), source: 'url', ...format, ...limits }, stream, o);
  } finally {
    stream.destroy();
  }
}

/** Rejects in line order, a page at a time, formatted; stops after `limit` when given. */
async function* rejectChunks(pool: Pool, id: string, format: RejectFormat, limit: number | undefined): AsyncGenerator<string> {
  if (format === 'csv') yield rejectsCsvHeader;
  let left = limit ?? Number.MAX_SAFE_INTEGER;
  let after = { line: 0, id: 0 };
  while (left > 0) {
    const want = Math.min(REJECTS_PAGE, left);
    const page = await listRejects(pool, id, after, want);
    if (page.length === 0) return;
    yield page.map((r) => formatReject(r, format)).join('');
    left -= page.length;
    const last = page[page.length - 1]!;
    after = { line: last.line, id: last.id };
    if (page.length < want) return;
  }
}

/**
 * The file's encoding and delimiter from the client's spellings (undefined: not given):
 * encoding labels as parseEncoding reads them, delimiters as parseDelimiter; anything else
 * is a 400.
 */
function fileFormat(given: { encoding: string | undefined; delimiter: string | undefined }): FileFormat {
  const format: FileFormat = {};
  if (given.encoding !== undefined) {
    format.encoding = parseEncoding(given.encoding);
    if (!format.encoding) {
      throw new InvalidInputError(
        `encoding must be utf-8 or windows-1252 (or a WHATWG label of either, such as utf8, latin1, iso-8859-1, cp1252 or us-ascii), got ${JSON.stringify(given.encoding.slice(0, 100))}`,
      );
    }
  }
  if (given.delimiter !== undefined) {
    format.delimiter = parseDelimiter(given.delimiter);
    if (!format.delimiter) throw new InvalidInputError(`delimiter must be one of , ; tab |, got ${JSON.stringify(given.delimiter.slice(0, 100))}`);
  }
  return format;
}

/**
 * The largest share of rejected rows the import may have (`max_reject_ratio`, as `sluice
 * import --max-reject-ratio`): above it the import fails and nothing is merged. A number from
 * 0 to 1 written in decimal (`0`, `0.05`, `.5`, `1`), or a JSON number; anything else is a
 * 400. Not given: no limit (1).
 */
function rejectLimit(given: string | number | undefined): { maxRejectRatio?: number } {
  if (given === undefined) return {};
  const ratio = typeof given === 'number' ? given : parseRatio(given);
  if (ratio === undefined || !(ratio >= 0 && ratio <= 1)) {
    throw new InvalidInputError(`max_reject_ratio must be a number from 0 to 1, got ${JSON.stringify(typeof given === 'string' ? given.slice(0, 100) : given)}`);
  }
  return { maxRejectRatio: ratio };
}

/**
 * The charset parameter of a Content-Type, or undefined when there is none (or it is
 * empty). RFC 9110 section 5.6.6: `type/subtype *( OWS ";" OWS name=value )`, the name
 * case-insensitive, the value a token or a quoted string (read whole, so a `;` inside
 * quotes does not start a parameter).
 */
function charsetOf(contentType: string | undefined): string | undefined {
  const param = /\s*;\s*([^=;\s]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]*))|\s*;[^;"=]*/y;
  const text = contentType ?? '';
  param.lastIndex = text.indexOf(';');
  if (param.lastIndex < 0) return undefined;
  for (let m = param.exec(text); m; m = param.exec(text)) {
    if (m[1]?.toLowerCase() !== 'charset') continue;
    const value = m[2] !== undefined ? m[2].replace(/\\(.)/g, '$1') : m[3];
    return value === '' ? undefined : value;
  }
  return undefined;
}

/**
 * POST /imports with a file (a raw body or a form; not JSON): its route sends `100 Continue`
 * itself, once what it can check before the body has passed (src/http/continue.ts).
 */
export function isFileUpload(req: FastifyRequest): boolean {
  // The route, not the raw URL (src/http/auth.ts: routes are matched by routeOptions.url).
  return req.method === 'POST' && req.routeOptions.url === '/imports' && !isJson(req);
}

function isJson(req: FastifyRequest): boolean {
  return /^application\/json\s*(;|$)/i.test(req.headers['content-type'] ?? '');
}

/** 404 for anything but a UUID, so a malformed id never reaches SQL as a cast error. */
function importId(raw: string): string {
  if (!UUID.test(raw)) throw new NotFoundError(`no import ${JSON.stringify(raw.slice(0, 64))}`);
  return raw.toLowerCase();
}

/**
 * The name a file is recorded under: the client's last path segment (as the form parser
 * gives a multipart file's name), as text only (it is never used as a path), without
 * control characters and at most 255 characters.
 */
function recordedName(name: string | undefined): string | null {
  // eslint-disable-next-line no-control-regex
  const text = (name ?? '').replace(/[\u0000-\u001f\u007f]/g, '');
  const clean = text.slice(Math.max(text.lastIndexOf('/'), text.lastIndexOf('\\')) + 1).trim().slice(0, 255);
  return clean === '' ? null : clean;
}

/** The last path segment of a URL (never its query, which may carry credentials). */
function urlFileName(url: URL): string | null {
  const last = url.pathname.split('/').filter(Boolean).pop();
  let name = last;
  try {
    name = last === undefined ? undefined : decodeURIComponent(last);
  } catch {
    // keep the encoded form
  }
  return recordedName(name ?? url.hostname);
}

/** Errors of the multipart parser: its own 4xx errors pass, anything else is a 400. */
function clientError(err: unknown, what: string): unknown {
  const status = (err as { statusCode?: unknown }).statusCode;
  if (typeof status === 'number' && status >= 400 && status < 500) return err;
  return new InvalidInputError(`${what}: ${(err as Error).message}`, { cause: err });
}
