/**
 * repeatAfterEach: the first run at once or one interval from now; runs never overlap (the
 * next is timed from the end of the one before); a failed run does not end the repetition;
 * stop waits for the run in progress and no run starts after it.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { repeatAfterEach } from '../../src/core/repeat.ts';

/** A promise with its resolve, to hold a run open until the test lets it go. */
function gate() {
  let open!: () => void;
  const opened = new Promise<void>((r) => (open = r));
  return { opened, open };
}

test('first run at once; no overlap while a run is held; failures go on; stop waits for the run', async () => {
  let running = 0;
  let most = 0;
  let runs = 0;
  const held = gate();
  const third = gate();
  const release = gate();
  let stopSignal: AbortSignal | undefined;
  const r = repeatAfterEach(async (signal) => {
    stopSignal = signal;
    running++;
    most = Math.max(most, running);
    runs++;
    try {
      if (runs === 1) await held.opened; // held far longer than the 1 ms interval
      if (runs === 2) throw new Error('a failed run');
      if (runs === 3) {
        third.open();
        await release.opened;
      }
    } finally {
      running--;
    }
  }, 1, 'now');
  assert.equal(runs, 1, 'the first run started at once');
  held.open();
  await third.opened; // the failed second run did not end the repetition
  assert.equal(most, 1, 'never two runs at once');
  const stopping = r.stop();
  assert.equal(stopSignal!.aborted, true, 'the run in progress is told to stop');
  let stopped = false;
  void stopping.then(() => (stopped = true));
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(stopped, false, 'stop waits while the run is held');
  release.open();
  await stopping;
  assert.equal(running, 0, 'stop waited for it');
  const after = runs;
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(runs, after, 'no run after stop');
});

test("'after-interval': nothing runs until the interval has passed", async () => {
  let runs = 0;
  const first = gate();
  const r = repeatAfterEach(async () => {
    runs++;
    first.open();
  }, 5, 'after-interval');
  assert.equal(runs, 0);
  await first.opened;
  await r.stop();
  assert.ok(runs >= 1);
});
