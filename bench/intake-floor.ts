/**
 * The hand-written floor of bench:intake: what importing a purchases file costs on this
 * machine with the same guarantees and the least machinery. One process, no HTTP, no parts,
 * no queue: the file streamed through the purchases pipeline's own row code (the parser, the
 * validators and the COPY text of the workers) into a `COPY` to an unlogged staging table
 * like a part's (Node parses the next slice while Postgres stores the last), then one
 * `INSERT ... SELECT` into an empty, logged copy of `purchases` (its primary key, CHECKs,
 * defaults and storage options), all in one transaction. It leaves out what the service adds: the upload, storing and reading
 * the parts, the queue, the merge's probes for existing records, the counts, repeated keys
 * (the file must name each document once).
 */
import { Readable } from 'node:stream';
import { pipeline as streamPipeline } from 'node:stream/promises';
import pg from 'pg';
import { from as copyFrom } from 'pg-copy-streams';
import { withoutFirstRow } from '../src/engine/import-runner.ts';
import { mapHeader, RowMapper } from '../src/engine/row-mapper.ts';
import { detectFile, readRecords } from '../src/formats/record-reader.ts';
import { createStageSql, ident, stageCopySql } from '../src/load/merge-sql.ts';
import { BufferedRejects } from '../src/load/rejects.ts';
import { getPipeline } from '../src/pipelines/index.ts';

const pipeline = getPipeline('purchases');
const STAGE = 'floor_stage';
const TARGET = 'floor_purchases';

/**
 * The file's staging rows as COPY text, a read chunk at a time: detected and read as
 * `sluice import` reads a file (formats/record-reader.ts), the first record the header.
 */
async function* copyText(file: string): AsyncGenerator<string> {
  const meta = detectFile(file, pipeline.format.kind);
  let mapper: RowMapper | undefined;
  for await (const batch of readRecords(file, meta, { format: meta.format, chunkBytes: 64 * 1024 })) {
    const out: string[] = [];
    if (!mapper) {
      if (batch.rows.length === 0) continue;
      mapper = new RowMapper(pipeline, mapHeader(pipeline, batch.rows[0]!), 0, new BufferedRejects('00000000-0000-0000-0000-000000000000'), { trackKeys: false });
      mapper.mapBatch(withoutFirstRow(batch), out);
    } else {
      mapper.mapBatch(batch, out);
    }
    if (out.length > 0) yield `${out.join('\n')}\n`;
  }
  if (!mapper || mapper.rejected > 0) throw new Error(`${file}: the floor expects a clean file with a header, ${mapper?.rejected ?? 0} rows were rejected`);
}

/**
 * Imports `file` the hand-written way into a fresh `floor_purchases`; returns the seconds
 * from opening the file to the commit, and the records inserted (checked by the caller).
 */
export async function handWrittenImport(url: string, file: string): Promise<{ secs: number; rows: number }> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    // LIKE copies no storage options (purchases' fillfactor): they are read from the catalog.
    const { rows } = await c.query<{ options: string[] | null }>(`SELECT reloptions AS options FROM pg_class WHERE oid = 'purchases'::regclass`);
    const options = rows[0]?.options ?? [];
    if (!options.every((o) => /^[a-z_]+=[0-9a-z_.]+$/.test(o))) throw new Error(`unexpected storage options of purchases: ${options.join(', ')}`);
    const withOptions = options.length > 0 ? ` WITH (${options.join(', ')})` : '';
    await c.query(`DROP TABLE IF EXISTS ${TARGET}, ${STAGE}; CREATE TABLE ${TARGET} (LIKE purchases INCLUDING ALL)${withOptions}`);
    await c.query('CHECKPOINT');
    const t = performance.now();
    await c.query('BEGIN');
    await c.query(createStageSql(pipeline, STAGE));
    await streamPipeline(Readable.from(copyText(file)), c.query(copyFrom(stageCopySql(pipeline, STAGE))));
    const cols = [pipeline.key.name, ...pipeline.target.fields.map((f) => f.column)].map(ident).join(', ');
    const from = [pipeline.key.name, ...pipeline.target.fields.map((f) => f.from)].map(ident).join(', ');
    // Every document once (the floor expects that: a repeated one fails the primary key).
    const { rowCount } = await c.query(`INSERT INTO ${TARGET} (${cols}) SELECT ${from} FROM ${STAGE}`);
    await c.query('COMMIT');
    const secs = (performance.now() - t) / 1000;
    return { secs, rows: rowCount ?? 0 };
  } finally {
    await c.query(`DROP TABLE IF EXISTS ${TARGET}, ${STAGE}`).catch(() => {});
    await c.end();
  }
}
