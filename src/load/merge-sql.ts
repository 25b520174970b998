/**
 * Generates the set-based merge of a pipeline: staging -> target tables, in statements that
 * each touch every row once (no per-row round trips). Identifiers come from pipeline
 * declarations, are checked against a strict pattern and always quoted.
 *
 * The statements, in order (all in one transaction, see merge.ts):
 *  1. resolve the key of rows with several key columns (first value matching a record)
 *  2. rows sharing a key are folded in place in staging, in file order per merge policy
 *  3. lookups: missing reference rows (states, cities...) created in bulk
 *  4. the upsert: a probe of the target's key index per row (into `sluice_m`), then one
 *     statement that updates the records whose merged values differ, inserts the new ones,
 *     and records every key's id and outcome in `sluice_ids`
 *  5. child upsert (e.g. lead_infos fill-if-blank) for all of them
 *  6. counts: inserted / updated / unchanged rows
 */
import { keyIdentity, type Lookup, type MergePolicy, type Pipeline, type StageType, type TargetField } from '../engine/pipeline.ts';

const IDENT = /^[a-z_][a-z0-9_]*$/;

/** Quotes an identifier after checking it against the allowlist pattern. */
export function ident(name: string): string {
  if (!IDENT.test(name)) throw new Error(`invalid SQL identifier in pipeline declaration: ${JSON.stringify(name)}`);
  return `"${name}"`;
}

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

/**
 * The lookups that depend on each other, in groups: each lookup that depends on another, with
 * everything it depends on (a city with its state), the most dependent first.
 */
function lookupGroups(p: Pipeline): Lookup[][] {
  const lookups = p.target.lookups ?? [];
  const byColumn = new Map(lookups.map((l) => [l.column, l]));
  const depth = (l: Lookup): number => Math.max(0, ...l.match.map((m) => (m.lookup ? 1 + depth(byColumn.get(m.lookup)!) : 0)));
  return lookups.filter((l) => depth(l) > 0).map((top) => {
    const members = new Set<Lookup>([top]);
    for (const l of members) for (const m of l.match) if (m.lookup) members.add(byColumn.get(m.lookup)!);
    return [...members].sort((a, b) => depth(b) - depth(a));
  });
}

/**
 * The SET expression and "changes the stored record" predicate of a lookup column (stored
 * in `alias`, the record). A lookup of a group (lookupGroups) that fills only when blank
 * fills with its group, as one place: only when the record has none of the group's columns.
 * Filled each on its own, a lead with a state and no city took a later import's city of
 * another state (SP with Recife), and one with a city and no state a later row's state.
 */
