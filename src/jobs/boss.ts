/**
 * The Postgres-backed queue (pg-boss). Parts and merges are jobs; a worker that dies
 * (kill -9) stops sending heartbeats and its job is retried by another worker: heartbeat
 * 10 s + supervision every 5 s keeps that well within 30 s.
 *
 * Wake-ups: `sendJob` also NOTIFYs `sluice_jobs` (payload: the queue name) in the caller's
 * transaction, so the notification arrives exactly when the job becomes visible; worker
 * loops LISTEN (`listenForJobs`) and fetch at once instead of waiting out a poll interval.
 */
import type pg from 'pg';
import { PgBoss } from 'pg-boss';
import { clientClass, connectionSettings, newClient } from '../db/connection.ts';
import type { Client } from '../db/pool.ts';

export const PART_QUEUE = 'sluice-part';
export const MERGE_QUEUE = 'sluice-merge';
/**
 * pg-boss's dead letter queue of MERGE_QUEUE: a copy of every merge job it gave up on (its
 * last attempt failed, or its worker died during it and the heartbeat lapsed), made in the
 * statement that fails the job. The intake service's reaper drains it and fails the import
 * (src/intake/service.ts), which nothing else would do when the worker died.
 */
export const MERGE_DEAD_QUEUE = 'sluice-merge-dead';
/** The same for PART_QUEUE: a part whose worker died during its last attempt. */
export const PART_DEAD_QUEUE = 'sluice-part-dead';
export const JOBS_CHANNEL = 'sluice_jobs';

export type Boss = PgBoss;

/** Part attempts before a part (and its import) is failed for good. */
export const PART_RETRY_LIMIT = 4;

/**
 * Merge retries after the first attempt (MERGE_RETRY_LIMIT + 1 attempts in all). Every
 * Postgres restart or dropped connection during a merge costs one: the merge is one
 * transaction that fails with its connection. A restart costs only the attempt in flight
 * (while the server is down the loops' fetch fails, so no attempt starts), and a merge
 * follows its upload's parts, so it can be in flight for minutes. With the backoff below
 * (1-2 s, 2-4, 4-8, 8-16, 16-30, then 30 s each: `retryDelay * 2^retryCount` with jitter,
 * capped by retryDelayMax), 8 retries ride out 8 such losses in one merge, and an error that
 * does not go away ends the import after 2-2.5 minutes of waits. The earlier 5 gave up after
 * 6 losses (31-60 s of waits), which a chaos test with repeated restarts reached.
 */
const MERGE_RETRY_LIMIT = 8;

/**
 * How long a merge job may be active before pg-boss fails it (and retries it): 24 h,
 * pg-boss's maximum. pg-boss fails an active job past started_on + expire_seconds whatever
 * its heartbeats say, and a merge is active from its import's first part to its last (it
 * is pipelined with the upload): a 2 GiB upload over a slow link, or an import queued behind
 * another's merge lock, ran past the 1 h it had before, and a second merge of the
 * import started (the first still running). A worker that dies is found by its heartbeat
 * (10 s) as before; this only bounds a merge whose worker lives but never ends.
 */
export const MERGE_EXPIRE_SECONDS = 24 * 60 * 60;

/** Starts a pg-boss instance on `url` and makes sure the queues exist. */
export async function startBoss(url: string, options: { supervise?: boolean } = {}): Promise<PgBoss> {
  const settings = connectionSettings();
  // pg-boss hands its options to its pg.Pool whole: its connections are DbClients too (the
  // connect timeout, keepalives on both ends), though its types do not list `Client`.
  const pool: { Client: typeof pg.Client } = { Client: clientClass(settings) };
  const boss = new PgBoss({
    ...pool,
    connectionString: url,
    // pg-pool's own timer (pg-boss's default 10 s), which also bounds the wait for a free
    // connection of its 6: a little longer than the connect timeout, so a connect that gets
    // no answer fails with the client's clearer ConnectTimeoutError first (within what a
    // timer can wait: a longer one fires at once).
    connectionTimeoutMillis: Math.min(settings.connectTimeoutMs + 1000, 2 ** 31 - 1),
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
  try {
    await ensureQueues(boss);
  } catch (err) {
    // The caller never gets the instance: its supervisor and pool would keep the process alive.
    await boss.stop({ graceful: false }).catch(() => {});
    throw err;
  }
  return boss;
}

/** Creates the queues, or brings those of an earlier version up to date. */
async function ensureQueues(boss: PgBoss): Promise<void> {
  const common = { heartbeatSeconds: 10, retryBackoff: true, retryDelay: 1, retryDelayMax: 30, notify: false };
  // No heartbeat: a dead letter is handled in well under a second; one whose reaper died is
  // taken again after expireInSeconds.
  const dead = { retryLimit: 10, retryBackoff: true, retryDelay: 1, retryDelayMax: 30, notify: false, expireInSeconds: 300 };
  await boss.createQueue(MERGE_DEAD_QUEUE, dead).catch(ignoreExists);
  await boss.createQueue(PART_DEAD_QUEUE, dead).catch(ignoreExists);
  const queues = [
    // A part takes seconds: an hour is far beyond a live one.
    [PART_QUEUE, { retryLimit: PART_RETRY_LIMIT, deadLetter: PART_DEAD_QUEUE, expireInSeconds: 3600 }],
    [MERGE_QUEUE, { retryLimit: MERGE_RETRY_LIMIT, deadLetter: MERGE_DEAD_QUEUE, expireInSeconds: MERGE_EXPIRE_SECONDS }],
  ] as const;
  for (const [name, own] of queues) {
    await boss.createQueue(name, { ...common, ...own }).catch(ignoreExists);
    // A queue created by an earlier version keeps its options (the merge's retryLimit 5, no
    // dead letter queue, its 1 h expiry): brought up to date. A job takes them when it is
    // sent (one sent before keeps the old ones).
    const q = await boss.getQueue(name);
    if (q?.retryLimit !== own.retryLimit || q.deadLetter !== own.deadLetter || q.expireInSeconds !== own.expireInSeconds) {
      await boss.updateQueue(name, own);
    }
  }
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
    const c = newClient({ connectionString: url, application_name: 'sluice-listen' });
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
