/** What every route and background service gets: the pool and the server options. */
import type { Pool } from '../db/pool.ts';
import type { Boss } from '../jobs/boss.ts';

export interface AppContext {
  pool: Pool;
  /** When set, every route that is not public needs `Authorization: Bearer <apiToken>` (src/http/auth.ts). */
  apiToken?: string | undefined;
  /** The job queue (pg-boss), started by `sluice serve`; imports are enqueued on it. */
  boss?: Boss | undefined;
}
