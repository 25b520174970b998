/**
 * Yes/no cells as spreadsheets write them, in English and Portuguese (any case); TRUE/FALSE
 * cells exported by a Portuguese Excel read VERDADEIRO/FALSO.
 */
const TRUE = new Set(['1', 'y', 'yes', 's', 'sim', 'true', 'verdadeiro']);
const FALSE = new Set(['0', 'n', 'nao', 'não', 'no', 'false', 'falso']);

/**
 * `0|n|nao|não|no|false|falso` -> false, `1|y|yes|s|sim|true|verdadeiro` -> true; anything else
 * is an error. `value` is NFC (the row mapper composes every cell), so a decomposed `não` is
 * `não` here.
 */
export function parseYesNo(value: string): boolean | { error: string } {
  const t = value.trim().toLowerCase();
  if (TRUE.has(t)) return true;
  if (FALSE.has(t)) return false;
  return { error: `not a yes/no value: ${JSON.stringify(value)}` };
}
