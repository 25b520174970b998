/** The Prometheus registry every module adds its metrics to; served at /metrics. */
import client from 'prom-client';

export const registry = new client.Registry();
client.collectDefaultMetrics({ register: registry, prefix: 'sluice_' });

export const httpRequests = new client.Counter({
  name: 'sluice_http_requests_total',
  help: 'HTTP requests answered, by route and status code',
  labelNames: ['route', 'status'] as const,
  registers: [registry],
});

export const importRows = new client.Counter({
  name: 'sluice_import_rows_total',
  help: 'Rows of the file imports merged in this process (not by separate sluice worker processes), by pipeline and outcome',
  labelNames: ['pipeline', 'outcome'] as const,
  registers: [registry],
});
