/**
 * Reading a whole Pipedrive v1 list (GET /persons, GET /deals) that others may change
 * meanwhile, so that no record that existed throughout the read is missed (a missed record
 * with a key would be planned as a create: a duplicate).
 *
 * v1 pages by offset (`start`, `limit` <= 500; https://pipedrive.readme.io/docs/core-api-concepts-pagination).
 * A record deleted in the CRM during the read moves every later record one place towards
 * the start: a page read after the deletion starts one record later than planned, and the
 * record that slid over the boundary is never seen. So, within what v1 offers:
 * - the list is sorted by id (`sort=id ASC`): records created meanwhile get higher ids and
 *   go to the end, so only deletions move records, and only towards the start;
 * - pages overlap by one record (page k starts at k * 499): a page covers the id interval
 *   from its first to its last record (from the start for page 0, to the end when it says
 *   there are no more items), and saw every record in it that existed when it was read;
 *   unchanged, page k + 1 begins with page k's last record;
 * - once every page is in, the intervals must join. A gap (more deletions than the overlap
 *   absorbs between two pages' reads) is bridged by reading again from half a page before
 *   the gap's start (further back if the list moved more), until none is left or a bound
 *   is reached (then the read fails: nothing is sent, the next run reads again).
 * Cost: one record per page (1 page in 500) and one request per gap. Records seen twice
 * are one in the snapshot (src/db/sql/crm-plan.ts keeps one row per CRM id).
 * Re-reading the whole list would cost one request per 500 records per gap and, on a busy
 * CRM, meet new deletions each time; searching every planned create by its key would cost
 * one request per create (the whole first sync twice). API v2's cursor pagination would
 * not shift at all, but its shapes differ (a move of the whole client).
 */
import { SluiceError } from '../../core/errors.ts';
import type { PipedriveClient } from '../../clients/pipedrive.ts';

/** What a page saw: ids `first`..`last` (±Infinity at the list's ends), and where. */
interface Span {
  start: number;
  first: number;
  last: number;
  /** Position of its last record when it was read. */
  lastAt: number;
}

export interface ListRead {
  /** The list's size as its pages said (a hint for the next run's concurrent pages). */
  size: number;
  pages: number;
  /** Pages read again to close gaps left by records deleted during the read. */
  rereads: number;
}

/** The first place where the spans do not join: after `from`, before id `until`. */
function firstGap(spans: Span[]): { from: Span; until: number } | undefined {
  const sorted = [...spans].sort((a, b) => a.first - b.first);
  let reach = sorted[0];
  if (!reach) return undefined;
  for (const s of sorted) {
    if (s.first > reach.last + 1) return { from: reach, until: s.first }; // ids are integers
    if (s.last > reach.last) reach = s;
  }
  return reach.last === Infinity ? undefined : { from: reach, until: Infinity };
}

/**
 * Every record of a list endpoint, each page passed to `onPage` as it arrives (in any
 * order; a record may come twice). The pages that `expected` records fill are requested
 * `concurrency` at a time (their offsets are known; one chain of pages could not keep up
 * with the allowed rate), the rest one after another while the API says there are more.
 * An estimate too high costs an empty page or two; too low, only speed.
 */
export async function readList<T extends { id: number }>(
  client: PipedriveClient,
  path: string,
  query: Record<string, string>,
  opts: { expected: number; concurrency: number; limit?: number },
  onPage: (rows: T[]) => void,
): Promise<ListRead> {
  const limit = opts.limit ?? 500;
  const step = limit - 1;
  const spans: Span[] = [];
  const read: ListRead = { size: 0, pages: 0, rereads: 0 };

  /** Reads the page at `start`; resolves to the next page's start while there are more. */
  const page = async (start: number): Promise<{ next: number | undefined; rows: T[] }> => {
    const { data, pagination } = await client.call<T[] | null>('GET', path, { query: { ...query, sort: 'id ASC', start, limit } });
    const rows = data ?? [];
    const more = pagination?.more_items_in_collection === true && rows.length > 0;
    read.pages++;
    for (let i = 1; i < rows.length; i++) {
      if (!((rows[i] as T).id > (rows[i - 1] as T).id)) {
        throw new SluiceError('unavailable', `GET ${path}: the page at ${start} is not sorted by id: cannot tell whether the list was read whole`);
      }
    }
    if (rows.length || start === 0) {
      spans.push({
        start,
        first: start === 0 ? -Infinity : (rows[0] as T).id,
        last: more ? (rows.at(-1) as T).id : Infinity,
        lastAt: start + rows.length - 1,
      });
    }
    read.size = Math.max(read.size, start + rows.length);
    if (rows.length) onPage(rows);
    return { next: more ? start + step : undefined, rows };
  };

  const known = opts.expected <= limit ? 1 : Math.ceil((opts.expected - limit) / step) + 1;
  let claimed = 0;
  let tail: number | undefined;
  const worker = async () => {
    for (let i = claimed++; i < known; i = claimed++) {
      const { next } = await page(i * step);
      if (i === known - 1) tail = next;
    }
  };
  const settled = await Promise.allSettled(Array.from({ length: Math.min(known, opts.concurrency) }, worker));
  const failed = settled.find((r) => r.status === 'rejected');
  if (failed) throw (failed as PromiseRejectedResult).reason;
  while (tail !== undefined) tail = (await page(tail)).next;

  const maxRereads = Math.max(10, Math.ceil(read.pages / 10));
  for (let gap = firstGap(spans); gap; gap = firstGap(spans)) {
    const { from } = gap;
    // Deletions since `from` was read moved its last record towards the start: begin half
    // a page before where it was, and step further back while the page begins past it.
    let start = Math.max(0, from.lastAt - Math.floor(step / 2));
    for (;;) {
      if (++read.rereads > maxRereads) {
        throw new SluiceError(
          'unavailable',
          `GET ${path}: the list changed faster than it could be read (${maxRereads} pages read again to close gaps left by records deleted meanwhile); nothing was sent, the next run reads it again`,
        );
      }
      const { rows } = await page(start);
      if (start === 0 || (rows.length > 0 && (rows[0] as T).id <= from.last + 1)) break;
      start = Math.max(0, start - step);
    }
  }
  return read;
}
