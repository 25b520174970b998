/**
 * The SQL of a prepared chunk (prepared-chunk.ts): the merge of one chunk of first-met keys
 * split in two, so that two Postgres backends share the work.
 *
 * prepare (a second connection, its own short transactions, reads only the target tables):
 *   the chunk's rows with their merged values, the id of their record (or a new id drawn
 *   from the target's sequence; a target named by its key has neither, only the record's
 *   tuple id), their lookups' ids where the referenced rows exist, and
 *   whether the merge changes the record and its child row, into an unlogged table.
 * apply (the import's transaction): creates the lookups' missing rows that records take (if
 *   any; prepare knows which rows need one, lookupNeeds), then writes: records and child
 *   rows updated at the tuple ids prepare found, new records inserted with their drawn ids,
 *   their child rows inserted. Nothing is probed there.
 *
 * Why prepare may read outside the import's transaction: the import holds the target's merge
 * lock (merge.ts) before the first prepare, so no other Sluice merge commits meanwhile, and
 * a chunk's keys are met for the first time, so no earlier chunk of this import (written but
 * not committed, invisible to prepare) touched them. A writer outside Sluice changing the
 * same records meanwhile is caught by apply's row counts, which must equal prepare's.
 */
import { keyIdentity, type Lookup, type Pipeline, type StageType } from '../engine/pipeline.ts';
import { assignment } from './assignment.ts';
import { ident } from './ident.ts';
import { lookupChange, lookupNeeds, lookupPresent, lookupStatements } from './lookup-sql.ts';
import { columnAssignment, fieldValue } from './merge-sql.ts';

export interface ChunkSql {
  /** prepare: one transaction (lookups resolved read-only, then the prepared table). */
  prepare: string[];
  /** prepare: the chunk's counts and what apply must find (one row). */
  counts: string;
  /**
   * References created by apply, known to prepare by id (session table of the preparing
   * connection, dropped with it): `create` it, `insert` rows as JSON ($1), `fill` (in prepare),
   * `created` (apply, after `lookups`: the references it resolved, to insert).
   */
  known: { create: string; insert: string; fill: string; created: string } | undefined;
  /** apply, only when some row references a row prepare did not find: creates and resolves. */
  lookups: string[];
  /** apply: the ids of the references created above, into the prepared table. */
  fillLookups: string | undefined;
  /** apply, in order; each statement's row count is checked against `counts`. */
  update: string;
  /**
   * Reads no target table: the new records, from the prepared table or (a narrow chunk)
   * straight from the staging table.
   */
  insert: string;
  /**
   * The prepared table holds only the rows whose record exists (see chunkSql): apply
   * inserts the others from the staging table, which must then be readable by the writing
   * connection until the merge ends.
   */
  narrow: boolean;
  childInsert: string | undefined;
  childUpdate: string | undefined;
}

/**
 * Statements that merge staging table `source` (every key distinct, none met before in this
 * import) through the prepared table `prepared`. `sequence`: the target id's sequence (null
 * for a target whose records are named by their key: no id to draw). `exclude`: staging
 * rows left out (SQL condition on alias `m`, e.g. keys met before). `shared`: `source` is a
 * table the writing connection can read too (an intake part's), kept until the merge ends.
 *
 * A narrow chunk: when `source` is shared and a new record needs nothing prepared (named by
 * its key: no id to draw; no lookups; no child table), the prepared table holds only the
 * rows whose record exists, and apply inserts the others straight from `source`. A part of
 * new purchases is then probed and counted, not copied a second time.
 */
