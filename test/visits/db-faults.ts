/**
 * Database faults for the visits tests: a TCP proxy in front of PostgreSQL whose connections
 * can be dropped (as a load balancer, pgbouncer or the network does), a held table lock (a
 * stuck database), and a wait on a condition of pg_stat_activity.
 */
import net from 'node:net';
import type { Client, Pool } from '../../src/db/pool.ts';

export interface TcpProxy {
  /** `url` with its host and port replaced by the proxy's. */
  url: string;
  /** Connections accepted so far. */
  accepted: number;
  /** Ends every open connection abruptly; new ones are still accepted. */
  dropAll(): void;
  close(): Promise<void>;
}

export async function startTcpProxy(url: string): Promise<TcpProxy> {
  const target = new URL(url);
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    proxy.accepted++;
    const upstream = net.connect(Number(target.port), target.hostname);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('error', () => {});
      s.on('close', () => {
        sockets.delete(s);
        client.destroy();
        upstream.destroy();
      });
    }
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const proxied = new URL(url);
  proxied.hostname = '127.0.0.1';
  proxied.port = String((server.address() as net.AddressInfo).port);
  const proxy: TcpProxy = {
    url: proxied.toString(),
    accepted: 0,
    dropAll() {
      for (const s of sockets) s.destroy();
    },
    close() {
      proxy.dropAll();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
  return proxy;
}

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
