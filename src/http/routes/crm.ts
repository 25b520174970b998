/**
 * CRM sync runs for the dashboard: GET /crm/runs (newest first; ?limit=1..500, default 50;
 * ?pipeline=name) and GET /crm/runs/:id/failures (the records that failed in a run).
 */
import type { FastifyInstance } from 'fastify';
import { InvalidInputError } from '../../core/errors.ts';
import { listFailures, listRuns } from '../../db/sql/crm.ts';
import type { AppContext } from '../context.ts';

function intParam(v: string | undefined, name: string, def: number, min: number, max: number): number {
  if (v === undefined) return def;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min || n > max) throw new InvalidInputError(`${name} must be an integer from ${min} to ${max}`);
  return n;
}

export function crmRoutes(app: FastifyInstance, ctx: AppContext): void {
  app.get('/crm/runs', async (req) => {
    const q = req.query as { limit?: string; pipeline?: string };
    const limit = intParam(q.limit, 'limit', 50, 1, 500);
    return { runs: await listRuns(ctx.pool, limit, q.pipeline || undefined) };
  });
  app.get('/crm/runs/:id/failures', async (req) => {
    const { id } = req.params as { id: string };
    const q = req.query as { limit?: string };
    const runId = intParam(id, 'run id', 0, 1, Number.MAX_SAFE_INTEGER);
    return { failures: await listFailures(ctx.pool, runId, intParam(q.limit, 'limit', 1000, 1, 10_000)) };
  });
}
