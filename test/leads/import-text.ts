/** Lead imports of CSV text in a chosen chunk size, for the tests that compare ways of cutting a file. */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { runImport, type ImportResult } from '../../src/engine/import-runner.ts';
import type { Pool } from '../../src/db/pool.ts';
import { leads } from '../../src/pipelines/leads.ts';

let n = 0;

/** Imports `text` (written to a file in `dir`) into `db` in chunks of `size` rows (SLUICE_CHUNK_ROWS; undefined: adaptive); asserts it completed. */
export async function importText(dir: string, db: { pool: Pool }, text: string, size?: number): Promise<ImportResult> {
  const file = path.join(dir, `f${++n}.csv`);
  fs.writeFileSync(file, text);
  if (size !== undefined) process.env.SLUICE_CHUNK_ROWS = String(size);
  try {
    const r = await runImport({ pool: db.pool, pipeline: leads, file });
    assert.equal(r.status, 'completed', r.error);
    return r;
  } finally {
    delete process.env.SLUICE_CHUNK_ROWS;
  }
}
