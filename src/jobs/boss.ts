/**
 * The Postgres-backed queue (pg-boss). Parts and merges are jobs; a worker that dies
 * (kill -9) stops sending heartbeats and its job is retried by another worker: heartbeat
 * 10 s + supervision every 5 s keeps that well within 30 s.
 *
 * Wake-ups: `sendJob` also NOTIFYs `sluice_jobs` (payload: the queue name) in the caller's
 * transaction, so the notification arrives exactly when the job becomes visible; worker
 * loops LISTEN (`listenForJobs`) and fetch at once instead of waiting out a poll interval.
 */
import pg from 'pg';
import { PgBoss } from 'pg-boss';
import type { Client } from '../db/pool.ts';

export const PART_QUEUE = 'sluice-part';
export const MERGE_QUEUE = 'sluice-merge';
export const JOBS_CHANNEL = 'sluice_jobs';

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
    // Sluice's loops fetch themselves and are woken by JOBS_CHANNEL (listenForJobs), not
    // by pg-boss's listener: one connection per process fewer.
    useListenNotify: false,
  });
  boss.on('error', (err) => process.stderr.write(`sluice: queue error: ${err.message}\n`));
  await boss.start();
  const common = { heartbeatSeconds: 10, retryBackoff: true, retryDelay: 1, retryDelayMax: 30, notify: false, expireInSeconds: 3600 };
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

/**
 * Sends a job in the caller's open transaction and NOTIFYs the loops listening for its
 * queue: both take effect at COMMIT, or neither.
 */
export async function sendJob(boss: Boss, client: Client, queue: string, data: object): Promise<void> {
  await boss.send(queue, data, inTransaction(client));
  await client.query('SELECT pg_notify($1, $2)', [JOBS_CHANNEL, queue]);
}

export interface JobListener {
  close(): Promise<void>;
}

/**
 * LISTENs on JOBS_CHANNEL on a connection of its own and calls `onJob(payload)` for every
 * notification: a queue name when a job is sent (other payloads are the caller's, e.g. the
 * intake's part-staged signal). A lost connection is re-established with backoff; after
 * each (re)connect `onJob` is called for every queue, then `onConnect`, since notifications
 * sent meanwhile were missed. While it is down the loops still find jobs by polling: a
 * NOTIFY only makes them look sooner.
 */
export function listenForJobs(url: string, onJob: (payload: string) => void, onConnect?: () => void): JobListener {
  let closed = false;
  let client: pg.Client | undefined;
  let retry: NodeJS.Timeout | undefined;
  let backoff = 250;
  const wakeAll = () => {
    onJob(PART_QUEUE);
    onJob(MERGE_QUEUE);
  };
  const connect = async () => {
    retry = undefined;
    if (closed) return;
    const c = new pg.Client({ connectionString: url, application_name: 'sluice-listen' });
    let lost = false;
    const reconnect = () => {
      if (lost) return;
      lost = true;
      c.end().catch(() => {});
      if (client === c) client = undefined;
      if (!closed) {
        retry = setTimeout(() => void connect(), backoff);
        backoff = Math.min(5000, backoff * 2);
      }
    };
    c.on('error', reconnect);
    c.on('end', reconnect);
    c.on('notification', (m) => {
      if (m.channel === JOBS_CHANNEL && m.payload) onJob(m.payload);
    });
    try {
      await c.connect();
      await c.query(`LISTEN ${JOBS_CHANNEL}`);
    } catch {
      reconnect();
      return;
    }
    if (closed) {
      await c.end().catch(() => {});
      return;
    }
    client = c;
    backoff = 250;
    wakeAll();
    onConnect?.();
  };
  void connect();
  return {
    async close() {
      closed = true;
      if (retry) clearTimeout(retry);
      const c = client;
      client = undefined;
      await c?.end().catch(() => {});
    },
  };
}
