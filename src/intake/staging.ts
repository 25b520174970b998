/**
 * Where an upload's rows wait for the merge: one unlogged table per part
 * (`<stage>_p<n>`, shaped like the import's staging table `<stage>`), so the merge can
 * take a staged part as it is, and a retried part replaces its table in its transaction.
 * `<stage>` itself stays empty unless a merge of the whole file at once needs every row in
 * one table (several key columns).
 */
import { transactionOn, type Client, type Pool } from '../db/pool.ts';
import { dropFinishedPartData, dropPartData } from '../db/sql/intake.ts';
import { ident } from '../load/merge-sql.ts';
import { errorCode } from '../db/unavailable.ts';
import { dropStaging, dropStatements, finishedStagingTables, stageTableName, stagingTables } from '../load/staging.ts';

export { dropStaging, stageTableName };

/** The table holding part `n` of an import. */
export function partTableName(importId: string, n: number): string {
  if (!Number.isInteger(n) || n < 0) throw new Error(`invalid part number ${n}`);
  return `${stageTableName(importId)}_p${n}`;
}

/**
 * (Re)creates part `n`'s table, empty, inside the caller's transaction. Autovacuum is off
 * for it: the table lives seconds, and an auto-analyze holding it made the merge's DROP
 * wait up to deadlock_timeout (1 s) for autovacuum to give way.
 */
export async function createPartTable(db: Client, importId: string, n: number): Promise<void> {
  const table = ident(partTableName(importId, n));
  await db.query(
    `DROP TABLE IF EXISTS ${table};
     CREATE UNLOGGED TABLE ${table} (LIKE ${ident(stageTableName(importId))} INCLUDING DEFAULTS) WITH (autovacuum_enabled = false)`,
  );
}

/** The part tables of an import that exist (an import begun by an older version has none for its first parts). */
export async function partTables(db: Pool | Client, importId: string): Promise<string[]> {
  const prefix = `${stageTableName(importId)}_p`;
  return (await stagingTables(db, importId)).filter((name) => name.startsWith(prefix));
}

/** Postgres's "lock not available" (lock_timeout ran out). */
const LOCK_NOT_AVAILABLE = '55P03';

/**
 * Drops `tables`, a transaction per batch (dropStatements), each giving way after a short
 * wait for a lock: a merge still holding one (it has not seen yet that its import is over)
 * drops them itself when it ends, and waiting for it here could queue its own next read
 * behind this drop.
 */
async function dropGivingWay(pool: Pool, tables: string[]): Promise<void> {
  if (tables.length === 0) return; // the usual case for all but the first caller
  const client = await pool.connect();
  let broken: Error | undefined;
  try {
    for (const drop of dropStatements(tables)) {
      try {
        await transactionOn(client, `BEGIN; SET LOCAL lock_timeout = '200ms'`, () => client.query(drop), (e) => (broken = e));
      } catch (err) {
        if (errorCode(err) === LOCK_NOT_AVAILABLE) return;
        throw err;
      }
    }
  } finally {
    client.release(broken);
  }
}

/**
 * What an import that ended without completing (failed, cancelled) leaves behind: its
 * staging tables and its parts' stored bytes. Called by whoever ends it (after recording
 * the end, so no part commits a table afterwards), giving way to a merge still holding a
 * table; and by the merge itself once it has rolled back (`by: 'merge'`): nothing then
 * holds them for long (a part in flight rolls back when it sees the import over), so it
 * waits for them instead of leaving them behind.
 */
export async function discardStaged(pool: Pool, importId: string, by: 'merge' | 'other' = 'other'): Promise<void> {
  await dropPartData(pool, importId);
  if (by === 'merge') await dropStaging(pool, importId);
  else await dropGivingWay(pool, await stagingTables(pool, importId));
}

/**
 * At a server's start: the staging tables and part bytes of imports that are over, left by
 * a process that died or a drop that gave way (and by versions that did not drop them).
 */
export async function sweepFinishedImports(pool: Pool): Promise<{ tables: number; parts: number }> {
  const parts = await dropFinishedPartData(pool);
  const tables = await finishedStagingTables(pool);
  await dropGivingWay(pool, tables);
  return { tables: tables.length, parts };
}
