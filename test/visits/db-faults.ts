/**
 * Database faults for the visits tests: a TCP proxy in front of PostgreSQL whose connections
 * can be dropped (test/helpers/tcp-proxy.ts), a held table lock (a stuck database), and a
 * wait on a condition of pg_stat_activity.
 */
import type { Client, Pool } from '../../src/db/pool.ts';

export { startTcpProxy, type TcpProxy } from '../helpers/tcp-proxy.ts';

/** Holds ACCESS EXCLUSIVE on `table` until `release()`: every flush waits inside its transaction. */
export async function holdLock(pool: Pool, table: string): Promise<{ client: Client; release(): Promise<void> }> {
  const client = await pool.connect();
  await client.query('BEGIN');
  await client.query(`LOCK TABLE ${client.escapeIdentifier(table)} IN ACCESS EXCLUSIVE MODE`);
  let released = false;
  return {
    client,
    async release() {
      if (released) return;
      released = true;
      await client.query('ROLLBACK');
      client.release();
    },
  };
}

/** Backends of this database waiting for a lock (a flush stuck behind holdLock). */
export async function lockWaiters(pool: Pool): Promise<number[]> {
  const { rows } = await pool.query<{ pid: number }>(
    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' ORDER BY backend_start",
  );
  return rows.map((r) => r.pid);
}

/** Polls `check` every 20 ms until it returns true; fails after `ms`. */
export async function waitUntil(check: () => Promise<boolean>, what: string, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
