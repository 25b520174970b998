/**
 * sluice_intake_part_retries_total on the /metrics of a real `sluice serve` (one in-process
 * part worker): declared at 0 for every pipeline before any import; a part whose first
 * attempt fails (its database connection terminated while it holds the part, rows COPYed:
 * SLUICE_FAULT_PAUSE_FILE) and whose retry succeeds counts exactly 1, the parts that
 * succeeded at their first attempt nothing, and the count equals what import_parts.attempts
 * says.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { repoRoot } from '../../src/config.ts';
import { testDb, type TestDb } from '../helpers/db.ts';
import { killAll, startSluice, until } from '../helpers/processes.ts';

const FIXTURE = path.join(repoRoot, 'test/fixtures/neoway/base_teste_2000.txt');
const pauseDir = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-retries-'));
const pauseFile = path.join(pauseDir, 'pause');

let db: TestDb;
before(async () => {
  db = await testDb();
});
after(async () => {
  await killAll();
  await db.close();
  fs.rmSync(pauseDir, { recursive: true, force: true });
});

/** The counter's value for `pipeline` in a Prometheus text exposition; undefined when absent. */
function retries(exposition: string, pipeline: string): number | undefined {
  const m = new RegExp(`^sluice_intake_part_retries_total\\{pipeline="${pipeline}"\\} (\\d+)$`, 'm').exec(exposition);
  return m ? Number(m[1]) : undefined;
}

test('a part that fails once and succeeds on its retry counts 1 retry on serve\'s /metrics', async () => {
  fs.writeFileSync(pauseFile, '');
  const serve = startSluice(['serve', '--port', '0', '--host', '127.0.0.1'], {
    DATABASE_URL: db.url,
    SLUICE_API_TOKEN: '',
    SLUICE_WORKERS: '1',
    SLUICE_WORKER_WARMUP: '0',
    // Each part attempt waits here with its rows COPYed, its transaction open, while the file exists.
    SLUICE_FAULT_PAUSE_FILE: pauseFile,
  });
  await serve.waitFor(/listening on/);
  const base = /sluice: listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(serve.output())![1]!;
  const metrics = async () => {
    const res = await fetch(`${base}/metrics`);
    assert.equal(res.status, 200);
    return res.text();
  };

  const before = await metrics();
  assert.match(before, /^# TYPE sluice_intake_part_retries_total counter$/m);
  assert.match(before, /^# HELP sluice_intake_part_retries_total Intake part attempts started that were not the part's first /m);
  assert.equal(retries(before, 'purchases'), 0, before);
  assert.equal(retries(before, 'leads'), 0, before);

  const res = await fetch(`${base}/imports?pipeline=purchases&file_name=base_teste_2000.txt`, {
    method: 'POST',
    headers: { 'content-type': 'text/plain' },
    body: fs.readFileSync(FIXTURE),
  });
  const accepted = (await res.json()) as { id: string };
  assert.equal(res.status, 202, JSON.stringify(accepted));
  const { id } = accepted;
  // The operator's line of the upload (the import's start; its end comes from the worker).
  const size = fs.statSync(FIXTURE).size;
  await serve.waitFor(new RegExp(`sluice: import ${id} \\(purchases, base_teste_2000\\.txt\\) received: ${size.toLocaleString('en-US')} bytes in \\d+ parts, \\d+\\.\\d\\d s\\n`));

  // The one worker holds a part: its rows COPYed, its transaction open (the last statement
  // the part's COPY), waiting on the pause file.
  const held = await until(async () => {
    const { rows } = await db.pool.query<{ pid: number }>(
      `SELECT pid FROM pg_stat_activity
        WHERE datname = current_database() AND pid <> pg_backend_pid() AND state = 'idle in transaction' AND query LIKE 'COPY %'`,
    );
    return rows.length === 1 ? rows[0] : undefined;
  }, 'the worker to hold a part with its rows COPYed');
  const running = await db.pool.query<{ n: number; attempts: number }>(`SELECT n, attempts FROM import_parts WHERE import_id = $1 AND status = 'running'`, [id]);
  assert.deepEqual(running.rows.map((r) => r.attempts), [1], 'one part, at its first attempt');
  const heldPart = running.rows[0]!.n;
  assert.equal(retries(await metrics(), 'purchases'), 0, 'a first attempt is no retry');

  // Its connection terminated: the attempt fails when it goes on, and the queue retries the
  // part with backoff (no longer paused).
  await db.pool.query('SELECT pg_terminate_backend($1)', [held.pid]);
  fs.rmSync(pauseFile);
  const status = await until(async () => {
    const s = (await (await fetch(`${base}/imports/${id}`)).json()) as { status: string; error?: string | null };
    return ['completed', 'failed', 'cancelled'].includes(s.status) ? s : undefined;
  }, `import ${id} to finish`, 90_000);
  assert.equal(status.status, 'completed', status.error ?? '');

  const { rows: parts } = await db.pool.query<{ n: number; attempts: number }>('SELECT n, attempts FROM import_parts WHERE import_id = $1 ORDER BY n', [id]);
  assert.ok(parts.length >= 2, `several parts (${parts.length})`);
  assert.deepEqual(
    parts.map((p) => [p.n, p.attempts]),
    parts.map((p) => [p.n, p.n === heldPart ? 2 : 1]),
    'the held part was attempted twice, every other part once',
  );
  const after = await metrics();
  assert.equal(retries(after, 'purchases'), 1, after);
  assert.equal(retries(after, 'leads'), 0, after);
  await serve.kill('SIGTERM');
});
