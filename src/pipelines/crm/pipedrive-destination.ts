/**
 * The Pipedrive destination (API v1). Per run:
 * 1. find the key fields by name in /personFields and /dealFields (their keys are per-account
 *    40-hex hashes), creating them if missing;
 * 2. read every page of persons, then of deals, into a snapshot (temp tables), checking
 *    that the pages join (pipedrive-lists.ts: deletions during the read shift offsets);
 * 3. once the persons are in, plan them set-based in Postgres and create the missing and
 *    update the differing, while the deal pages are still being read;
 * 4. plan deals against the person map (snapshot + persons just created), same way.
 * Nothing is sent for unchanged records. Every create is journaled (crm_links) as it
 * happens; a killed run leaves the CRM as the truth for the next snapshot, so it creates
 * no duplicates. A create never goes twice: one that failed ambiguously is *unconfirmed*
 * (counted, stored in crm_failures as such) and the next run's read of the CRM settles it.
 * A record the API refuses is stored in crm_failures and the run goes on; a refused token
 * (401) or user (403) ends the run at once.
 */
import { env } from '../../config.ts';
import { InvalidInputError, SluiceError } from '../../core/errors.ts';
import { AccessRefusedError, PipedriveClient, PipedriveError, UnconfirmedWriteError } from '../../clients/pipedrive.ts';
import type { Client } from '../../db/pool.ts';
import { desiredParams, insertFailures, insertLinks, lastCrmSize, type Failure, type Link } from '../../db/sql/crm.ts';
import {
  RUN_TABLES,
  createDesiredTables,
  createSnapshotTables,
  insertRemoteDeals,
  insertRemotePersons,
  nextDealWork,
  nextPersonWork,
  planDeals,
  planPersons,
  recordPlannedDealFailures,
  type DealWork,
  type PersonWork,
  type PlanCounts,
} from '../../db/sql/crm-plan.ts';
import type { PipedriveDestinationConfig } from './config.ts';
import { readList, type ListRead } from './pipedrive-lists.ts';
import { zeroCounts, type Counts, type Destination, type DestinationResult, type DestinationRun } from './types.ts';

type Rec = Record<string, unknown> & { id: number };

/** What the run's SQL needs of its connection. */
type Db = Pick<Client, 'query'>;

interface PdField {
  id: number;
  key: string;
  name: string;
}

function keyOf(rec: Rec, fieldKey: string): string | null {
  const v = rec[fieldKey];
  return v === null || v === undefined || v === '' ? null : String(v);
}

/** v1 deals carry `person_id` as an object (`{value: id, name, ...}`) or a bare id. */
function personIdOf(v: unknown): number | null {
  if (typeof v === 'number') return v;
  if (v && typeof v === 'object' && typeof (v as { value?: unknown }).value === 'number') return (v as { value: number }).value;
  return null;
}

/**
 * The run's connection, one statement at a time: page inserts, journal writes and plan
 * reads come from concurrent tasks, and pg (9) will not queue them on one client itself.
 */
function serialized(client: Client): Db {
  let tail: Promise<unknown> = Promise.resolve();
  const query = (...args: unknown[]) => {
    const run = tail.then(() => (client.query as (...a: unknown[]) => Promise<unknown>)(...args));
    tail = run.catch(() => {});
    return run;
  };
  return { query } as unknown as Db;
}

/**
 * A refusal of this one record (a 4xx, or retries exhausted): stored, and the run goes on.
 * A refused token or user (401/403, `AccessRefusedError`) would fail every record alike, so
 * it ends the run instead, as a spent rate limit or budget does (those are not PipedriveErrors).
 */
function permanent(err: unknown): err is PipedriveError {
  return err instanceof PipedriveError && !(err instanceof AccessRefusedError);
}

/** How a create that may or may not have been applied is stored among the run's failures. */
export const UNCONFIRMED = 'unconfirmed: ';

/**
 * A record's request failed: unconfirmed (a create that may have been applied), or refused
 * for good (failed); both stored, and the run goes on. Anything else ends the run.
 */
function settle(journal: Journal, counts: Counts, kind: 'person' | 'deal', w: { key: string; action: string }, err: unknown): void {
  if (err instanceof UnconfirmedWriteError) {
    journal.fail({ kind, key: w.key, operation: w.action, error: UNCONFIRMED + err.message });
    counts.unconfirmed++;
    return;
  }
  if (!permanent(err)) throw err;
  journal.fail({ kind, key: w.key, operation: w.action, error: err.message });
  counts.failed++;
}

