/**
 * Text clean-up applied to free-text fields before they are stored, so that "São  Paulo ",
 * "SAO PAULO" and "são paulo" become the same value and compare equal in SQL.
 *
 * The rule, in order (docs/purchases.md repeats it):
 *   1. upper case (`toUpperCase`, locale independent);
 *   2. accents removed: Unicode NFD decomposition, then every combining diacritical mark
 *      U+0300–U+036F is dropped (so Á -> A, Ê -> E, Ç -> C, Ñ -> N), then NFC to recompose
 *      anything else; letters without a decomposition (Ø, Æ, ß -> SS by step 1) stay as they are;
 *   3. whitespace (any JS `\s`: spaces, tabs, newlines, NBSP...) trimmed at both ends and every
 *      internal run collapsed to one space.
 * Upper-casing comes first because a few lower-case letters upper-case into a base letter plus
 * a combining mark (ǰ -> J + U+030C), which step 2 must still see.
 */

const COMBINING_MARKS = /[\u0300-\u036f]/g;
const WHITESPACE_RUN = /\s+/g;
const NEEDS_WS_WORK = /\s\s|[^\S ]|^\s|\s$/;

/** Upper case, without accents, trimmed, internal whitespace runs collapsed to one space. */
export function sanitizeText(s: string): string {
  let t = s.toUpperCase();
  // NFD/NFC are the costly steps; plain ASCII (most rows) has nothing to decompose.
  if (!isAscii(t)) t = t.normalize('NFD').replace(COMBINING_MARKS, '').normalize('NFC');
  return collapseWhitespace(t);
}

/** `s` trimmed, each run of whitespace (tabs, NBSPs...) one space; untouched when already so. */
export function collapseWhitespace(s: string): string {
  return NEEDS_WS_WORK.test(s) ? s.replace(WHITESPACE_RUN, ' ').trim() : s;
}

/**
 * `s` in Unicode NFC (composed: `a` + U+0303 -> `ã`), as most tools write text; macOS tools
 * may export NFD, which compares unequal to the same word typed elsewhere. ASCII (most
 * cells) is returned as it is: it is its own NFC, and normalize() would still scan it.
 */
export function nfc(s: string): string {
  return isAscii(s) ? s : s.normalize('NFC');
}

/** `s` with every character but the ASCII digits 0-9 removed (`123.456.789-09` -> `12345678909`). */
export function digitsOnly(s: string): string {
  const n = s.length;
  let i = 0;
  // Already digits only: return the input itself, no allocation.
  while (i < n) {
    const c = s.charCodeAt(i);
    if (c < 48 || c > 57) break;
    i++;
  }
  if (i === n) return s;
  let out = s.slice(0, i);
  let runStart = -1;
  for (; i < n; i++) {
    const c = s.charCodeAt(i);
    if (c >= 48 && c <= 57) {
      if (runStart < 0) runStart = i;
    } else if (runStart >= 0) {
      out += s.slice(runStart, i);
      runStart = -1;
    }
  }
  if (runStart >= 0) out += s.slice(runStart);
  return out;
}

function isAscii(s: string): boolean {
  for (let i = 0; i < s.length; i++) if (s.charCodeAt(i) > 127) return false;
  return true;
}
