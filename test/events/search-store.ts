/**
 * A store for the /search tests: a fresh database synced once from a simulator serving
 * `feed`, a second pool standing for another process that syncs, and a record of the
 * statements that reach Postgres through the first pool.
 */
import { startProviderSimulator, type ProviderSimulator } from '../../src/dev/provider-simulator.ts';
import { openDb, type Pool } from '../../src/db/pool.ts';
import { syncEvents } from '../../src/pipelines/events/sync.ts';
import { testDb, type TestDb } from '../helpers/db.ts';
import { feedXml, type BaseSpec, type ZoneSpec } from './feeds.ts';

export interface SearchStore {
  db: TestDb;
  sim: ProviderSimulator;
  /** Another process's pool (syncs through it are invisible to `statements`). */
  other: Pool;
  /** Name (or text) of every statement sent through `db.pool.query`, in order; clear it at will. */
  statements: string[];
  close(): Promise<void>;
}

/** One zone at `price`. */
export const zone = (price: string): ZoneSpec[] => [{ zone_id: '1', price }];

/** Four served events over two days and the next year; a title with JSON escapes. */
export const SEARCH_FEED: BaseSpec[] = [
  {
    base_event_id: '10',
    sell_mode: 'online',
    title: 'Evening',
    events: [
      { event_id: '1', start: '2021-06-30T21:00:00', end: '2021-06-30T22:00:00', zones: zone('10.50') },
      { event_id: '2', start: '2021-06-30T21:00:00', end: '2021-06-30T21:30:00', zones: zone('8') },
    ],
  },
  { base_event_id: '11', sell_mode: 'online', title: 'Morning "quoted" \\ ñ', events: [{ event_id: '1', start: '2021-06-30T09:00:00', end: '2021-06-30T12:00:00', zones: zone('0') }] },
  { base_event_id: '12', sell_mode: 'online', title: 'Next year', events: [{ event_id: '1', start: '2022-01-01T00:00:00', end: '2022-01-02T00:00:00', zones: zone('99.99') }] },
];

export async function searchStore(feed: BaseSpec[]): Promise<SearchStore> {
  const db = await testDb();
  const other = await openDb({ url: db.url, migrate: false, max: 2 });
  const sim = await startProviderSimulator({ responses: [feedXml(feed)] });
  await syncEvents(other, { url: sim.url, trigger: 'test' });
  const statements: string[] = [];
  const query = db.pool.query.bind(db.pool) as (...args: unknown[]) => unknown;
  (db.pool as unknown as { query: unknown }).query = (...args: unknown[]) => {
    const q = args[0] as string | { name?: string; text: string };
    statements.push(typeof q === 'string' ? q : (q.name ?? q.text));
    return query(...args);
  };
  return {
    db,
    sim,
    other,
    statements,
    async close() {
      await sim.close();
      await other.end();
      await db.close();
    },
  };
}