export function lookupAssignment(p: Pipeline, l: Lookup, incoming: string, alias: string): { set: string; changes: string } | undefined {
  const stored = `${alias}.${ident(l.column)}`;
  // The widest group holding it: the whole place (a chain of three gives two groups).
  const group = l.merge === 'fill-if-blank' ? lookupGroups(p).filter((g) => g.includes(l)).sort((a, b) => b.length - a.length)[0] : undefined;
  if (!group) return assignment(l.merge, incoming, stored, false);
  const none = [...new Set(group.map((g) => g.column))].map((c) => `${alias}.${ident(c)} IS NULL`).join(' AND ');
  return { set: `CASE WHEN ${none} THEN ${incoming} ELSE ${stored} END`, changes: `(${none} AND ${incoming} IS NOT NULL)` };
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

/** A character JavaScript's trim() keeps (the white space it removes, as a regular-expression class). */
const NOT_SPACE = '[^[:space:]\\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000\\ufeff]';

/**
 * SET expression and "this changes the stored value" predicate for one field of an
 * UPDATE: `incoming` is the merged value, `stored` the record's.
 */
export function assignment(merge: MergePolicy, incoming: string, stored: string, text: boolean): { set: string; changes: string } | undefined {
  // Blank as incoming cells are (trimmed by JavaScript, then empty): NULL, or text of white
  // space only. The pattern runs only on a value starting with a space or a non-ASCII
  // character: a stored value starting with a visible ASCII character is never blank.
  const isBlank = text
    ? `(CASE WHEN ${stored} IS NULL OR ${stored} = '' THEN true WHEN ascii(${stored}) BETWEEN 33 AND 126 THEN false ELSE ${stored} !~ '${NOT_SPACE}' END)`
    : `${stored} IS NULL`;
  switch (merge) {
    case 'overwrite':
      return {
        set: `COALESCE(${incoming}, ${stored})`,
        changes: `(${incoming} IS NOT NULL AND ${incoming} IS DISTINCT FROM ${stored})`,
      };
    case 'fill-if-blank':
      return { set: `CASE WHEN ${isBlank} AND ${incoming} IS NOT NULL THEN ${incoming} ELSE ${stored} END`, changes: `(${isBlank} AND ${incoming} IS NOT NULL)` };
    case 'add-to-set':
      // Staged sets are already de-duplicated (per row in Node, RowMapper; per key in the
      // fold). array_position, not <> ALL: a stored set holding a NULL (written outside
      // Sluice) would make every comparison NULL and keep every new member out.
      return {
        set: `CASE WHEN ${incoming} <@ ${stored} THEN ${stored} ELSE ${stored} || ARRAY(SELECT x FROM unnest(${incoming}) WITH ORDINALITY u(x, i) WHERE array_position(${stored}, x) IS NULL ORDER BY i) END`,
        changes: `NOT (${incoming} <@ ${stored})`,
      };
    case 'keep-first':
      return undefined;
  }
}

/**
 * Lookups work on the few distinct source values of `source` (in `sluice_lk`), not on every
 * row: with `resolve-or-create`, create what is missing, then resolve each distinct
 * combination to its ids; with `resolve`, only find what exists (a read-only pass, see
 * chunk-sql.ts). Chained lookups (cities on state_id) use the ids resolved before them.
 * Staged text is never '' (blank is NULL), so coalesce(x, '') is a null-safe key that keeps
 * the row join (`join`, rows aliased `m`; `on`, its condition) hashable. `where` (on alias
 * `m`) limits the source rows.
 */
export function lookupStatements(
  p: Pipeline,
  source: string,
  stageTypes: Map<string, StageType>,
  mode: 'resolve-or-create' | 'resolve',
  where = '',
): { statements: string[]; join: string; on: string; sources: string[] } {
  const lookups = p.target.lookups ?? [];
  const lkSources = lookupSources(p);
  for (const c of lkSources) {
    if (stageTypes.get(c) !== 'text') throw new Error(`pipeline ${p.name}: lookup source ${c} must be a text column`);
  }
  if (lookups.length === 0) return { statements: [], join: '', on: 'true', sources: [] };
  const statements: string[] = [];
  const idCols = lookups.map(() => 'NULL::bigint').join(', ');
  // Created once per transaction, refilled per merge (a pipelined import merges chunks).
  statements.push(`CREATE TEMP TABLE IF NOT EXISTS sluice_lk (${lkSources.map((c) => `${ident(c)} text`).join(', ')}, ${lookups.map((_, i) => `_l${i} bigint`).join(', ')}) ON COMMIT DROP`);
  statements.push('TRUNCATE sluice_lk');
  statements.push(`INSERT INTO sluice_lk SELECT DISTINCT ${lkSources.map(ident).join(', ')}, ${idCols} FROM ${ident(source)} m ${where ? `WHERE ${where}` : ''}`);
  const resolved = new Map<string, number>();
  lookups.forEach((l, i) => {
    const L = ident(l.table);
    const src = (m: { from?: string; lookup?: string }) => (m.from ? `lk.${ident(m.from)}` : `lk._l${resolved.get(m.lookup!)}`);
    if (mode === 'resolve-or-create') {
      const insertCols = [...l.match.map((m) => ident(m.column)), ...(l.create ?? []).map((c) => ident(c.column))];
      const insertVals = [...l.match.map(src), ...(l.create ?? []).map((c) => `lk.${ident(c.from)}`)];
      statements.push(`INSERT INTO ${L} (${insertCols.join(', ')})
        SELECT DISTINCT ${insertVals.join(', ')} FROM sluice_lk lk WHERE ${src(l.match[0]!)} IS NOT NULL ON CONFLICT DO NOTHING`);
    }
    const on = l.match
      .map((m) => (m.from ? `r.${ident(m.column)} = ${src(m)}` : `r.${ident(m.column)} IS NOT DISTINCT FROM ${src(m)}`))
      .join(' AND ');
    // Read-only: a reference whose own reference was not found is not found either (a
    // NULL state_id would otherwise match the city of that name without a state).
    const deps = mode === 'resolve'
      ? l.match.filter((m) => m.lookup).map((m) => ` AND (lk._l${resolved.get(m.lookup!)} IS NOT NULL OR NOT ${lookupPresent(p, m.lookup!, 'lk')})`).join('')
      : '';
    statements.push(`UPDATE sluice_lk lk SET _l${i} = r.id FROM ${L} r WHERE ${on}${deps}`);
    resolved.set(l.column, i);
  });
  const on = lkSources.map((c) => `coalesce(lk.${ident(c)}, '') = coalesce(m.${ident(c)}, '')`).join(' AND ');
  return { statements, join: `LEFT JOIN sluice_lk lk ON ${on}`, on, sources: lkSources };
}

/** Staging columns the lookups read. */
export function lookupSources(p: Pipeline): string[] {
  const lookups = p.target.lookups ?? [];
  return [...new Set(lookups.flatMap((l) => [...l.match.flatMap((m) => (m.from ? [m.from] : [])), ...(l.create ?? []).map((c) => c.from)]))];
}

/**
 * "Row `alias` gives lookup `column` a value": its first match has one. A lookup creates
 * what it does not find, so then it always resolves to an id.
 */
export function lookupPresent(p: Pipeline, column: string, alias: string): string {
  const l = (p.target.lookups ?? []).find((x) => x.column === column);
  if (!l) throw new Error(`pipeline ${p.name}: no lookup for ${column}`);
  const first = l.match[0]!;
  return first.from ? `${alias}.${ident(first.from)} IS NOT NULL` : `(${lookupPresent(p, first.lookup!, alias)})`;
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
  lookups: string[];
  /** Fills sluice_m (see the upsert). */
  probe: string[];
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

  const { statements: lookupSql, join: lookupJoin } = lookupStatements(p, stage, stageTypes, 'resolve-or-create');
  const lookupValue = (i: number) => `lk._l${i}`;

  const isText = (col: string) => stageTypes.get(col) === 'text';
  const main = [
    ...t.fields.map((f) => ({ column: f.column, value: fieldValue(f, 'm'), merge: f.merge, text: isText(f.from) && !f.targetType, lookup: undefined as Lookup | undefined })),
    ...lookups.map((l, i) => ({ column: l.column, value: lookupValue(i), merge: l.merge, text: false, lookup: l as Lookup | undefined })),
  ];
  const vals = main.map((a, i) => ({ ...a, v: `v${i}` }));
  const changed = vals.map((a) => columnAssignment(p, a, `x.${a.v}`, 't')?.changes).filter((c): c is string => c !== undefined);
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
  const probeSelect = `SELECT x.*, ${byKey ? 't.ctid' : 't.id'} AS tid, (${changed.join(' OR ') || 'false'}) AS changed
        FROM (SELECT m.${K} AS key, ${vals.map((a) => `${a.value} AS ${a.v}`).join(', ')} FROM ${S} m ${lookupJoin}) x
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

  return { resolveKeys, duplicates, fold: foldSql, lookups: lookupSql, probe, upsert, childInsert, childSource, childUpsert, childInsertMissing, childFlag, counts, countsSimple };
}
