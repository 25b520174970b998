/** Prometheus metrics of the provider feed and /search (served at /metrics). */
import client from 'prom-client';
import { registry } from '../../http/metrics.ts';

export const providerSyncs = new client.Counter({
  name: 'sluice_provider_syncs_total',
  help: 'Syncs of the provider feed, by outcome (completed, failed, skipped by the circuit breaker)',
  labelNames: ['status'] as const,
  registers: [registry],
});

export const providerSyncSeconds = new client.Histogram({
  name: 'sluice_provider_sync_duration_seconds',
  help: 'Duration of provider feed syncs, fetch to commit',
  buckets: [0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300],
  registers: [registry],
});

export const providerEvents = new client.Counter({
  name: 'sluice_provider_events_total',
  help: 'Events read from the provider feed, by outcome (changed, unchanged, rejected, superseded: left alone, a later-started fetch had written them)',
  labelNames: ['outcome'] as const,
  registers: [registry],
});

export const providerBreakerOpen = new client.Gauge({
  name: 'sluice_provider_circuit_open',
  help: '1 while the circuit breaker keeps the scheduled sync away from the provider',
  registers: [registry],
});

export const searchCache = new client.Counter({
  name: 'sluice_search_cache_total',
  help: 'GET /search answers, by cache result (hit, miss, bypass)',
  labelNames: ['result'] as const,
  registers: [registry],
});
