/**
 * Generates the set-based merge of a pipeline: staging -> target tables, in statements that
 * each touch every row once (no per-row round trips). Identifiers come from pipeline
 * declarations, are checked against a strict pattern and always quoted.
 *
 * The statements, in order (all in one transaction, see merge.ts):
 *  1. resolve the key of rows with several key columns (first value matching a record)
 *  2. rows sharing a key are folded in place in staging, in file order per merge policy
 *  3. lookups: existing reference rows (states, cities...) resolved in bulk
 *  4. the upsert: a probe of the target's key index per row (into `sluice_m`); the missing
 *     reference rows the records take created in bulk (never one a record does not take);
 *     then one statement that updates the records whose merged values differ, inserts the
 *     new ones, and records every key's id and outcome in `sluice_ids`
 *  5. child upsert (e.g. lead_infos fill-if-blank) for all of them
 *  6. counts: inserted / updated / unchanged rows
 */
import { keyIdentity, type Lookup, type MergePolicy, type Pipeline, type StageType, type TargetField } from '../engine/pipeline.ts';
import { assignment } from './assignment.ts';
import { ident } from './ident.ts';
import { lookupAssignment, lookupChange, lookupGroups, lookupNeeds, lookupPresent, lookupStatements } from './lookup-sql.ts';

// Imported from here across the code base.
export { ident };

const PG_TYPE: Record<StageType, string> = {
  text: 'text',
  boolean: 'boolean',
  numeric: 'numeric',
  date: 'date',
  bigint: 'bigint',
};

export interface StageColumn {
  name: string;
  type: StageType;
}

/** The staging type of each staging column (key and source columns) of a pipeline. */
export function stageTypeMap(p: Pipeline): Map<string, StageType> {
  return new Map(stageColumns(p).map((c) => [c.name, c.type]));
}

/** Staging columns of a pipeline: line, part, key, [key candidates], then source columns. */
export function stageColumns(p: Pipeline): StageColumn[] {
  return [{ name: p.key.name, type: p.key.type }, ...p.columns.map((c) => ({ name: c.name, type: c.type }))];
}

/** With `temp`, a temporary table of the session (local buffers: no shared buffer locking). */
export function createStageSql(p: Pipeline, stage: string, temp = false): string {
  const cols = stageColumns(p).map((c) => `${ident(c.name)} ${PG_TYPE[c.type]}`);
  // n: how many file rows a staged row stands for (1 until rows sharing a key are folded).
  // Autovacuum off: staging lives for one import, and an ANALYZE of it mid-import is
  // CPU taken from the import.
  const table = `${ident(stage)} (line bigint NOT NULL, part integer NOT NULL, n integer NOT NULL DEFAULT 1, ${cols.join(', ')}, key_candidates text[])`;
  return temp ? `CREATE TEMP TABLE IF NOT EXISTS ${table}` : `CREATE UNLOGGED TABLE IF NOT EXISTS ${table} WITH (autovacuum_enabled = false)`;
}

/** `COPY ... FROM STDIN` (text format) into a staging table, columns in the row mapper's order. */
export function stageCopySql(p: Pipeline, stage: string): string {
  const cols = ['line', 'part', ...stageColumns(p).map((c) => c.name), 'key_candidates'].map(ident);
  return `COPY ${ident(stage)} (${cols.join(', ')}) FROM STDIN`;
}

/** Which merge policy folds each staging column across rows of one key. */
function columnPolicies(p: Pipeline): Map<string, MergePolicy> {
  const pol = new Map<string, MergePolicy>();
  const set = (col: string, m: MergePolicy) => {
    const prev = pol.get(col);
    if (prev && prev !== m) throw new Error(`pipeline ${p.name}: staging column ${col} used with policies ${prev} and ${m}`);
    pol.set(col, m);
  };
  for (const f of p.target.fields) set(f.from, f.merge);
  for (const f of p.target.child?.fields ?? []) set(f.from, f.merge);
  for (const l of p.target.lookups ?? []) {
    for (const m of l.match) if (m.from) set(m.from, l.merge);
    for (const c of l.create ?? []) set(c.from, l.merge);
  }
  return pol;
}

