/** What the intake service needs: the pool and (to enqueue or work) the job queue. */
import type { Pool } from '../db/pool.ts';
import type { Boss } from '../jobs/boss.ts';

export interface IntakeContext {
  pool: Pool;
  boss?: Boss | undefined;
}
