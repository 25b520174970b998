/** Latency samples (ms) and their percentiles; exact (sorted), which is fine up to millions. */
export class LatencyRecorder {
  private data = new Float64Array(1024);
  private n = 0;

  get count(): number {
    return this.n;
  }

  record(ms: number): void {
    if (this.n === this.data.length) {
      const bigger = new Float64Array(this.data.length * 2);
      bigger.set(this.data);
      this.data = bigger;
    }
    this.data[this.n++] = ms;
  }

  /** p50/p90/p99/p999/max/mean in ms, rounded to 0.1; zeros when empty. */
  summary(): LatencySummary {
    if (this.n === 0) return { p50: 0, p90: 0, p99: 0, p999: 0, max: 0, mean: 0 };
    const sorted = this.data.slice(0, this.n).sort();
    let sum = 0;
    for (const v of sorted) sum += v;
    const at = (q: number) => round(sorted[Math.min(this.n - 1, Math.ceil(q * this.n) - 1)]!);
    return { p50: at(0.5), p90: at(0.9), p99: at(0.99), p999: at(0.999), max: round(sorted[this.n - 1]!), mean: round(sum / this.n) };
  }
}

export interface LatencySummary {
  p50: number;
  p90: number;
  p99: number;
  p999: number;
  max: number;
  mean: number;
}

function round(ms: number): number {
  return Math.round(ms * 10) / 10;
}