export function chunkSql(
  p: Pipeline,
  stageTypes: Map<string, StageType>,
  source: string,
  prepared: string,
  sequence: string | null,
  exclude?: string,
  shared = false,
): ChunkSql {
  const t = p.target;
  const S = ident(source);
  const P = ident(prepared);
  const T = ident(t.table);
  const K = ident(p.key.name);
  const TK = ident(t.key);
  const lookups = t.lookups ?? [];
  const isText = (col: string) => stageTypes.get(col) === 'text';
  // A target named by its key has no id: tid is then the record's tuple id, there is no nid.
  const byKey = keyIdentity(t);
  if (!byKey && !sequence) throw new Error(`target ${t.table}: no id sequence to draw new ids from`);
  const found = byKey ? 't.ctid IS NOT NULL' : 't.id IS NOT NULL';
  const narrow = shared && byKey && lookups.length === 0 && !t.child;
  const where = exclude ? `WHERE NOT (${exclude})` : '';
  const nid = byKey ? 'NULL::bigint' : `CASE WHEN t.id IS NULL THEN nextval('${sequence!.replace(/'/g, "''")}'::regclass) END`;

  // Columns of the prepared table: key, v<i> (fields), l<i> (lookup ids), the lookups'
  // source values, c<i> (child fields), then tid, nid and the flags.
  const fields = t.fields.map((f, i) => ({ f, v: `v${i}`, text: isText(f.from) && !f.targetType }));
  const children = (t.child?.fields ?? []).map((f, i) => ({ f, v: `c${i}`, text: isText(f.from) && !f.targetType }));
  const resolve = lookupStatements(p, source, stageTypes, 'resolve', exclude ? `NOT (${exclude})` : '');

  // References apply created for earlier chunks (not committed, so not found above) are
  // known by their ids: apply reports them, the preparer keeps them in sluice_lk_known.
  const known = lookups.length
    ? {
        create: `CREATE TEMP TABLE IF NOT EXISTS sluice_lk_known (${resolve.sources.map((c) => `${ident(c)} text`).join(', ')}, ${lookups.map((_, i) => `_l${i} bigint`).join(', ')})`,
        insert: 'INSERT INTO sluice_lk_known SELECT * FROM json_populate_recordset(NULL::sluice_lk_known, $1)',
        fill: `UPDATE sluice_lk lk SET ${lookups.map((_, i) => `_l${i} = coalesce(lk._l${i}, k._l${i})`).join(', ')} FROM sluice_lk_known k
          WHERE ${resolve.sources.map((c) => `coalesce(lk.${ident(c)}, '') = coalesce(k.${ident(c)}, '')`).join(' AND ')}`,
        created: 'SELECT * FROM sluice_lk',
      }
    : undefined;

  // A lookup prepare did not find (present, no id) refers to a row apply creates, or
  // created for an earlier chunk: a new id, distinct from any id a record of this chunk
  // holds (their stored references are committed rows).
  const changes = [
    ...fields.flatMap(({ f, v, text }) => assignment(f.merge, `x.${v}`, `t.${ident(f.column)}`, text)?.changes ?? []),
    ...lookups.map((_, i) => lookupChange(p, i, `x.l${i}`, `x.p${i}`, 't')),
  ];
  const anyChildOf = (alias: string) => children.map(({ v }) => `${alias}${v} IS NOT NULL`).join(' OR ') || 'false';
  const anyChild = anyChildOf('x.');
  const childChanges = children.flatMap(({ f, v, text }) => assignment(f.merge, `x.${v}`, `c.${ident(f.column)}`, text)?.changes ?? []);

  const inner = [
    `m.${K} AS key`,
    ...fields.map(({ f, v }) => `${fieldValue(f, 'm')} AS ${v}`),
    ...lookups.map((l, i) => `lk._l${i} AS l${i}, ${lookupPresent(p, l.column, 'm')} AS p${i}`),
    ...resolve.sources.map((c) => `m.${ident(c)}`),
    ...children.map(({ f, v }) => `${fieldValue(f, 'm')} AS ${v}`),
  ];
  // Only a reference some record takes is created by apply (n<i>, lookupNeeds); the others
  // are left unresolved, and no record writes them.
  const needs = lookupNeeds(p, (i) => `x.p${i}`, found, 't');
  const unresolved = needs.map((n, i) => `(x.l${i} IS NULL AND ${n})`).join(' OR ') || 'false';
  const child = t.child;
  const C = child ? ident(child.table) : '';
  const FK = child ? ident(child.foreignKey) : '';
  // Only the columns compared (wide rows cost their deforming and projection).
  const targetCols = ['ctid', ...(byKey ? [] : ['id']), ...new Set([...t.fields.map((f) => f.column), ...lookups.map((l) => l.column)])].map((c) => (c === 'ctid' ? c : ident(c)));
  const childCols = child ? ['ctid', ident(child.foreignKey), ...new Set(child.fields.map((f) => ident(f.column)))] : [];
  const select = `SELECT x.*, ${byKey ? 't.ctid' : 't.id'} AS tid, t.ctid AS tctid, ${child ? 'c.ctid' : 'NULL::tid'} AS cctid, ${nid} AS nid,
        coalesce(${unresolved}, false) AS unresolved,${needs.map((n, i) => ` ${n} AS n${i},`).join('')}
        ${found} AND (${changes.join(' OR ') || 'false'}) AS changed,
        ${child ? 'c.' + FK + ' IS NOT NULL' : 'false'} AS cexists,
        ${child ? `t.id IS NOT NULL AND CASE WHEN c.${FK} IS NULL THEN (${anyChild}) ELSE (${childChanges.join(' OR ') || 'false'}) END` : 'false'} AS cchanged
      FROM (SELECT ${inner.join(', ')} FROM ${S} m ${resolve.join} ${where}) x
      ${narrow ? '' : 'LEFT '}JOIN LATERAL (SELECT ${targetCols.join(', ')} FROM ${T} t WHERE t.${TK} = x.key LIMIT 1) t ON true
      ${child ? `LEFT JOIN LATERAL (SELECT ${childCols.join(', ')} FROM ${C} c WHERE c.${FK} = t.id LIMIT 1) c ON true` : ''}`;
  // The target and its child are reached by index probes only, whatever their statistics
  // say (see merge-sql.ts); the few distinct lookup values are hashed.
  const prepare = [
    'BEGIN',
    'SET LOCAL enable_seqscan = off',
    'SET LOCAL enable_mergejoin = off',
    // Every record's id is probed once: a cache of the child probes would only miss.
    'SET LOCAL enable_memoize = off',
    ...resolve.statements,
    ...(known ? [known.fill] : []),
    // A merge started over (an intake merge whose part was lost) prepares its parts again.
    `DROP TABLE IF EXISTS ${P}`,
    // Read once by the merge, then dropped: autovacuum has nothing to learn from it.
    `CREATE UNLOGGED TABLE ${P} WITH (autovacuum_enabled = false) AS ${select}`,
    'COMMIT',
  ];
  const counts = narrow
    ? `SELECT s.rows - f.found AS inserted, f.changed AS updated, s.rows, f.changed, 0 AS child_inserts, 0 AS child_updates, 0 AS unresolved
        FROM (SELECT count(*)::int AS rows FROM ${S} m ${where}) s,
             (SELECT count(*)::int AS found, count(*) FILTER (WHERE changed)::int AS changed FROM ${P}) f`
    : `SELECT count(*) FILTER (WHERE tid IS NULL)::int AS inserted,
      count(*) FILTER (WHERE tid IS NOT NULL AND (changed OR cchanged))::int AS updated,
      count(*)::int AS rows,
      count(*) FILTER (WHERE changed)::int AS changed,
      count(*) FILTER (WHERE NOT cexists AND (${anyChildOf('')}))::int AS child_inserts,
      count(*) FILTER (WHERE cexists AND cchanged)::int AS child_updates,
      count(*) FILTER (WHERE unresolved)::int AS unresolved
    FROM ${P}`;

  // apply: references prepare did not find that records take are created (or found: created
  // for an earlier chunk) as in any merge, and their ids written into the prepared table.
  const create = lookupStatements(p, prepared, stageTypes, 'resolve-or-create', 'm.unresolved');
  const fillLookups = lookups.length
    ? `UPDATE ${P} m SET ${lookups.map((_, i) => `l${i} = coalesce(m.l${i}, lk._l${i})`).join(', ')} FROM sluice_lk lk WHERE m.unresolved AND ${create.on}`
    : undefined;

  const main = [
    ...fields.map(({ f, v, text }) => ({ column: f.column, v, merge: f.merge, text, lookup: undefined as Lookup | undefined })),
    ...lookups.map((l, i) => ({ column: l.column, v: `l${i}`, merge: l.merge, text: false, lookup: l as Lookup | undefined })),
  ];
  const sets = main.flatMap((a) => {
    const r = columnAssignment(p, a, `m.${a.v}`, 't');
    return r ? [`${ident(a.column)} = ${r.set}`] : [];
  });
  // The records are reached where prepare found them, by their tuple ids (ctid): no index
  // is searched again. apply runs these with index scans, sequential scans, hash and merge
  // joins off (merge.ts), so the one plan left is the prepared table read in order with a
  // TID fetch per row: whatever the target's statistics say (see merge-sql.ts), nothing
  // more of it is read. The tuple ids hold: the import locks the tables before the first
  // prepare (no VACUUM FULL, CLUSTER...), and a record updated by another writer since is
  // no longer at its tuple id (its old version fails t.id = m.tid or is invisible), so the
  // update's row count falls short and the import fails. (A record named by its key: the
  // key must still match at that tuple id.)
  const update = `UPDATE ${T} t SET ${sets.length ? `${sets.join(', ')}, ` : ''}updated_at = now() FROM ${P} m
    WHERE t.ctid = m.tctid AND ${byKey ? `t.${TK} = m.key` : 't.id = m.tid'} AND m.changed`;
  // Explicit ids: OVERRIDING SYSTEM VALUE lets them into a GENERATED ALWAYS identity too.
  const cols = [TK, ...main.map((a) => ident(a.column))].join(', ');
  const values = `key, ${main.map((a) => a.v).join(', ')} FROM ${P} WHERE tid IS NULL`;
  // Narrow: the staging rows whose key prepare did not find (a hash of the few found ones).
  const insert = narrow
    ? `INSERT INTO ${T} (${cols}) SELECT x.key, ${main.map((a) => `x.${a.v}`).join(', ')}
        FROM (SELECT ${inner.join(', ')} FROM ${S} m ${where}) x WHERE NOT EXISTS (SELECT 1 FROM ${P} f WHERE f.key = x.key)`
    : byKey
      ? `INSERT INTO ${T} (${cols}) SELECT ${values}`
      : `INSERT INTO ${T} (id, ${cols}) OVERRIDING SYSTEM VALUE SELECT nid, ${values}`;
  let childInsert: string | undefined;
  let childUpdate: string | undefined;
  if (child) {
    childInsert = `INSERT INTO ${C} (${FK}, ${children.map(({ f }) => ident(f.column)).join(', ')})
      SELECT coalesce(tid, nid), ${children.map(({ v }) => v).join(', ')} FROM ${P} WHERE NOT cexists AND (${anyChildOf('')})`;
    const childSets = children.flatMap(({ f, v, text }) => {
      const r = assignment(f.merge, `m.${v}`, `c.${ident(f.column)}`, text);
      return r ? [`${ident(f.column)} = ${r.set}`] : [];
    });
    childUpdate = `UPDATE ${C} c SET ${childSets.length ? `${childSets.join(', ')}, ` : ''}updated_at = now()
      FROM ${P} m WHERE c.ctid = m.cctid AND c.${FK} = m.tid AND m.cexists AND m.cchanged`;
  }
  return { prepare, counts, known, lookups: create.statements, fillLookups, update, insert, narrow, childInsert, childUpdate };
}
