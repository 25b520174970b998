/**
 * Warming a new worker before it takes jobs. Fresh code runs in V8's interpreter and
 * baseline tiers until it is hot, and a new `sluice worker` process would spend its first
 * parts there: the row path of every pipeline that declares a `sample` (decode, parse,
 * validate, COPY text: the part job's own functions) and the merge's per-part key check
 * are run here on made-up input first, outside any job. A long-running worker is warm after
 * its first import anyway; this makes the first import after a (re)start as fast. About
 * 0.2 s of CPU per start; SLUICE_WORKER_WARMUP=0 skips it.
 */
import { mapHeader, RowMapper } from '../engine/row-mapper.ts';
import type { Pipeline } from '../engine/pipeline.ts';
import { BufferedRejects } from '../load/rejects.ts';
import { pipelines } from '../pipelines/index.ts';
import { SeenHashes, suspectKeys } from './merge-job.ts';
import { parserFor, stagingText } from './part-job.ts';

/** Rows run through each pipeline's row path, in ROUNDS passes of ROWS rows. */
const ROWS = 5000;
const ROUNDS = 4;

/** Runs the hot paths on made-up input; returns the rows staged (a sample that stages none warms the wrong path). */
export function warmUp(): { rows: number } {
  let rows = 0;
  for (const p of Object.values(pipelines)) if (p.sample) rows += warmRowPath(p, p.sample);
  warmMergeCheck();
  return { rows };
}

/** The sample's data lines repeated to ROWS rows, through the part job's parse and mapping, ROUNDS times. */
function warmRowPath(p: Pipeline, sample: string): number {
  const [header, ...lines] = sample.split('\n').filter((l) => l.trim() !== '');
  if (!header || lines.length === 0) return 0;
  const headerBatches = parserFor(p.format.kind, ',', 1);
  const names = [headerBatches.push(`${header}\n${lines[0]}\n`), headerBatches.end()].flatMap((b) => b.rows)[0]!;
  const mapping = mapHeader(p, names);
  const body = `${Array.from({ length: Math.ceil(ROWS / lines.length) }, () => lines.join('\n')).join('\n')}\n`;
  let staged = 0;
  for (let round = 0; round < ROUNDS; round++) {
    const mapper = new RowMapper(p, mapping, 0, new BufferedRejects('00000000-0000-0000-0000-000000000000'), { trackKeys: false });
    for (const chunk of stagingText(body, parserFor(p.format.kind, ',', 2), mapper, { parse: 0 })) void chunk;
    staged = mapper.accepted;
  }
  return staged;
}

/** The merge's per-part check of the key hashes, over made-up hashes. */
function warmMergeCheck(): void {
  const seen = new SeenHashes();
  let x = 1;
  for (let part = 0; part < ROUNDS; part++) {
    const hashes: number[] = [];
    for (let i = 0; i < ROWS; i++) hashes.push((x = Math.imul(x, 48271) | 0));
    suspectKeys(hashes.join(','), seen);
  }
}