function fold(col: string, policy: MergePolicy): string {
  const c = ident(col);
  switch (policy) {
    case 'overwrite':
      return `(array_agg(${c} ORDER BY line DESC) FILTER (WHERE ${c} IS NOT NULL))[1] AS ${c}`;
    case 'fill-if-blank':
      return `(array_agg(${c} ORDER BY line) FILTER (WHERE ${c} IS NOT NULL))[1] AS ${c}`;
    case 'keep-first':
      // The value of the row that creates the record, blank included: as when that row is
      // merged before the others (another chunk or part), which then change nothing.
      return `(array_agg(${c} ORDER BY line))[1] AS ${c}`;
    case 'add-to-set':
      return `string_agg(${c}, ',' ORDER BY line) AS ${c}`;
  }
}

/** assignment() for a field, lookupAssignment() for a lookup column (`a.lookup`), on the record aliased `alias`. */
export function columnAssignment(
  p: Pipeline,
  a: { column: string; merge: MergePolicy; text: boolean; lookup?: Lookup | undefined },
  incoming: string,
  alias: string,
): { set: string; changes: string } | undefined {
  return a.lookup ? lookupAssignment(p, a.lookup, incoming, alias) : assignment(a.merge, incoming, `${alias}.${ident(a.column)}`, a.text);
}

/**
 * Fold expressions for the staging columns of lookups that depend on each other (a city
 * matched by its name and its state's id): such columns are taken together from ONE row,
 * never each from its own. Folded one by one, rows (no city, no state), (Campinas, no
 * state), (Niterói, RJ) of one key gave "Campinas" with "RJ": a city no row names, created
 * in the lookup table. The row is the first (last, for `overwrite`) one that gives any
 * lookup of the group a value (lookupPresent): the place the same rows keep when applied
 * one at a time in file order (a chunk, then the last merge), since a fill-if-blank group
 * is filled whole and only while the record has none of its columns (lookupAssignment).
 * Ranking the city above the state, as this did, folded rows (no city, SP), (Campinas, SP)
 * into Campinas/SP where split they gave SP alone: the chunk size changed the lead. Lookups
 * without dependencies fold column by column as before.
 */
function lookupFoldGroups(p: Pipeline): Map<string, string> {
  const lookups = p.target.lookups ?? [];
  const byColumn = new Map(lookups.map((l) => [l.column, l]));
  const sources = (l: Lookup): string[] => [
    ...l.match.flatMap((m) => (m.from ? [m.from] : sources(byColumn.get(m.lookup!)!))),
    ...(l.create ?? []).map((c) => c.from),
  ];
  const out = new Map<string, string>();
  for (const group of lookupGroups(p)) {
    const top = group[0]!;
    const policies = new Set(group.map((l) => l.merge));
    if (policies.size > 1) throw new Error(`pipeline ${p.name}: lookups ${group.map((l) => l.column).join(', ')} depend on each other and must share one merge policy`);
    const order = `line${top.merge === 'overwrite' ? ' DESC' : ''}`;
    // Read from the fold's `gone` (the key's rows), qualified by its name.
    const names = [...new Set(group.map((l) => lookupPresent(p, l.column, 'gone')))].join(' OR ');
    const cols = [...new Set(group.flatMap(sources))];
    for (const c of cols) out.set(c, `(array_agg(${ident(c)} ORDER BY ${order}) FILTER (WHERE ${names}))[1] AS ${ident(c)}`);
  }
  return out;
}

/** The value a field takes from staging row `alias`: cast, or split into a set. */
export function fieldValue(f: TargetField, alias: string): string {
  return f.merge === 'add-to-set'
    ? `coalesce(string_to_array(${alias}.${ident(f.from)}, ','), '{}')`
    : f.targetType
      ? `${alias}.${ident(f.from)}::${f.targetType}`
      : `${alias}.${ident(f.from)}`;
}

