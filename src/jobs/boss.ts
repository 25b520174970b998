/**
 * The Postgres-backed queue (pg-boss). Parts and merges are jobs; a worker that dies
 * (kill -9) stops sending heartbeats and its job is retried by another worker: heartbeat
 * 10 s + supervision every 5 s keeps that well within 30 s.
 */
import { PgBoss } from 'pg-boss';
import type { Client } from '../db/pool.ts';

export const PART_QUEUE = 'sluice-part';
export const MERGE_QUEUE = 'sluice-merge';

export type Boss = PgBoss;

/** Part attempts before a part (and its import) is failed for good. */
export const PART_RETRY_LIMIT = 4;

/** Starts a pg-boss instance on `url` and makes sure the queues exist. */
export async function startBoss(url: string, options: { supervise?: boolean } = {}): Promise<PgBoss> {
  const boss = new PgBoss({
    connectionString: url,
    schema: 'pgboss',
    application_name: 'sluice-jobs',
    max: 6,
    supervise: options.supervise ?? true,
    superviseIntervalSeconds: 5,
    monitorIntervalSeconds: 5,
    useListenNotify: true,
  });
  boss.on('error', (err) => process.stderr.write(`sluice: queue error: ${err.message}\n`));
  await boss.start();
  const common = { heartbeatSeconds: 10, retryBackoff: true, retryDelay: 1, retryDelayMax: 30, notify: true, expireInSeconds: 3600 };
  await boss.createQueue(PART_QUEUE, { ...common, retryLimit: PART_RETRY_LIMIT }).catch(ignoreExists);
  await boss.createQueue(MERGE_QUEUE, { ...common, retryLimit: 5 }).catch(ignoreExists);
  return boss;
}

function ignoreExists(err: Error): void {
  if (!/already exists/i.test(err.message)) throw err;
}

/** pg-boss on an open transaction: the job is created if and only if the caller commits. */
export function inTransaction(client: Client) {
  return { db: { executeSql: (text: string, values?: unknown[]) => client.query(text, values as unknown[]) } };
}