/**
 * Writes creates to crm_links as they happen (group commit: one write in flight, the next
 * takes everything that arrived meanwhile) and failures every 250 ms.
 */
class Journal {
  private links: Link[] = [];
  private writing = false;
  private failures: Failure[] = [];
  private chain: Promise<void> = Promise.resolve();
  private readonly timer: NodeJS.Timeout;
  private readonly run: DestinationRun;
  private readonly db: Db;

  constructor(run: DestinationRun, db: Db, onTick: () => void) {
    this.run = run;
    this.db = db;
    this.timer = setInterval(() => {
      void this.flush().catch(() => {});
      onTick();
    }, 250);
  }

  /** Journals a create at once; creates that land while a write is in flight join the next. */
  link(l: Link): void {
    this.links.push(l);
    if (this.writing) return;
    this.writing = true;
    const write = (): void => {
      void this.flush()
        .catch(() => {})
        .then(() => (this.links.length ? write() : (this.writing = false)));
    };
    write();
  }

  fail(f: Failure): void {
    this.failures.push(f);
  }

  /** Writes what is buffered; serialised so batches land in order. */
  flush(): Promise<void> {
    const links = this.links.splice(0);
    const failures = this.failures.splice(0);
    const { pool, config, runId } = this.run;
    this.chain = this.chain.then(async () => {
      await insertLinks(pool, config.name, runId, links);
      const persons = links.filter((l) => l.kind === 'person');
      // Persons created in this run join the snapshot: the deal plan maps them.
      await insertRemotePersons(this.db, persons.map((l) => ({ crmId: l.crmId, key: l.key, name: null })));
      await insertFailures(pool, runId, failures);
    });
    return this.chain;
  }

  stop(): void {
    clearInterval(this.timer);
  }
}

/** Runs `fn` over every planned row with `workers` in parallel; stops all on a fatal error. */
async function drain<W extends { seq: number }>(
  fetch: (after: number, limit: number) => Promise<W[]>,
  workers: number,
  fn: (w: W) => Promise<void>,
  halt: () => boolean = () => false,
): Promise<void> {
  let stopped = false;
  async function* rows(): AsyncGenerator<W> {
    let after = 0;
    for (;;) {
      const batch = await fetch(after, 1000);
      if (!batch.length) return;
      yield* batch;
      after = (batch[batch.length - 1] as W).seq;
    }
  }
  const it = rows();
  const results = await Promise.allSettled(
    Array.from({ length: workers }, async () => {
      while (!stopped && !halt()) {
        const r = await it.next();
        if (r.done) return;
        try {
          await fn(r.value);
        } catch (err) {
          stopped = true;
          throw err;
        }
      }
    }),
  );
  const failed = results.find((r) => r.status === 'rejected');
  if (failed) throw (failed as PromiseRejectedResult).reason;
}

export class PipedriveDestination implements Destination {
  readonly type = 'pipedrive';

