/** Prometheus metrics of the CRM sync (served at /metrics by `sluice serve`). */
import client from 'prom-client';
import { registry } from '../../http/metrics.ts';

export const crmRuns = new client.Counter({
  name: 'sluice_crm_runs_total',
  help: 'CRM sync runs finished, by pipeline and status (completed, skipped, failed)',
  labelNames: ['pipeline', 'status'] as const,
  registers: [registry],
});
