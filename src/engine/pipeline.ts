/**
 * A pipeline is a declaration on the shared engine: where rows come from (format), which
 * source columns it reads (with parsers/validators), and how the rows merge into the target
 * tables (key + a merge policy per field). The engine (src/engine/import-runner.ts) turns
 * any declaration into: parse -> validate -> COPY into staging -> set-based merge SQL.
 *
 * Terminology (mirrored in docs/glossary.md):
 * - import:   one file run through one pipeline; recorded in `imports`, id is a UUID.
 * - part:     a slice of an import's rows, staged independently (the CLI stages one part;
 *             the intake service stages many in parallel on workers).
 * - row:      one data record of the file, identified by its physical line number.
 * - reject:   a row (or a single field of a row) Sluice refused, with line, reason and raw
 *             text; stored in `import_rejects`, never silently dropped.
 * - staging:  an unlogged table per import holding the parsed, normalized rows.
 * - merge:    the set-based SQL that folds staging into the target tables in one
 *             transaction, reporting inserted / updated / unchanged.
 * - pipeline: this declaration; `leads` and `purchases` are built in.
 * - chunk:    a slice of a file (or an intake part) merged in the import's transaction while
 *             the rest is parsed or staged; it holds only keys met for the first time.
 * - prepare / apply: a chunk's merge in two halves: prepare reads (probes, lookups, new
 *             ids, what changes) on a second connection, apply writes in the transaction.
 * - worker:   a process taking parts from the Postgres-backed queue (pg-boss).
 */

/** How an incoming value combines with the stored one (and with earlier rows of the file). */
export type MergePolicy =
  /** the newest non-blank value replaces the stored one; blank leaves it unchanged */
  | 'overwrite'
  /**
   * set only while the stored value is blank (NULL, or text of white space only); in a file,
   * the first non-blank value wins
   */
  | 'fill-if-blank'
  /**
   * a cell is a comma-separated list of members (each trimmed); they are added to the
   * stored set (array), keeping first-seen order, no duplicates
   */
  | 'add-to-set'
  /**
   * set when the record is created, by the file's first row of the key (blank included:
   * then NULL), never changed afterwards
   */
  | 'keep-first';

/** Postgres type of a staging column. */
export type StageType = 'text' | 'boolean' | 'numeric' | 'date' | 'bigint';

/** The outcome of parsing one cell: a value, null (blank), or a problem. */
export type CellResult = string | boolean | null | { error: string };

export interface SourceColumn {
  /** Staging column name (a plain identifier). */
  name: string;
  /** Header names (matched case- and accent-insensitively, trimmed) or patterns selecting it. */
  headers: Array<string | RegExp>;
  type: StageType;
  /** Normalizes a trimmed, non-blank cell. Default: the text itself. */
  parse?: (value: string) => CellResult;
  /** An invalid value rejects the whole row (default) or only this field (row still imports). */
  onInvalid?: 'row' | 'field';
  /** `key`: derived from the key's raw cell (e.g. document_type from the CPF column). */
  input?: 'key';
  /**
   * The file must have a column for it (a fixed format such as the purchases export): a
   * file without one fails before anything is written, instead of importing NULLs.
   */
  required?: boolean;
}

export interface KeyColumn extends SourceColumn {
  /** Message of the failed import when no header matches (e.g. `invalid file: email information missing`). */
  missingMessage: string;
  /** Several matching columns: the first value that matches an existing record wins. */
  multiple: 'first-existing';
  /** Reason for a row whose key is blank. */
  blankReason: string;
}

export interface TargetField {
  /** Column of the target table. */
  column: string;
  /** Staging column it comes from. */
  from: string;
  merge: MergePolicy;
  /** SQL type to cast to, e.g. `text[]` for add-to-set columns (staged as comma-joined text). */
  targetType?: string;
}

/** A reference resolved in bulk: found or created in `table` by its natural key. */
export interface Lookup {
  /** Column of the target table holding the reference id. */
  column: string;
  merge: MergePolicy;
  table: string;
  /** Natural key of the referenced table: each column takes a staging value or another lookup's id. */
  match: Array<{ column: string; from?: string; lookup?: string }>;
  /** Extra columns set when the referenced row is created. */
  create?: Array<{ column: string; from: string }>;
}

/** A 1:1 child table keyed by the parent's id (e.g. lead_infos.lead_id). */
export interface ChildTable {
  table: string;
  foreignKey: string;
  fields: TargetField[];
}

export interface Target {
  table: string;
  /** Target column holding the key (unique). */
  key: string;
  /**
   * What names a record inside the engine. `id` (the default): a bigint identity column
   * `id`, its primary key; new records get ids drawn from its sequence, a child table
   * refers to them. `key`: the key alone (the table's primary key, no `id` column): one
   * index less to maintain per inserted record; no child table.
   */
  identity?: 'id' | 'key';
  fields: TargetField[];
  lookups?: Lookup[];
  child?: ChildTable;
}

/** The target's records are named by their key (no `id` column); checks the declaration. */
export function keyIdentity(t: Target): boolean {
  if (t.identity !== 'key') return false;
  if (t.child) throw new Error(`target ${t.table}: a child table needs identity 'id' (it refers to the record's id)`);
  return true;
}

export type SourceFormat = { kind: 'csv' } | { kind: 'fixed-width' };

export interface Pipeline {
  name: string;
  description: string;
  format: SourceFormat;
  /** Reject rows whose field count differs from the header's (default: short rows padded). */
  strictFieldCount?: boolean;
  key: KeyColumn;
  columns: SourceColumn[];
  target: Target;
  /**
   * A few lines of a typical file, header first (CSV: comma-separated), run through the
   * row path when a worker starts so that its first parts do not run in cold code
   * (src/intake/warm-up.ts). Optional.
   */
  sample?: string;
}
