/**
 * Sources: the three CSV files, over HTTP or from local paths, streamed straight into
 * Postgres (COPY) so a million orders never sit in memory. What was fetched is remembered
 * (ETag, Last-Modified, content hash): an unchanged source is not re-processed unless
 * forced. HTTP uses conditional requests (RFC 9110 §13: If-None-Match, If-Modified-Since);
 * a local file's validator is its mtime and size.
 *
 * A URL's credentials (`http://user:password@host/x.csv`) go as HTTP Basic authorization
 * (fetch drops it on a redirect to another origin); the location shown in messages, reports
 * and stored state has its password and query values masked (`?access_token=***`). Whether
 * the last fetch was this same resource is told by a digest of the real URL instead (its
 * query included, its password not: config.ts sourceIdentity), never by the masked form.
 * A source with no data rows (a header alone: a half-written export) is refused unless
 * declared `allow_empty`: the rows already staged stay.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import { Readable, Transform } from 'node:stream';
import pg from 'pg';
import { pipeline } from 'node:stream/promises';
import type { ReadableStream as WebReadableStream } from 'node:stream/web';
import { from as copyFrom } from 'pg-copy-streams';
import { InvalidFileError, SluiceError, errorMessage } from '../../core/errors.ts';
import { basicAuth, maskUrlPasswords } from '../../core/url-credentials.ts';
import type { Pool } from '../../db/pool.ts';
import {
  copyLoadTable,
  createLoadTable,
  getSourceState,
  replaceStaged,
  saveSourceState,
  type SourceState,
} from '../../db/sql/crm.ts';
import { SOURCE_NAMES, shownLocation, sourceIdentity, type CrmConfig, type SourceName } from './config.ts';
import { CsvForCopy } from './csv-for-copy.ts';

export interface SourceReport {
  /** Where it was read (a URL's password masked). */
  location: string;
  changed: boolean;
  /** new | changed | forced (different bytes): staged again; not_modified | same_content: kept as staged. */
  reason: 'new' | 'changed' | 'forced' | 'not_modified' | 'same_content';
  rows: number;
  rejected: number;
  bytes: number;
  /** Empty lines skipped (not data, not rejects). */
  empty_lines?: number;
  /** The first rejects: the file's line number and why. */
  samples?: Array<{ line: number; reason: string }>;
}

interface Opened {
  stream: Readable;
  etag: string | null;
  lastModified: string | null;
}

function isHttp(location: string): boolean {
  return /^https?:\/\//i.test(location);
}

/**
 * Opens the source, or returns undefined when its validators say it is unchanged.
 * `conditional`: the last fetch (`prev`) was this very resource (same identity).
 */
async function open(name: SourceName, location: string, prev: SourceState | undefined, conditional: boolean, signal?: AbortSignal): Promise<Opened | undefined> {
  if (isHttp(location)) {
    // fetch refuses a URL with credentials: they go as a Basic authorization header.
    const { url, headers } = basicAuth(location);
    const shown = shownLocation(location);
    // Both validators are this resource's own: `conditional` compares the real query (not
    // the masked `?date=***`), so neither another resource's Last-Modified nor its entity
    // tag (a server's version counter may be shared by all its resources) is ever sent.
    if (conditional && prev?.etag) headers['if-none-match'] = prev.etag;
    if (conditional && prev?.last_modified) headers['if-modified-since'] = prev.last_modified;
    let res: Response;
    try {
      // Redirects followed: fetch drops the Basic authorization on one to another origin.
      res = await fetch(url, { headers, redirect: 'follow', ...(signal ? { signal } : {}) });
    } catch (err) {
      // Not the error as cause: its message may quote the URL.
      throw new SluiceError('unavailable', `source ${name}: cannot fetch ${shown}: ${maskUrlPasswords(errorMessage((err as { cause?: unknown }).cause ?? err))}`);
    }
    if (res.status === 304) return undefined;
    if (!res.ok || !res.body) {
      await res.body?.cancel();
      const hint = res.status === 401 || res.status === 403 ? ' (check the user and password in the URL)' : '';
      throw new SluiceError('unavailable', `source ${name}: HTTP ${res.status} from ${shown}${hint}`);
    }
    return {
      stream: Readable.fromWeb(res.body as unknown as WebReadableStream<Uint8Array>),
      etag: res.headers.get('etag'),
      lastModified: res.headers.get('last-modified'),
    };
  }
  let st: fs.Stats;
  try {
    st = fs.statSync(location);
  } catch (err) {
    throw new InvalidFileError(`source ${name}: cannot read ${location}: ${(err as NodeJS.ErrnoException).code ?? errorMessage(err)}`, { cause: err });
  }
  const validator = `${st.mtimeMs}-${st.size}`;
  if (conditional && prev?.last_modified === validator) return undefined;
  return { stream: fs.createReadStream(location), etag: null, lastModified: validator };
}

