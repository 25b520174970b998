/**
 * A progress line on stderr: bytes, rows/s and ETA. Redrawn in place on a terminal;
 * elsewhere (pipes, CI logs) a plain line every few seconds.
 */
export interface ProgressState {
  bytes: number;
  totalBytes: number;
  rows: number;
  phase: string;
}

function mb(n: number): string {
  return `${(n / 1048576).toFixed(1)} MB`;
}

export class ProgressBar {
  private readonly started = performance.now();
  private lastPlain = 0;
  private readonly tty = process.stderr.isTTY === true;
  private drawn = false;

  update(s: ProgressState): void {
    const elapsed = (performance.now() - this.started) / 1000;
    const frac = s.totalBytes > 0 ? Math.min(1, s.bytes / s.totalBytes) : 0;
    const rate = elapsed > 0 ? Math.round(s.rows / elapsed) : 0;
    const eta = frac > 0 && frac < 1 ? Math.round((elapsed / frac) * (1 - frac)) : 0;
    const width = 24;
    const bar = '#'.repeat(Math.round(frac * width)).padEnd(width, '.');
    const line = `[${bar}] ${(frac * 100).toFixed(0).padStart(3)}% ${mb(s.bytes)}/${mb(s.totalBytes)} ${s.rows} rows ${rate} rows/s ETA ${eta}s ${s.phase}`;
    if (this.tty) {
      process.stderr.write(`\r${line}\x1b[K`);
      this.drawn = true;
    } else if (performance.now() - this.lastPlain > 2000 || s.phase === 'done') {
      this.lastPlain = performance.now();
      process.stderr.write(`${line}\n`);
    }
  }

  done(): void {
    if (this.tty && this.drawn) process.stderr.write('\n');
  }
}
