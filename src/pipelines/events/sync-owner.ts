/**
 * The connection a sync runs on, holding the sync's owner lock (a session advisory lock keyed
 * by its id, src/db/sql/events.ts) from the statement that creates its row until its outcome
 * is written. A `running` row whose lock is free has no live owner, and the sweep
 * (failInterruptedSyncs) fails it: that is how a sync killed with its process (kill -9, a
 * crash, a lost database) stops looking like it runs, across any number of processes.
 *
 * Every attempt runs on this connection. When it is lost (a restart, pg_terminate_backend),
 * the next attempt gets a new one and takes the lock again. In between, the lock is free and
 * a sweep may fail the row; the sync's own outcome then overwrites that.
 */
import type { Client, Pool } from '../../db/pool.ts';
import { lockSyncOwner, startSync, unlockSyncOwner, type SyncTrigger } from '../../db/sql/events.ts';

export class SyncOwner {
  readonly syncId: number;
  private readonly pool: Pool;
  private client: Client | undefined;
  private locked: boolean;
  private broken = false;
  private readonly onError = () => {
    this.broken = true;
  };

  private constructor(pool: Pool, syncId: number, client: Client, locked: boolean) {
    this.pool = pool;
    this.syncId = syncId;
    this.locked = locked;
    this.attach(client);
  }

  /** Creates the sync's record and takes its lock, in one statement on a new connection. */
  static async start(pool: Pool, url: string, trigger: SyncTrigger): Promise<SyncOwner> {
    const client = await pool.connect();
    try {
      const { id, locked } = await startSync(client, url, trigger);
      return new SyncOwner(pool, id, client, locked);
    } catch (err) {
      client.release(true);
      throw err;
    }
  }

  /**
   * A usable connection holding the lock when it can: the current one, or after a loss a new
   * one that takes the lock again. Throws when the database cannot be reached.
   */
  async connection(): Promise<Client> {
    if (this.client && !this.broken) {
      if (!this.locked) {
        this.locked = await lockSyncOwner(this.client, this.syncId).catch((err: unknown) => {
          this.broken = true;
          throw err;
        });
      }
      return this.client;
    }
    this.drop();
    const client = await this.pool.connect();
    try {
      // Not waited for: the lost connection's backend may hold the lock until the server
      // notices the loss (a network failure: until its keepalives give up, about a minute by
      // default, src/db/connection.ts). The next attempt tries again.
      this.locked = await lockSyncOwner(client, this.syncId);
    } catch (err) {
      client.release(true);
      throw err;
    }
    this.attach(client);
    return client;
  }

  /** The connection is unusable (lost, or left in a failed transaction): replaced at next use. */
  markBroken(): void {
    this.broken = true;
  }

  /** Lets go of the lock and the connection; a connection that cannot unlock is destroyed. */
  async release(): Promise<void> {
    const client = this.client;
    if (!client) return;
    if (this.broken) return this.drop();
    this.client = undefined;
    const failed = this.locked
      ? await unlockSyncOwner(client, this.syncId).then(
          () => undefined,
          (err: unknown) => (err instanceof Error ? err : new Error(String(err))),
        )
      : undefined;
    client.off('error', this.onError);
    client.release(failed);
  }

  private attach(client: Client): void {
    this.client = client;
    this.broken = false;
    // A checked-out client has no pool error listener: a connection lost between attempts
    // (during the backoff) would emit an unhandled 'error' and crash the process.
    client.on('error', this.onError);
  }

  /** Destroys the current connection (its session lock goes with it). */
  private drop(): void {
    const client = this.client;
    if (!client) return;
    this.client = undefined;
    client.off('error', this.onError);
    client.release(true);
  }
}
