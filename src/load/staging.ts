/**
 * An import's staging tables, by name: `<stage>` (stageTableName) and the tables named
 * after it: `<stage>_chunk` (the chunk a `sluice import` is merging) and `<stage>_p<n>`
 * (an upload's parts, src/intake/staging.ts). All unlogged; dropped when the import ends,
 * or by whoever finds the import interrupted.
 */
import type { Client, Pool } from '../db/pool.ts';
import { ident } from './merge-sql.ts';

export function stageTableName(importId: string): string {
  return `sluice_stage_${importId.replace(/-/g, '')}`;
}

/** The staging tables of an import that exist: `<stage>` and every `<stage>_*`, shortest names first. */
export async function stagingTables(db: Pool | Client, importId: string): Promise<string[]> {
  const stage = stageTableName(importId);
  const { rows } = await db.query<{ name: string }>(
    `SELECT relname AS name FROM pg_class
      WHERE relkind = 'r' AND relnamespace = current_schema()::regnamespace AND (relname = $1 OR starts_with(relname, $1 || '_'))
      ORDER BY length(relname), relname`,
    [stage],
  );
  return rows.map((r) => r.name);
}

/** Drops every staging table of an import. */
export async function dropStaging(db: Pool | Client, importId: string): Promise<void> {
  const tables = await stagingTables(db, importId);
  if (tables.length > 0) await db.query(`DROP TABLE IF EXISTS ${tables.map(ident).join(', ')}`);
}