  async sync(run: DestinationRun): Promise<DestinationResult> {
    const cfg = run.config.destination as PipedriveDestinationConfig;
    const token = env('PIPEDRIVE_API_TOKEN');
    if (!token) throw new InvalidInputError('PIPEDRIVE_API_TOKEN is not set (the Pipedrive token is read from the environment only)');
    const client = new PipedriveClient({
      baseUrl: cfg.baseUrl,
      token,
      concurrency: cfg.concurrency,
      rateLimit: cfg.rateLimit,
      retry: cfg.retry,
      timeoutMs: cfg.timeoutMs,
      budget: run.budgetLeft === undefined ? undefined : { remaining: run.budgetLeft },
      signal: run.signal,
      beforeSend: run.reserveRequest,
    });
    const result: DestinationResult = { persons: zeroCounts(), deals: zeroCounts(), requests: 0, retries_429: 0, details: {} };
    const snapshotOf = () => {
      result.requests = client.stats.requests;
      result.details.unsent = client.stats.unsent;
      result.retries_429 = client.stats.retries429;
      result.details.retries_5xx = client.stats.retries5xx;
      result.details.retries_network = client.stats.retriesNetwork;
      result.details.by_route = client.stats.byRoute;
      return result;
    };
    const conn = await run.pool.connect();
    const db = serialized(conn);
    const journal = new Journal(run, db, () => run.progress(snapshotOf()));
    // Step durations; persons and deals overlap (see below), so they do not add up.
    const timings: Record<string, number> = {};
    result.details.timings_ms = timings;
    const t0 = performance.now();
    const timed = async <T>(name: string, fn: () => Promise<T>): Promise<T> => {
      const t = performance.now();
      try {
        return await fn();
      } finally {
        timings[name] = Math.round(performance.now() - t);
      }
    };
    let desired: Promise<void> = Promise.resolve();
    let persons: Promise<void> = Promise.resolve();
    try {
      const [personKey, dealKey] = await timed('fields', () =>
        Promise.all([
          this.ensureField(client, '/personFields', cfg.personKeyField, run.staged),
          this.ensureField(client, '/dealFields', cfg.dealKeyField, run.staged),
        ]),
      );
      result.details.fields = { person: personKey, deal: dealKey };
      await createSnapshotTables(db);
      // Read the CRM while the sources are staged and the desired state is computed: all on
      // one connection, page inserts queue behind the desired-state queries without
      // holding the reads up.
      const v = run.config.value;
      const params = desiredParams({ pipeline: run.config.name, ...v, statusMap: run.config.statusMap, defaultStatus: run.config.defaultStatus });
      desired = run.staged.then(() => timed('desired', () => createDesiredTables(db, params)));
      desired.catch(() => {});
      const size = (await lastCrmSize(db, run.config.name)) ?? { persons: 0, deals: 0 };
      const snapshot = { persons: 0, deals: 0 };
      result.details.snapshot = snapshot;
      const lists: { persons?: ListRead; deals?: ListRead } = {};
      result.details.lists = lists;
      // Persons first: their plan and their requests go while the deals are still read, so
      // neither the persons' plan nor the Postgres time after the last person page adds to
      // the run (the rate limit, shared by both, sets the pace).
      let pPlan: PlanCounts | undefined;
      let stop = false; // the deals' read failed: no more person requests
      const personsRead = this.readPersons(client, db, personKey, { expected: size.persons, concurrency: cfg.concurrency });
      personsRead.fetched.catch(() => {}); // awaited below
      persons = (async () => {
        lists.persons = await timed('read_persons', () => personsRead.stored);
        snapshot.persons = lists.persons.size;
        await desired;
        pPlan = await timed('plan_persons', () => planPersons(db));
        result.persons.unchanged = pPlan.unchanged;
        await timed('persons', async () => {
          await drain((a, l) => nextPersonWork(db, a, l), cfg.concurrency, (w) => this.person(client, journal, result, personKey, w), () => stop);
          await journal.flush();
        });
      })();
      persons.catch(() => {}); // awaited below
      // The deal pages go as soon as the last person page has answered (its insert may
      // still wait behind the desired-state queries on the connection).
      await personsRead.fetched;
      lists.deals = await timed('read_deals', () => this.readDeals(client, db, dealKey, { expected: size.deals, concurrency: cfg.concurrency }).stored).catch(
        (err: unknown) => {
          stop = true;
          throw err;
        },
      );
      snapshot.deals = lists.deals.size;
      await persons;
      const dPlan = await timed('plan_deals', () => planDeals(db));
      result.details.plan = { persons: pPlan, deals: dPlan };
      result.deals.unchanged = dPlan.unchanged;
      result.deals.failed += await recordPlannedDealFailures(db, run.runId, UNCONFIRMED);
      await timed('deals', () => drain((a, l) => nextDealWork(db, a, l), cfg.concurrency, (w) => this.deal(client, journal, result, dealKey, w)));
      timings.total = Math.round(performance.now() - t0);
      result.details.crm_size = { persons: snapshot.persons + result.persons.created, deals: snapshot.deals + result.deals.created };
      return snapshotOf();
    } finally {
      journal.stop();
      // Nothing is sent once the run is over (a failed step leaves others retrying, e.g. the
      // other field list); requests in flight settle first, so the run counts them (and the
      // attempts that never left) and journals their creates.
      await client.close(new SluiceError('unavailable', 'the run has ended'));
      // Both queue on `db`: they MUST finish before `db` is released.
      await desired.catch(() => {});
      await persons.catch(() => {});
      // MUST flush before releasing: the journal is what a re-run after a crash trusts.
      await journal.flush().catch(() => {});
      run.progress(snapshotOf());
      await db.query(`DROP TABLE IF EXISTS ${RUN_TABLES}`).catch(() => {});
      conn.release();
    }
  }