/** A source after its conditional request: `opened` is undefined when it is unchanged. */
export interface Probe {
  pipeline: string;
  name: SourceName;
  /** As shown and stored: a URL's password and query values masked. */
  location: string;
  /** Which resource it is (sourceIdentity), stored beside it: the next probe's "same source". */
  locationSha256: string;
  force: boolean;
  /** `allow_empty`: no data rows is no refusal. */
  allowEmpty: boolean;
  prev: SourceState | undefined;
  opened: Opened | undefined;
}

/** Asks whether a source changed (304, same mtime) and opens its body when it may have. */
export async function probeSource(
  pool: Pool,
  pipelineName: string,
  name: SourceName,
  location: string,
  force: boolean,
  options: { signal?: AbortSignal | undefined; allowEmpty?: boolean } = {},
): Promise<Probe> {
  const { signal, allowEmpty = false } = options;
  const prev = await getSourceState(pool, pipelineName, name);
  // The same source when the real URL is, its password aside (a new password alone is the
  // same resource) but its query included (another `?date=`, `?account=` is another one,
  // though both show as `?date=***`). A row from before migration 0047 has no identity:
  // another source, so one unconditional fetch.
  const identity = sourceIdentity(location);
  const conditional = !force && prev?.location_sha256 === identity;
  const opened = await open(name, location, prev, conditional, signal);
  // Read only once every source is probed (loadSource): an error of its body before then
  // (the connection cut while the others answer) had no listener, and an 'error' event
  // without one ends the process (a review: `sluice serve` died at its scheduled run).
  // loadSource reports it, from `stream.errored`.
  opened?.stream.on('error', () => {});
  return { pipeline: pipelineName, name, location: shownLocation(location), locationSha256: identity, force, allowEmpty, prev, opened };
}

/**
 * A source without a single data row, not declared `allow_empty`: most likely a broken
 * export (a file truncated after its header), not an empty business. Synced, it would
 * zero every deal's value (payments), fail every deal (customers) or update nothing.
 */
function emptySource(name: SourceName, location: string, why: string): InvalidFileError {
  return new InvalidFileError(
    `source ${name} (${location}) has no data rows (${why}); the run is refused before anything is written to the destination. ` +
      `If this source may legitimately be empty, set sources.${name}.allow_empty: true`,
  );
}

