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

/**
 * Tables dropped by one statement at most: each takes a lock (three with its TOAST table and
 * index) held to the end of its transaction, and thousands at once overflow the server's
 * lock table ("out of shared memory"; max_locks_per_transaction).
 */
const DROP_BATCH = 100;

/** The statements dropping `tables`, DROP_BATCH tables each. */
export function dropStatements(tables: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < tables.length; i += DROP_BATCH) out.push(`DROP TABLE IF EXISTS ${tables.slice(i, i + DROP_BATCH).map(ident).join(', ')}`);
  return out;
}

/** Drops every staging table of an import (on a pool: a transaction per DROP_BATCH tables). */
export async function dropStaging(db: Pool | Client, importId: string): Promise<void> {
  for (const drop of dropStatements(await stagingTables(db, importId))) await db.query(drop);
}

/**
 * Staging tables of imports that are over (completed, failed, cancelled) or gone: what a
 * process that died, or a drop that gave way to a lock, left behind.
 */
export async function finishedStagingTables(db: Pool | Client): Promise<string[]> {
  const { rows } = await db.query<{ name: string }>(
    `SELECT c.relname AS name FROM pg_class c
      WHERE c.relkind = 'r' AND c.relnamespace = current_schema()::regnamespace AND starts_with(c.relname, 'sluice_stage_')
        AND NOT EXISTS (SELECT 1 FROM imports i
                         WHERE replace(i.id::text, '-', '') = substr(c.relname, 14, 32) AND i.status IN ('queued', 'running'))
      ORDER BY 1`,
  );
  return rows.map((r) => r.name);
}
