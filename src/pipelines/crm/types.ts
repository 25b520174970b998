/**
 * Terminology of the CRM sync:
 * - source: one of the three CSV files (customers, orders, payments), staged in Postgres.
 * - desired state: one person per customer, one deal per order (value = the order's
 *   payments summed, in currency units, times the multiplier), computed set-based.
 * - destination: where persons and deals go (Pipedrive, or a Postgres table).
 * - plan: desired state compared with the destination: create, update, unchanged, fail.
 * - run: one sync, recorded in crm_runs with its summary; failures in crm_failures.
 * - link: a CRM record Sluice created, journaled in crm_links as it happens.
 * - unconfirmed: a create whose answer was lost (5xx, timeout): it may exist in the CRM.
 *   It is never sent twice in a run; the next run's read of the CRM settles it.
 */
import type { Pool } from '../../db/pool.ts';
import type { CrmConfig } from './config.ts';

export interface Counts {
  created: number;
  updated: number;
  unchanged: number;
  failed: number;
  /** Creates sent whose answer was lost (5xx, timeout): maybe applied; the next run settles them. */
  unconfirmed: number;
}

/** The summary the CLI prints with `--json` (and crm_runs.summary holds). */
export interface SyncSummary {
  persons: Counts;
  deals: Counts;
  /**
   * Requests that may have reached the CRM (what its limits and the daily budget count);
   * attempts that surely never left (connection refused, DNS) are `details.unsent`.
   */
  requests: number;
  retries_429: number;
  duration_ms: number;
}

export interface DestinationResult {
  persons: Counts;
  deals: Counts;
  /** As in SyncSummary: requests that may have reached the CRM. */
  requests: number;
  retries_429: number;
  /** Destination-specific facts for the run record (plan sizes, requests per route...). */
  details: Record<string, unknown>;
}

export interface DestinationRun {
  pool: Pool;
  config: CrmConfig;
  runId: number;
  signal?: AbortSignal | undefined;
  /** Resolves when the sources are staged: read the CRM meanwhile, plan after. */
  staged: Promise<unknown>;
  /** Requests the daily budget still allows (undefined: no budget). */
  budgetLeft: number | undefined;
  /**
   * Called before each request attempt that may reach the CRM; the attempt is sent once it
   * resolves (the run has then counted it in crm_runs, so a killed run under-counts none).
   */
  reserveRequest?: (() => Promise<void> | undefined) | undefined;
  /** Called now and then with partial counts, for the run record. */
  progress(partial: DestinationResult): void;
}

export interface Destination {
  readonly type: string;
  sync(run: DestinationRun): Promise<DestinationResult>;
}

export function zeroCounts(): Counts {
  return { created: 0, updated: 0, unchanged: 0, failed: 0, unconfirmed: 0 };
}
