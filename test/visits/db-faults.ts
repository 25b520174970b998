/**
 * Database faults for the visits tests: a held table lock (a stuck database) and the
 * backends waiting for it. (Dropped connections: test/helpers/tcp-proxy.ts.)
 */
import type { Client, Pool } from '../../src/db/pool.ts';

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
