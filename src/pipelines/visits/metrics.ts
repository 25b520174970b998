/** Prometheus metrics of the live-visits pipeline (served at /metrics with the others). */
import client from 'prom-client';
import { registry } from '../../http/metrics.ts';

export const visitsIngested = new client.Counter({
  name: 'sluice_visits_ingested_total',
  help: 'Visits committed (acknowledged) by this process',
  registers: [registry],
});

export const visitsRejected = new client.Counter({
  name: 'sluice_visits_rejected_total',
  help: 'Valid visits refused with 503, by reason: overloaded (buffer full), failed (flush failed or missed its deadline), closing (shutting down)',
  labelNames: ['reason'] as const,
  registers: [registry],
});

// Requests, not visits: a body that cannot be read has no visit count. (Counted as
// sluice_visits_rejected_total{reason="invalid"} before, which summed requests with visits.)
export const invalidVisitRequests = new client.Counter({
  name: 'sluice_visits_invalid_requests_total',
  help: 'POST /visits and /visits/batch requests refused with 400 (invalid body or visit)',
  registers: [registry],
});

export const flushBatchSize = new client.Histogram({
  name: 'sluice_visits_flush_batch_size',
  help: 'Visits per flush (group commit transaction)',
  buckets: [1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000],
  registers: [registry],
});

export const flushDuration = new client.Histogram({
  name: 'sluice_visits_flush_duration_seconds',
  help: 'Time of one flush: COPY, rollups and commit',
  buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
  registers: [registry],
});

export const ingestLag = new client.Histogram({
  name: 'sluice_visits_lag_seconds',
  help: 'Ingestion lag, receipt to committed (visible to the live view), one observation per receipt millisecond of a flush',
  buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2, 5],
  registers: [registry],
});

export const pendingVisits = new client.Gauge({
  name: 'sluice_visits_pending',
  help: 'Visits received and waiting for their flush',
  registers: [registry],
});

export const liveSubscribers = new client.Gauge({
  name: 'sluice_live_subscribers',
  help: 'Open /live/stream connections',
  registers: [registry],
});

/** Committed visits per second over the last 10 s, for a dashboard without PromQL's rate(). */
const WINDOW = 10;
// One slot more than the window: the current, incomplete second has its own.
const slots = new Float64Array(WINDOW + 1);
const slotSecond = new Float64Array(WINDOW + 1);

export function countCommitted(n: number, at = Date.now()): void {
  visitsIngested.inc(n);
  const sec = Math.floor(at / 1000);
  const i = sec % (WINDOW + 1);
  if (slotSecond[i] !== sec) {
    slotSecond[i] = sec;
    slots[i] = 0;
  }
  slots[i]! += n;
}

new client.Gauge({
  name: 'sluice_visits_ingest_rate',
  help: 'Visits committed per second by this process, averaged over the last 10 complete seconds',
  registers: [registry],
  collect() {
    const now = Math.floor(Date.now() / 1000);
    let sum = 0;
    for (let i = 0; i <= WINDOW; i++) {
      const s = slotSecond[i]!;
      if (s < now && s >= now - WINDOW) sum += slots[i]!;
    }
    this.set(sum / WINDOW);
  },
});
