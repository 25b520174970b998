/**
 * Where an upload's rows wait for the merge: one unlogged table per part
 * (`<stage>_p<n>`, shaped like the import's staging table `<stage>`), so the merge can
 * take a staged part as it is, and a retried part replaces its table in its transaction.
 * `<stage>` itself stays empty unless a merge of the whole file at once needs every row in
 * one table (several key columns).
 */
import type { Client, Pool } from '../db/pool.ts';
import { stageTableName } from '../engine/import-runner.ts';
import { ident } from '../load/merge-sql.ts';

export { stageTableName };

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
  return (await stagingTables(db, importId)).filter((name) => name !== stageTableName(importId));
}

/** Drops an import's staging table and every part table (after the merge, or when it is over). */
export async function dropStaging(db: Pool | Client, importId: string): Promise<void> {
  const tables = await stagingTables(db, importId);
  if (tables.length > 0) await db.query(`DROP TABLE IF EXISTS ${tables.map(ident).join(', ')}`);
}

async function stagingTables(db: Pool | Client, importId: string): Promise<string[]> {
  const stage = stageTableName(importId);
  const { rows } = await db.query<{ name: string }>(
    `SELECT relname AS name FROM pg_class
      WHERE relkind = 'r' AND relnamespace = current_schema()::regnamespace AND (relname = $1 OR starts_with(relname, $1 || '_p'))
      ORDER BY length(relname), relname`,
    [stage],
  );
  return rows.map((r) => r.name);
}
