/** Yes/no cells as spreadsheets write them, in English and Portuguese (any case). */
const TRUE = new Set(['1', 'y', 'yes', 's', 'sim', 'true']);
const FALSE = new Set(['0', 'n', 'nao', 'não', 'no', 'false']);

/** `0|n|nao|não|no` -> false, `1|y|yes|s|sim` -> true; anything else is an error. */
export function parseYesNo(value: string): boolean | { error: string } {
  const v = value.trim().toLowerCase();
  if (TRUE.has(v)) return true;
  if (FALSE.has(v)) return false;
  return { error: `not a yes/no value: ${JSON.stringify(value)}` };
}