  /**
   * The key of the custom field named `name` (exact name first, then case-insensitive),
   * created if missing: only once the sources are staged (a source refused, e.g. empty, ends
   * the run before anything is written to the CRM).
   */
  private async ensureField(client: PipedriveClient, path: string, name: string, staged: Promise<unknown>): Promise<string> {
    const find = async () => {
      const all: PdField[] = [];
      for await (const page of client.pages<PdField>(path)) all.push(...page);
      return all.find((f) => f.name === name) ?? all.find((f) => f.name.toLowerCase() === name.toLowerCase());
    };
    const found = await find();
    if (found) return found.key;
    await staged;
    // Failed ambiguously, the create ends the run (UnconfirmedWriteError): the next run's
    // field list finds the field, or creates it then.
    const { data } = await client.call<PdField>('POST', path, { body: { name, field_type: 'varchar' } });
    return data.key;
  }

  /**
   * Reads every page of `path`, `insert`ing each into the snapshot as it arrives. `fetched`:
   * every page has answered; `stored`: and is in Postgres.
   */
  private readAll(
    client: PipedriveClient,
    path: string,
    query: Record<string, string>,
    opts: { expected: number; concurrency: number },
    insert: (page: Rec[]) => Promise<void>,
  ): { fetched: Promise<ListRead>; stored: Promise<ListRead> } {
    const inserts: Array<Promise<void>> = [];
    const fetched = readList<Rec>(client, path, query, opts, (page) => {
      const p = insert(page);
      p.catch(() => {}); // observed in `stored`
      inserts.push(p);
    });
    const stored = fetched.then(
      (read) => Promise.all(inserts).then(() => read),
      async (err: unknown) => {
        await Promise.allSettled(inserts);
        throw err;
      },
    );
    return { fetched, stored };
  }

  private readPersons(client: PipedriveClient, db: Db, personKey: string, opts: { expected: number; concurrency: number }) {
    return this.readAll(client, '/persons', {}, opts, (page) =>
      insertRemotePersons(db, page.map((p) => ({ crmId: p.id, key: keyOf(p, personKey), name: (p.name as string) ?? null }))),
    );
  }

  private readDeals(client: PipedriveClient, db: Db, dealKey: string, opts: { expected: number; concurrency: number }) {
    return this.readAll(client, '/deals', { status: 'all_not_deleted' }, opts, (page) =>
      insertRemoteDeals(
        db,
        page.map((d) => ({
          crmId: d.id,
          key: keyOf(d, dealKey),
          title: (d.title as string) ?? null,
          value: typeof d.value === 'number' ? d.value : d.value == null ? null : Number(d.value),
          currency: (d.currency as string) ?? null,
          personId: personIdOf(d.person_id),
          status: (d.status as string) ?? null,
          expectedCloseDate: (d.expected_close_date as string) || null,
        })),
      ),
    );
  }

  private async person(client: PipedriveClient, journal: Journal, result: DestinationResult, fieldKey: string, w: PersonWork): Promise<void> {
    try {
      if (w.action === 'create') {
        const { data } = await client.call<Rec>('POST', '/persons', { body: { name: w.name, [fieldKey]: w.key } });
        journal.link({ kind: 'person', key: w.key, crmId: data.id });
        result.persons.created++;
      } else {
        await client.call('PUT', `/persons/${w.crm_id}`, { body: { name: w.name } });
        result.persons.updated++;
      }
    } catch (err) {
      settle(journal, result.persons, 'person', w, err);
    }
  }

  private async deal(client: PipedriveClient, journal: Journal, result: DestinationResult, fieldKey: string, w: DealWork): Promise<void> {
    const want: Record<string, unknown> = {
      title: w.title,
      value: Number(w.value),
      currency: w.currency,
      person_id: w.person_crm_id,
      status: w.status,
      expected_close_date: w.order_date,
    };
    try {
      if (w.action === 'create') {
        const { data } = await client.call<Rec>('POST', '/deals', { body: { ...want, [fieldKey]: w.key } });
        journal.link({ kind: 'deal', key: w.key, crmId: data.id });
        result.deals.created++;
      } else {
        // Only the fields that differ: a smaller request, and no clobbering of the rest.
        const have: Record<string, unknown> = {
          title: w.r_title,
          value: w.r_value === null ? null : Number(w.r_value),
          currency: w.r_currency,
          person_id: w.r_person_id,
          status: w.r_status,
          expected_close_date: w.r_date,
        };
        const body = Object.fromEntries(Object.entries(want).filter(([k, v]) => have[k] !== v));
        await client.call('PUT', `/deals/${w.crm_id}`, { body });
        result.deals.updated++;
      }
    } catch (err) {
      settle(journal, result.deals, 'deal', w, err);
    }
  }
}
