/**
 * Lookups (a lead's state, its city matched by name and state): references to other tables
 * resolved, and created when missing, in bulk by their natural key during the merge
 * (merge-sql.ts, chunk-sql.ts). A missing reference is created only when a merged record
 * takes it (lookupNeeds).
 */
import type { Lookup, Pipeline, StageType } from '../engine/pipeline.ts';
import { assignment } from './assignment.ts';
import { ident } from './ident.ts';

/**
 * The lookups that depend on each other, in groups: each lookup that depends on another, with
 * everything it depends on (a city with its state), the most dependent first.
 */
export function lookupGroups(p: Pipeline): Lookup[][] {
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

/**
 * Lookups work on the few distinct source values of `source` (in `sluice_lk`), not on every
 * row: with `resolve`, only find what exists (a read-only pass, run before the probe); with
 * `resolve-or-create`, run on the probed rows (sluice_m, a prepared table: they hold the
 * lookups' source values and `n<i>`, lookupNeeds), create what is missing where some row
 * needs it, then resolve each distinct combination to its ids. A reference is created only
 * for a record that takes it: created before the probe knew that, a lead with a state got
 * the city and state of a row it did not take (`unchanged`, and two rows no lead held), and
 * which orphans were left depended on how the file was cut. Chained lookups (cities on
 * state_id) use the ids resolved before them. Staged text is never '' (blank is NULL), so
 * coalesce(x, '') is a null-safe key that keeps the row join (`join`, rows aliased `m`;
 * `on`, its condition) hashable. `where` (on alias `m`) limits the source rows.
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
  // _n<i>: some row of the combination needs lookup i's reference (resolve-or-create only).
  statements.push(
    `CREATE TEMP TABLE IF NOT EXISTS sluice_lk (${lkSources.map((c) => `${ident(c)} text`).join(', ')}, ${lookups.map((_, i) => `_l${i} bigint`).join(', ')}, ${lookups.map((_, i) => `_n${i} boolean`).join(', ')}) ON COMMIT DROP`,
  );
  statements.push('TRUNCATE sluice_lk');
  const filter = where ? `WHERE ${where}` : '';
  statements.push(
    mode === 'resolve'
      ? `INSERT INTO sluice_lk SELECT DISTINCT ${lkSources.map(ident).join(', ')}, ${idCols}, ${lookups.map(() => 'NULL::boolean').join(', ')} FROM ${ident(source)} m ${filter}`
      : `INSERT INTO sluice_lk SELECT ${lkSources.map(ident).join(', ')}, ${idCols}, ${lookups.map((_, i) => `bool_or(m.n${i})`).join(', ')}
           FROM ${ident(source)} m ${filter} GROUP BY ${lkSources.map(ident).join(', ')}`,
  );
  const resolved = new Map<string, number>();
  lookups.forEach((l, i) => {
    const L = ident(l.table);
    const src = (m: { from?: string; lookup?: string }) => (m.from ? `lk.${ident(m.from)}` : `lk._l${resolved.get(m.lookup!)}`);
    if (mode === 'resolve-or-create') {
      const insertCols = [...l.match.map((m) => ident(m.column)), ...(l.create ?? []).map((c) => ident(c.column))];
      const insertVals = [...l.match.map(src), ...(l.create ?? []).map((c) => `lk.${ident(c.from)}`)];
      statements.push(`INSERT INTO ${L} (${insertCols.join(', ')})
        SELECT DISTINCT ${insertVals.join(', ')} FROM sluice_lk lk WHERE lk._n${i} AND ${src(l.match[0]!)} IS NOT NULL ON CONFLICT DO NOTHING`);
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

/**
 * "The existing record (alias `alias`) takes lookup `l`'s reference", whichever it is: what
 * the merge policy writes for any present value (lookupAssignment with an id of 0). A
 * fill-if-blank place only when the record has none of it, overwrite always, keep-first
 * (and add-to-set, meaningless for an id) never.
 */
function takenByRecord(p: Pipeline, l: Lookup, alias: string): string {
  if (l.merge === 'fill-if-blank') return lookupAssignment(p, l, '0', alias)?.changes ?? 'false';
  return l.merge === 'overwrite' ? 'true' : 'false';
}

/**
 * Per lookup, "the row needs its reference to exist": the merge writes it into the record (a
 * new one, `found` false; an existing one, on alias `alias`, that takes it: takenByRecord),
 * or a reference the row needs is matched on it (a city's state). Only these are created
 * (lookupStatements); `present(i)`: the row gives lookup i a value (lookupPresent).
 */
export function lookupNeeds(p: Pipeline, present: (i: number) => string, found: string, alias: string): string[] {
  const lookups = p.target.lookups ?? [];
  const needs = new Map<number, string>();
  const need = (i: number): string => {
    const known = needs.get(i);
    if (known) return known;
    const l = lookups[i]!;
    const dependents = lookups.flatMap((d, j) => (d.match.some((m) => m.lookup === l.column) ? [need(j)] : []));
    const own = `NOT (${found}) OR ${takenByRecord(p, l, alias)}`;
    const n = `(${present(i)} AND (${[own, ...dependents].join(' OR ')}))`;
    needs.set(i, n);
    return n;
  };
  return lookups.map((_, i) => need(i));
}

/**
 * "The merge changes lookup i's column" of the record on alias `alias`, the row giving
 * `incoming` (its reference's id, NULL while not found) and `present` (lookupPresent). A
 * reference present but not found is created for the record if it takes it (lookupNeeds):
 * a new id, which changes what any present value would (takenByRecord).
 */
export function lookupChange(p: Pipeline, i: number, incoming: string, present: string, alias: string): string {
  const l = (p.target.lookups ?? [])[i]!;
  const found = lookupAssignment(p, l, incoming, alias)?.changes ?? 'false';
  return `(CASE WHEN ${incoming} IS NULL AND ${present} THEN ${takenByRecord(p, l, alias)} ELSE ${found} END)`;
}
