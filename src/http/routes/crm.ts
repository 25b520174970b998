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
import { intParam, stringParam, type Query } from '../query-params.ts';

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
    const q = req.query as Query;
    const limit = intParam(q, 'limit', { min: 1, max: 500 }) ?? 50;
    const runs = await listRuns(ctx.pool, limit, stringParam(q, 'pipeline'));
    // Runs recorded before URL passwords were masked at the source may still hold them.
    return { runs: masked(runs) };
  });
  app.get('/crm/runs/:id/failures', async (req) => {
    const runId = intParam(req.params as Query, 'id', { min: 1, max: Number.MAX_SAFE_INTEGER });
    if (runId === undefined) throw new InvalidInputError('id must be an integer >= 1');
    const limit = intParam(req.query as Query, 'limit', { min: 1, max: 10_000 }) ?? 1000;
    const failures = await listFailures(ctx.pool, runId, limit);
    if (failures.length === 0 && !(await runExists(ctx.pool, runId))) throw new NotFoundError(`no CRM run ${runId}`);
    return { failures };
  });
}
