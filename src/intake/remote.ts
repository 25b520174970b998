/** Fetching a remote file for `POST /imports {"url"}`: streamed, with a timeout and a size limit. */
import { Readable } from 'node:stream';
import { InvalidInputError, SluiceError } from '../core/errors.ts';

export async function fetchRemote(url: string, maxBytes: number): Promise<Readable> {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new InvalidInputError(`not a URL: ${JSON.stringify(url)}`);
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new InvalidInputError('url must be http or https');
  let res: Response;
  try {
    res = await fetch(u, { signal: AbortSignal.timeout(30_000), redirect: 'follow' });
  } catch (err) {
    throw new InvalidInputError(`could not fetch ${u.origin}${u.pathname}: ${(err as Error).message}`);
  }
  if (!res.ok || !res.body) throw new InvalidInputError(`fetching ${u.origin}${u.pathname} answered ${res.status}`);
  const length = Number(res.headers.get('content-length') ?? 0);
  if (length > maxBytes) throw new SluiceError('too_large', `remote file is ${length} bytes, above the limit of ${maxBytes}`);
  return Readable.fromWeb(res.body as import('node:stream/web').ReadableStream<Uint8Array>);
}
