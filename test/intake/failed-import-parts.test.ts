/**
 * The parts of an import failed by one of them: none is left `queued` or `running` (GET
 * /imports/<id> showed them so for ever, their jobs done, no work left), as after a cancel
 * (src/intake/fail.ts, recordFailure). A part still queued when the import fails ends
 * `cancelled`, and so does a part running then. The file: 2,000 purchases rows in 4 parts,
 * part 2 holding a byte that is not UTF-8 (0xE9) past the first 64 KiB (the encoding is
 * detected from those: UTF-8). Real Postgres, the real queue. The parts are run one by one
 * here, with no worker taking any, so which are queued, running or done when part 2 fails
 * is the test's choice, not the timing's; workers in this process take the jobs after.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { after, test } from 'node:test';
import { repoRoot } from '../../src/config.ts';
import { acceptUpload, importStatus, startWorkers, type ImportStatus, type RunningWorkers } from '../../src/intake/index.ts';
import { runPart } from '../../src/intake/part-job.ts';
import type { ImportEnd } from '../../src/intake/status.ts';
import { PART_QUEUE } from '../../src/jobs/boss.ts';
import { testDb, type TestDb } from '../helpers/db.ts';
import { until } from '../helpers/processes.ts';
import { startIntake, type Intake } from './http-helpers.ts';

const FIXTURE = path.join(repoRoot, 'test/fixtures/neoway/base_teste_2000.txt');
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-failed-parts-'));
const pauseFile = path.join(dir, 'pause');
const opened: Array<{ db: TestDb; intake: Intake; workers?: RunningWorkers }> = [];

after(async () => {
  for (const { db, intake, workers } of opened) {
    await workers?.stop();
    await intake.stop();
    await db.close();
  }
  fs.rmSync(dir, { recursive: true, force: true });
});

/** The fixture with one byte of data line 1,200 (part 2 of 500-row parts) made 0xE9. */
function badFile(): Buffer {
  const bytes = Buffer.from(fs.readFileSync(FIXTURE));
  let at = 0;
  for (let line = 0; line < 1200; line++) at = bytes.indexOf(0x0a, at) + 1;
  assert.ok(at > 65_536, 'past the bytes the encoding is detected from');
  bytes[at + 3] = 0xe9;
  return bytes;
}

/** The upload, its parts and their jobs queued, no worker taking them until `workers` is called. */
async function setup() {
  const db = await testDb();
  const intake = await startIntake(db, { workers: 0 });
  const open: (typeof opened)[number] = { db, intake };
  opened.push(open);
  const { id } = await acceptUpload(intake.ctx, { pipeline: 'purchases', fileName: 'bad.txt', source: 'test' }, Readable.from([badFile()]), { partRows: 500 });
  // The ends the workers tell of (what `sluice worker` writes on stderr).
  const ends: ImportEnd[] = [];
  return {
    db, ctx: intake.ctx, id, ends,
    /** From now on, `concurrency` part workers (and a merge loop) in this process. */
    workers: async (concurrency: number) => {
      open.workers = await startWorkers(intake.ctx, { concurrency, onImportEnd: (e) => ends.push(e) });
    },
    stop: () => open.workers?.stop(),
  };
}

const partStatuses = (s: ImportStatus | undefined) => s?.part_list.map((p) => p.status);

test('an import failed by its part 2 of 4 while parts 1 and 3 are queued: they end cancelled, no part is left queued or running; its end is told once', async () => {
  const { db, ctx, id, ends, workers, stop } = await setup();
  // No worker takes a part yet: part 0 staged here, parts 1 and 3 left queued, then part 2 fails the import.
  assert.equal(await runPart(ctx, id, 0), 'completed');
  assert.deepEqual(partStatuses(await importStatus(db.pool, id)), ['completed', 'queued', 'queued', 'queued']);
  assert.equal(await runPart(ctx, id, 2), 'failed');
  // The failure (recordFailure) cancelled the parts that were queued, in its transaction.
  assert.deepEqual(partStatuses(await importStatus(db.pool, id)), ['completed', 'cancelled', 'failed', 'cancelled']);
  // Now workers take the four part jobs and the merge (sent with part 0): all after the failure.
  await workers(2);
  // Every part job done (they find the import over), so nothing is in flight.
  const status = await until(async () => {
    const { rows } = await db.pool.query(
      `SELECT count(*) FILTER (WHERE state IN ('completed', 'failed'))::int AS done, count(*)::int AS n FROM pgboss.job WHERE name = $1 AND data->>'importId' = $2`,
      [PART_QUEUE, id],
    );
    const s = await importStatus(db.pool, id);
    return s?.status === 'failed' && rows[0].n === 4 && rows[0].done === 4 ? s : undefined;
  }, 'the import to fail and its part jobs to end', 60_000);
  assert.match(status.error ?? '', /^part 2: invalid file: line 1201 is not valid utf-8 \(byte 0xE9/);
  const parts = partStatuses(status)!;
  assert.equal(parts[2], 'failed');
  assert.deepEqual(parts.filter((p) => p === 'queued' || p === 'running'), [], JSON.stringify(status.part_list));
  // Parts 1 and 3, queued when part 2 failed the import, stay cancelled: their jobs, run
  // after it, did not claim them. (The second test makes the running-then-cancelled case.)
  assert.equal(parts[3], 'cancelled');
  assert.deepEqual(parts, ['completed', 'cancelled', 'failed', 'cancelled']);
  assert.deepEqual(status.parts, { total: 4, completed: parts.filter((p) => p === 'completed').length, failed: 1, running: 0 });
  // The merge (sent with part 0) finds it failed: its worker tells of the end, once.
  await until(async () => ends.length > 0, 'the end to be told');
  await stop();
  // (Stopped: nothing more can be told.)
  assert.deepEqual(ends.map((e) => [e.id, e.status]), [[id, 'failed']]);
});

test('a part running when another fails the import ends cancelled, and stays so when it finishes', async () => {
  const { db, ctx, id } = await setup();
  assert.equal(await runPart(ctx, id, 0), 'completed');
  assert.equal(await runPart(ctx, id, 1), 'completed');
  // Part 3 held with its rows COPYed, its transaction open (src/core/fault.ts).
  process.env.SLUICE_FAULT_PAUSE_FILE = pauseFile;
  fs.writeFileSync(pauseFile, '');
  let third: Promise<string> | undefined;
  try {
    third = runPart(ctx, id, 3);
    await until(async () => {
      const { rows } = await db.pool.query(
        `SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND state = 'idle in transaction' AND query LIKE 'COPY%'`,
      );
      return rows.length > 0;
    }, 'part 3 to hold its rows');
    assert.deepEqual(partStatuses(await importStatus(db.pool, id)), ['completed', 'completed', 'queued', 'running']);
    assert.equal(await runPart(ctx, id, 2), 'failed');
    assert.deepEqual(partStatuses(await importStatus(db.pool, id)), ['completed', 'completed', 'failed', 'cancelled']);
  } finally {
    fs.rmSync(pauseFile, { force: true });
  }
  // It finds the import over under its row lock and rolls back; run again (its job retried), it is not claimed.
  assert.equal(await third, 'skipped');
  delete process.env.SLUICE_FAULT_PAUSE_FILE;
  assert.equal(await runPart(ctx, id, 3), 'skipped');
  const status = await importStatus(db.pool, id);
  assert.equal(status?.status, 'failed');
  assert.deepEqual(partStatuses(status), ['completed', 'completed', 'failed', 'cancelled']);
});
