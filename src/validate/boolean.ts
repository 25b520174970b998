/**
 * Yes/no cells as spreadsheets write them, in English and Portuguese (any case); TRUE/FALSE
 * cells exported by a Portuguese Excel read VERDADEIRO/FALSO.
 */
import { nfc } from './sanitize.ts';

const TRUE = new Set(['1', 'y', 'yes', 's', 'sim', 'true', 'verdadeiro']);
const FALSE = new Set(['0', 'n', 'nao', 'não', 'no', 'false', 'falso']);

/**
 * `0|n|nao|não|no|false|falso` -> false, `1|y|yes|s|sim|true|verdadeiro` -> true (`não` in NFC
 * or NFD); anything else is an error.
 */
export function parseYesNo(value: string): boolean | { error: string } {
  const t = value.trim().toLowerCase();
  if (TRUE.has(t)) return true;
  if (FALSE.has(t)) return false;
  // Only on a miss, NFC: a macOS export may write `não` decomposed (`a` + U+0303).
  const v = nfc(t);
  if (v !== t && FALSE.has(v)) return false;
  return { error: `not a yes/no value: ${JSON.stringify(value)}` };
}
