/**
 * Where an upload's rows wait for the merge: one unlogged table per part
 * (`<stage>_p<n>`, shaped like the import's staging table `<stage>`), so the merge can
 * take a staged part as it is, and a retried part replaces its table in its transaction.
 * `<stage>` itself stays empty unless a merge of the whole file at once needs every row in
 * one table (several key columns).
 */
import type { Client, Pool } from '../db/pool.ts';
import { ident } from '../load/merge-sql.ts';
import { dropStaging, stageTableName, stagingTables } from '../load/staging.ts';

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