export interface MergeSql {
  resolveKeys: string;
  /** Keys on more than one row; with `known`, among the candidate keys in $1 only. */
  duplicates: (known: boolean) => string;
  /** Folds the rows of the keys in $1 into one row each. */
  fold: string;
  /** Resolves the references that exist (read-only), for the probe. */
  lookups: string[];
  /** Fills sluice_m (see the upsert). */
  probe: string[];
  /** After the probe: creates the references its records take and fills their ids into sluice_m. */
  createLookups: string[];
  upsert: string;
  childInsert: string | undefined;
  childSource: string | undefined;
  childUpsert: string | undefined;
  childInsertMissing: string | undefined;
  childFlag: string | undefined;
  /** Counts of the stage, its keys possibly folded or met in earlier chunks (see merge.ts). */
  counts: string;
  /** Counts when every staged row is a key met only here. */
  countsSimple: string;
}

/** All statements of the merge of `stage` into the pipeline's target. */
export function mergeSql(p: Pipeline, stage: string, stageTypes: Map<string, StageType>): MergeSql {
  const S = ident(stage);
  const t = p.target;
  const T = ident(t.table);
  const K = ident(p.key.name);
  const TK = ident(t.key);
  const policies = columnPolicies(p);
  const lookups = t.lookups ?? [];

  // Each candidate is looked up with a scalar sub-select (a probe per candidate, never
  // turned into a join that could hash the whole target), run with sequential scans off
  // (merge.ts) so that stale statistics cannot make it a scan.
  const resolveKeys = `UPDATE ${S} s SET ${K} = r.k FROM (
      SELECT s2.line, (SELECT u.k FROM unnest(s2.key_candidates) WITH ORDINALITY u(k, i)
                        WHERE (SELECT true FROM ${T} t WHERE t.${TK} = u.k LIMIT 1) ORDER BY u.i LIMIT 1) AS k
        FROM ${S} s2 WHERE cardinality(s2.key_candidates) > 1) r
     WHERE s.line = r.line AND r.k IS NOT NULL AND r.k <> s.${K}`;

  // Rows sharing a key are folded in place: deleted from staging and replaced by one row
  // per key (line = the first, n = how many) merged in file order per policy, add-to-set
  // values de-duplicated. Afterwards staging holds exactly one row per key, so every later
  // statement reads it directly (no copy of the rows is materialized).
  const cols = [...policies.keys()];
  const groups = lookupFoldGroups(p);
  const folded = cols.map((c) => (groups.has(c) ? groups.get(c)! : fold(c, policies.get(c)!))).join(', ');
  const outer = cols
    .map((c) =>
      policies.get(c) === 'add-to-set'
        ? `(SELECT string_agg(x, ',' ORDER BY i) FROM (SELECT x, min(i) AS i FROM unnest(string_to_array(f.${ident(c)}, ',')) WITH ORDINALITY u(x, i) GROUP BY x) d) AS ${ident(c)}`
        : `f.${ident(c)}`,
    )
    .join(', ');
  const duplicates = (known: boolean) =>
    `SELECT ${K} AS key FROM ${S} ${known ? `WHERE ${K} = ANY ($1::text[])` : ''} GROUP BY ${K} HAVING count(*) > 1`;
  const foldSql = `WITH gone AS (DELETE FROM ${S} WHERE ${K} = ANY ($1::text[]) RETURNING *)
    INSERT INTO ${S} (line, part, n, ${K}, ${cols.map(ident).join(', ')})
    SELECT f.line, 0, f.n, f.${K}, ${outer} FROM (
      SELECT ${K}, min(line) AS line, sum(n)::int AS n, ${folded} FROM gone GROUP BY ${K}) f`;

  // Existing references are resolved before the probe; the missing ones a record takes are
  // created after it (createLookups), once the probe knows which records take them.
  const { statements: lookupSql, join: lookupJoin, sources: lookupSourceCols } = lookupStatements(p, stage, stageTypes, 'resolve');
  const lookupValue = (i: number) => `lk._l${i}`;

  const isText = (col: string) => stageTypes.get(col) === 'text';
  const main = [
    ...t.fields.map((f) => ({ column: f.column, value: fieldValue(f, 'm'), merge: f.merge, text: isText(f.from) && !f.targetType, lookup: undefined as Lookup | undefined })),
    ...lookups.map((l, i) => ({ column: l.column, value: lookupValue(i), merge: l.merge, text: false, lookup: l as Lookup | undefined })),
  ];
  const vals = main.map((a, i) => ({ ...a, v: `v${i}` }));
  // Lookup i's id is in v<lookupAt + i>, its presence in p<i>.
  const lookupAt = t.fields.length;
  const changed = vals
    .map((a, i) => (a.lookup ? lookupChange(p, i - lookupAt, `x.${a.v}`, `x.p${i - lookupAt}`, 't') : columnAssignment(p, a, `x.${a.v}`, 't')?.changes))
    .filter((c): c is string => c !== undefined);
  const updSets = vals.flatMap((a) => {
    const r = columnAssignment(p, a, `m.${a.v}`, 't');
    return r ? [`${ident(a.column)} = ${r.set}`] : [];
  });
  // Two statements. The probe fills sluice_m: each staged row, its merged values, the id of
  // its record if there is one, and whether the merge changes it. The target is probed per
  // row through its key index whatever the planner's statistics say (LATERAL ... LIMIT 1 is
  // never turned into a hash join): the target grows inside this transaction, so its
  // statistics may call it empty while it holds millions of rows, and a hash join would
  // then scan all of it for every chunk. The write then runs with hash joins and sequential
  // scans off (merge.ts): records whose merged values differ are updated by primary key,
  // new ones inserted by a plain INSERT (no speculative insertion, no lock on unchanged
  // records: ON CONFLICT DO UPDATE locks, and so writes, every conflicting row), and every
  // key's id and outcome go to `sluice_ids`. Merges into the target are serialized by an
  // advisory lock (merge.ts); a writer outside Sluice inserting the same key meanwhile makes
  // the INSERT fail on the unique key, and the import fails whole rather than losing a row.
  // A target named by its key (no id column): tid is the record's tuple id, a found-marker
  // only; its records are updated by key instead, and sluice_ids holds no id for them.
  const byKey = keyIdentity(t);
  // With lookups, sluice_m also holds their source values, presence (p<i>) and need (n<i>,
  // lookupNeeds), and whether some reference a record takes is still missing (`unresolved`).
  const needs = lookupNeeds(p, (i) => `x.p${i}`, byKey ? 't.ctid IS NOT NULL' : 't.id IS NOT NULL', 't');
  const lookupCols = lookups.length
    ? [
        ...lookups.map((l, i) => `, ${lookupPresent(p, l.column, 'm')} AS p${i}`),
        ...lookupSourceCols.map((c) => `, m.${ident(c)}`),
      ].join('')
    : '';
  const lookupFlags = lookups.length
    ? `${needs.map((n, i) => `, ${n} AS n${i}`).join('')}, coalesce(${needs.map((n, i) => `(x.v${lookupAt + i} IS NULL AND ${n})`).join(' OR ')}, false) AS unresolved`
    : '';
  const probeSelect = `SELECT x.*, ${byKey ? 't.ctid' : 't.id'} AS tid, (${changed.join(' OR ') || 'false'}) AS changed${lookupFlags}
        FROM (SELECT m.${K} AS key, ${vals.map((a) => `${a.value} AS ${a.v}`).join(', ')}${lookupCols} FROM ${S} m ${lookupJoin}) x
        LEFT JOIN LATERAL (SELECT ${byKey ? 'ctid, ' : ''}* FROM ${T} t WHERE t.${TK} = x.key LIMIT 1) t ON true`;
  // The records to update are named by id (or key) twice: in the join, and as a list the
  // target's primary key is searched with, so that no plan reads more of the target than
  // those records, whatever its statistics say; sluice_m's index on tid (or key) keeps the
  // join a probe in either direction.
  const probe = [
    `CREATE TEMP TABLE IF NOT EXISTS sluice_m ON COMMIT DROP AS ${probeSelect} WITH NO DATA`,
    byKey ? 'CREATE INDEX IF NOT EXISTS sluice_m_key ON sluice_m (key)' : 'CREATE INDEX IF NOT EXISTS sluice_m_tid ON sluice_m (tid)',
    'TRUNCATE sluice_m',
    `INSERT INTO sluice_m ${probeSelect}`,
  ];
  // The references records take that did not exist: created from the rows that need them,
  // their ids written into sluice_m (a reference created for one row may be another's too).
  const create = lookupStatements(p, 'sluice_m', stageTypes, 'resolve-or-create', 'm.unresolved');
  const createLookups = lookups.length
    ? [
        ...create.statements,
        `UPDATE sluice_m m SET ${lookups.map((_, i) => `v${lookupAt + i} = coalesce(m.v${lookupAt + i}, lk._l${i})`).join(', ')}
           FROM sluice_lk lk WHERE m.unresolved AND ${create.on}`,
      ]
    : [];
  const name = byKey ? { t: `t.${TK}`, m: 'key' } : { t: 't.id', m: 'tid' };
  const upsert = `WITH upd AS (
      UPDATE ${T} t SET ${updSets.length ? `${updSets.join(', ')}, ` : ''}updated_at = now()
        FROM sluice_m m WHERE m.tid IS NOT NULL AND ${name.t} = m.${name.m} AND m.changed
         AND ${name.t} = ANY (ARRAY(SELECT ${name.m} FROM sluice_m WHERE changed))),
    ins AS (
      INSERT INTO ${T} (${[TK, ...vals.map((a) => ident(a.column))].join(', ')})
      SELECT key, ${vals.map((a) => a.v).join(', ')} FROM sluice_m WHERE tid IS NULL
      RETURNING ${byKey ? 'NULL::bigint' : 'id'} AS id, ${TK} AS key)
    INSERT INTO sluice_ids (key, id, inserted, changed)
    SELECT key, id, true, true FROM ins
    UNION ALL SELECT key, ${byKey ? 'NULL::bigint' : 'tid'}, false, changed FROM sluice_m WHERE tid IS NOT NULL`;

  const child = t.child;
  let childUpsert: string | undefined;
  let childInsert: string | undefined;
  let childInsertMissing: string | undefined;
  let childSource: string | undefined;
  let childFlag: string | undefined;
  if (child) {
    const C = ident(child.table);
    const FK = ident(child.foreignKey);
    const cf = child.fields;
    // New records get their child rows by a plain INSERT (no speculative insertion: a third
    // less WAL than ON CONFLICT).
    const childCols = `${FK}, ${cf.map((f) => ident(f.column)).join(', ')}`;
    const childSelect = `SELECT i.id, ${cf.map((f) => fieldValue(f, 'm')).join(', ')} FROM sluice_ids i JOIN ${S} m ON m.${K} = i.key`;
    const anyValue = cf.map((f) => `m.${ident(f.from)} IS NOT NULL`).join(' OR ');
    childInsert = `INSERT INTO ${C} (${childCols}) ${childSelect} WHERE i.inserted AND (${anyValue})`;
    // Existing records: an UPDATE that writes (and locks) only rows it changes — ON CONFLICT
    // DO UPDATE would lock, and so write, every conflicting row even when nothing changes —
    // then child rows for existing records that had none.
    const updSets: string[] = [];
    const updChanges: string[] = [];
    for (const f of cf) {
      const r = assignment(f.merge, fieldValue(f, 'm'), `c.${ident(f.column)}`, isText(f.from) && !f.targetType);
      if (!r) continue;
      updSets.push(`${ident(f.column)} = ${r.set}`);
      updChanges.push(r.changes);
    }
    // The existing records' child work runs from a small table of their ids and values
    // joined to the child by its key with index probes (see merge.ts): a hash join would
    // scan the whole child table, millions of rows, for a file of thousands. In id order,
    // so the probes walk the child's key index and heap forwards.
    childSource = [
      `CREATE TEMP TABLE IF NOT EXISTS sluice_child (id bigint, ${cf.map((f) => `${ident(f.from)} ${PG_TYPE[stageTypes.get(f.from)!]}`).join(', ')}) ON COMMIT DROP`,
      'CREATE INDEX IF NOT EXISTS sluice_child_id ON sluice_child (id)',
      'TRUNCATE sluice_child',
      `INSERT INTO sluice_child SELECT i.id, ${cf.map((f) => `m.${ident(f.from)}`).join(', ')} FROM sluice_ids i JOIN ${S} m ON m.${K} = i.key
       WHERE NOT i.inserted AND (${anyValue}) ORDER BY i.id`,
    ].join(';\n');
    childUpsert = `WITH u AS (
        UPDATE ${C} c SET ${updSets.join(', ')}, updated_at = now()
          FROM sluice_child m
         WHERE c.${FK} = m.id AND (${updChanges.join(' OR ') || 'false'}) AND c.${FK} = ANY (ARRAY(SELECT id FROM sluice_child))
        RETURNING c.${FK} AS id)
      INSERT INTO sluice_child_changed SELECT id FROM u`;
    childInsertMissing = `WITH u AS (
        INSERT INTO ${C} (${childCols})
        SELECT m.id, ${cf.map((f) => fieldValue(f, 'm')).join(', ')} FROM sluice_child m
          LEFT JOIN LATERAL (SELECT true AS found FROM ${C} c WHERE c.${FK} = m.id LIMIT 1) c ON true
         WHERE c.found IS NULL
        RETURNING ${FK} AS id)
      INSERT INTO sluice_child_changed SELECT id FROM u`;
    childFlag = `UPDATE sluice_ids i SET changed = true FROM sluice_child_changed u WHERE i.id = u.id AND NOT i.changed`;
  }

  const countsSimple = `SELECT count(*) FILTER (WHERE inserted) AS inserted,
      count(*) FILTER (WHERE changed AND NOT inserted) AS updated FROM sluice_ids`;

  // Each staged row stands for n file rows of its key (folded). Keys may have been met in an
  // earlier chunk of this transaction (a: that chunk's outcome, in sluice_ids_all; empty
  // when there were none). Counted as if all rows of a key had been merged at once: a key
  // created by this import gives 1 inserted, its other rows updated; an existing key
  // changed by any of its rows gives all its rows updated (an earlier chunk counted its
  // row unchanged if that row alone changed nothing: moved here); else all unchanged.
  const counts = `SELECT
      count(*) FILTER (WHERE a.key IS NULL AND i.inserted) AS inserted,
      coalesce(sum(CASE
        WHEN a.key IS NOT NULL AND (a.inserted OR a.changed) THEN m.n
        WHEN a.key IS NOT NULL AND coalesce(i.changed, false) THEN m.n + 1
        WHEN a.key IS NULL AND i.inserted THEN m.n - 1
        WHEN a.key IS NULL AND i.changed THEN m.n
        ELSE 0 END), 0) AS updated,
      coalesce(sum(CASE
        WHEN a.key IS NOT NULL AND (a.inserted OR a.changed) THEN 0
        WHEN a.key IS NOT NULL AND coalesce(i.changed, false) THEN -1
        WHEN a.key IS NULL AND coalesce(i.inserted OR i.changed, false) THEN 0
        ELSE m.n END), 0) AS unchanged
    FROM ${S} m LEFT JOIN sluice_ids i ON i.key = m.${K} LEFT JOIN sluice_ids_all a ON a.key = m.${K}`;

  return { resolveKeys, duplicates, fold: foldSql, lookups: lookupSql, probe, createLookups, upsert, childInsert, childSource, childUpsert, childInsertMissing, childFlag, counts, countsSimple };
}
