/**
 * CRM sync runs for the dashboard: GET /crm/runs (newest first; ?limit=1..500, default 50;
 * ?pipeline=name) and GET /crm/runs/:id/failures (the records that failed in a run; 404 in
 * the usual error form for a run that does not exist). URL passwords are masked in what is
 * shown, also in runs recorded before sources' locations were stored masked. Protected like
 * every route that is not public (src/http/auth.ts): the API token when one is set, else a
 * loopback Host (failures name customers' records).
 */
import type { FastifyInstance } from 'fastify';
import { InvalidInputError, NotFoundError } from '../../core/errors.ts';
import { maskUrlPasswords } from '../../core/url-credentials.ts';
import { listFailures, listRuns, runExists } from '../../db/sql/crm.ts';
import type { AppContext } from '../context.ts';
import { addOpenApi } from '../openapi.ts';
import { crmOpenApi } from './crm-openapi.ts';

function intParam(v: string | undefined, name: string, def: number, min: number, max: number): number {
  if (v === undefined) return def;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min || n > max) throw new InvalidInputError(`${name} must be an integer from ${min} to ${max}`);
  return n;
}

/** Every string in a JSON value with its URL passwords masked. */
function masked<T>(v: T): T {
  if (typeof v === 'string') return maskUrlPasswords(v) as T;
  if (Array.isArray(v)) return v.map(masked) as T;
  if (v !== null && typeof v === 'object' && !(v instanceof Date)) {
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, masked(x)])) as T;
  }
  return v;
}

export function crmRoutes(app: FastifyInstance, ctx: AppContext): void {
  addOpenApi(crmOpenApi);
  app.get('/crm/runs', async (req) => {
    const q = req.query as { limit?: string; pipeline?: string };
    const limit = intParam(q.limit, 'limit', 50, 1, 500);
    const runs = await listRuns(ctx.pool, limit, q.pipeline || undefined);
    // Runs recorded before URL passwords were masked at the source may still hold them.
    return { runs: masked(runs) };
  });
  app.get('/crm/runs/:id/failures', async (req) => {
    const { id } = req.params as { id: string };
    const q = req.query as { limit?: string };
    const runId = intParam(id, 'run id', 0, 1, Number.MAX_SAFE_INTEGER);
    const limit = intParam(q.limit, 'limit', 1000, 1, 10_000);
    const failures = await listFailures(ctx.pool, runId, limit);
    if (failures.length === 0 && !(await runExists(ctx.pool, runId))) throw new NotFoundError(`no CRM run ${runId}`);
    return { failures };
  });
}
