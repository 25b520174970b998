/**
 * The Postgres destination: the same persons and deals the CRM would get, upserted into
 * crm_persons and crm_deals of the Sluice database in two set-based statements (only rows
 * whose values differ are written), answering "can the destination be Postgres".
 */
import { withTransaction } from '../../db/pool.ts';
import { desiredParams } from '../../db/sql/crm.ts';
import { recordMissingCustomerFailures, upsertDeals, upsertPersons } from '../../db/sql/crm-plan.ts';
import type { Destination, DestinationResult, DestinationRun } from './types.ts';

export class PostgresDestination implements Destination {
  readonly type = 'postgres';

  async sync(run: DestinationRun): Promise<DestinationResult> {
    const { config } = run;
    await run.staged;
    const params = desiredParams({ pipeline: config.name, ...config.value, statusMap: config.statusMap, defaultStatus: config.defaultStatus });
    // One transaction: readers of crm_deals see the persons and deals of one run.
    const { persons, deals } = await withTransaction(run.pool, 'BEGIN', async (client) => {
      const persons = await upsertPersons(client, config.name);
      const deals = await upsertDeals(client, params);
      if (deals.failed) await recordMissingCustomerFailures(client, run.runId, params);
      return { persons, deals };
    });
    const result = { persons: { ...persons, unconfirmed: 0 }, deals: { ...deals, unconfirmed: 0 }, requests: 0, retries_429: 0, details: {} };
    run.progress(result);
    return result;
  }
}
