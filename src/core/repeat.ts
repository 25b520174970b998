/**
 * A task repeated in the background: each run starts `everyMs` after the one before ended
 * (a run that outlasts the interval is never overlapped by the next), the first at once or
 * one interval from now, until stopped. The timer is unref'd: it keeps no process alive.
 */
export interface Repeating {
  /** No more runs; resolves once the run in progress (if any) has ended. */
  stop(): Promise<void>;
}

/**
 * Repeats `run` (given a signal aborted by stop) as above. `run` reports its own failures:
 * a rejection ends that run only.
 */
export function repeatAfterEach(run: (signal: AbortSignal) => Promise<unknown>, everyMs: number, first: 'now' | 'after-interval'): Repeating {
  const stopping = new AbortController();
  let timer: NodeJS.Timeout | undefined;
  let current: Promise<void> | undefined;
  const schedule = () => {
    timer = setTimeout(tick, everyMs);
    timer.unref();
  };
  const tick = () => {
    current = run(stopping.signal).then(
      () => {},
      () => {},
    ).finally(() => {
      current = undefined;
      if (!stopping.signal.aborted) schedule();
    });
  };
  if (first === 'now') tick();
  else schedule();
  return {
    async stop() {
      stopping.abort();
      clearTimeout(timer);
      await current;
    },
  };
}
