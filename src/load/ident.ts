/** SQL identifiers from pipeline declarations (tables, columns): checked, then quoted. */

const IDENT = /^[a-z_][a-z0-9_]*$/;

/** Quotes an identifier after checking it against the allowlist pattern. */
export function ident(name: string): string {
  if (!IDENT.test(name)) throw new Error(`invalid SQL identifier in pipeline declaration: ${JSON.stringify(name)}`);
  return `"${name}"`;
}