/** Streams an opened source into staging, unless its bytes are the ones already staged. */
export async function loadSource(pool: Pool, probe: Probe): Promise<SourceReport> {
  const { pipeline: pipelineName, name, location, locationSha256, force, allowEmpty, prev, opened } = probe;
  if (!opened) {
    // Staged empty earlier (under allow_empty, since removed): refused likewise.
    if (!allowEmpty && prev && prev.rows === 0) throw emptySource(name, location, 'none staged, and the source is unchanged');
    return { location, changed: false, reason: 'not_modified', rows: prev?.rows ?? 0, rejected: prev?.rejected ?? 0, bytes: 0 };
  }
  const sameSource = prev?.location_sha256 === locationSha256;
  const csv = new CsvForCopy();
  /** Bytes read of the source (an error for one without a single byte). */
  let bytes = 0;
  const client = await pool.connect();
  try {
    await client.query('BEGIN');
    await client.query(createLoadTable(name));
    const hash = createHash('sha256');
    const hasher = new Transform({
      transform(chunk: Buffer, _enc, cb) {
        hash.update(chunk);
        bytes += chunk.length;
        cb(null, chunk);
      },
    });
    await pipeline(opened.stream, hasher, csv, client.query(copyFrom(copyLoadTable(name))));
    const sha256 = hash.digest('hex');
    const state = { location, location_sha256: locationSha256, etag: opened.etag, last_modified: opened.lastModified, sha256, rows: prev?.rows ?? 0, rejected: prev?.rejected ?? 0 };
    if (sameSource && prev?.sha256 === sha256) {
      // Same bytes under new validators (a re-upload, a server without ETags), or fetched
      // again by a forced run: the staged rows are what these bytes give, so keep them (a
      // forced run still plans against the CRM; re-staging 1M rows would only compete
      // with it for the CPU). Remember the new validators so the next fetch can be a 304.
      await client.query('ROLLBACK');
      if (!allowEmpty && state.rows === 0) throw emptySource(name, location, 'none staged, and the source is unchanged');
      await saveSourceState(pool, pipelineName, name, state, false);
      return { location, changed: false, reason: 'same_content', rows: state.rows, rejected: state.rejected, bytes };
    }
    const staged = await replaceStaged(client, pipelineName, name);
    if (!allowEmpty && staged.rows === 0) {
      // Rolled back (below): the rows staged before stay, and so do the validators, so the
      // next run fetches the source again.
      throw emptySource(name, location, staged.rejected ? `all ${staged.rejected} lines rejected` : 'no line after the header');
    }
    await saveSourceState(client, pipelineName, name, { ...state, rows: staged.rows, rejected: staged.rejected }, true);
    await client.query('COMMIT');
    return {
      location,
      changed: true,
      reason: force && prev ? 'forced' : prev ? 'changed' : 'new',
      rows: staged.rows,
      rejected: staged.rejected,
      bytes,
      ...(csv.emptyLines ? { empty_lines: csv.emptyLines } : {}),
      ...(staged.samples.length ? { samples: staged.samples.map((x) => ({ ...x, line: csv.fileLine(x.line) })) } : {}),
    };
  } catch (err) {
    await client.query('ROLLBACK').catch(() => {});
    const broke = opened.stream.errored;
    opened.stream.destroy();
    // A COPY that refuses the data destroys the source with its own error (pipeline): that
    // is the file's fault, answered below as invalid_file with its line, not the source's.
    if (broke && !(broke instanceof SluiceError) && !(broke instanceof pg.DatabaseError)) {
      // The source itself failed (the connection cut mid-file, a file unreadable): the run
      // cannot go on, and may succeed when tried again. Its message may quote the URL.
      throw new SluiceError('unavailable', `source ${name}: reading ${location} failed before its end: ${maskUrlPasswords(errorMessage((broke as { cause?: unknown }).cause ?? broke))}`);
    }
    const pgErr = err as { code?: string; where?: string };
    if (typeof pgErr.code === 'string' && /^22/.test(pgErr.code) && bytes === 0) {
      // Not even a header (COPY would speak of "wrong number of fields in header line").
      throw new InvalidFileError(
        `source ${name} (${location}) is empty (0 bytes, not even its header line); the run is refused before anything is written to the destination` +
          (allowEmpty ? ' (allow_empty accepts a header without data rows, not an empty file)' : ''),
      );
    }
    if (typeof pgErr.code === 'string' && /^22/.test(pgErr.code)) {
      // COPY's own refusals: header mismatch, missing or extra columns, bad quoting. COPY
      // counts the lines it was given: name the file's.
      const context = pgErr.where?.replace(/^COPY crm_load, /, '').replace(/^line (\d+)/, (_, n: string) => `line ${csv.fileLine(Number(n))}`);
      const where = context ? ` (${context})` : '';
      throw new InvalidFileError(`source ${name} (${location}): ${errorMessage(err)}${where}`, { cause: err });
    }
    throw err;
  } finally {
    client.release();
  }
}

/** Fetches one source and, when it changed (or `force`), replaces its staged rows. */
export async function refreshSource(
  pool: Pool,
  pipelineName: string,
  name: SourceName,
  location: string,
  force: boolean,
  options: { signal?: AbortSignal | undefined; allowEmpty?: boolean } = {},
): Promise<SourceReport> {
  return loadSource(pool, await probeSource(pool, pipelineName, name, location, force, options));
}

/** Probes the three sources concurrently; a failure closes the bodies already opened. */
export async function probeSources(pool: Pool, config: CrmConfig, force: boolean, signal?: AbortSignal): Promise<Probe[]> {
  const settled = await Promise.allSettled(SOURCE_NAMES.map((n) => probeSource(pool, config.name, n, config.sources[n], force, { signal, allowEmpty: config.allowEmpty[n] })));
  const failed = settled.find((r) => r.status === 'rejected');
  if (failed) {
    for (const r of settled) if (r.status === 'fulfilled') r.value.opened?.stream.destroy();
    throw (failed as PromiseRejectedResult).reason;
  }
  return settled.map((r) => (r as PromiseFulfilledResult<Probe>).value);
}

/** Loads the probed sources concurrently. */
export async function loadSources(pool: Pool, probes: Probe[]): Promise<Partial<Record<SourceName, SourceReport>>> {
  const settled = await Promise.allSettled(probes.map((p) => loadSource(pool, p)));
  const failed = settled.find((r) => r.status === 'rejected');
  if (failed) throw (failed as PromiseRejectedResult).reason;
  return Object.fromEntries(probes.map((p, i) => [p.name, (settled[i] as PromiseFulfilledResult<SourceReport>).value]));
}
