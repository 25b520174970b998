/** What every route and background service gets: the pool and the server options. */
import type { Pool } from '../db/pool.ts';

export interface AppContext {
  pool: Pool;
  /** When set, write requests need `Authorization: Bearer <apiToken>`. */
  apiToken?: string | undefined;
}
