/** Normalizers of the lead pipeline's contact fields (rules of the original system). */

/** Twitter handle without the leading `@`. */
export function twitterHandle(v: string): string | null {
  const h = v.replace(/^@+/, '').trim();
  return h === '' ? null : h;
}

/** `https://facebook.com/<v>` unless `v` is already a facebook URL. */
export function facebookUrl(v: string): string {
  return /^(https?:\/\/)?([\w-]+\.)?facebook\.com\//i.test(v) ? v : `https://facebook.com/${v}`;
}

/** `https://www.linkedin.com/in/<v>` unless `v` is already a linkedin URL. */
export function linkedinUrl(v: string): string {
  return /^(https?:\/\/)?([\w-]+\.)?linkedin\.com\//i.test(v) ? v : `https://www.linkedin.com/in/${v}`;
}

/** `http://<v>` unless it starts with `http://` or `https://`. */
export function websiteUrl(v: string): string {
  return /^https?:\/\//i.test(v) ? v : `http://${v}`;
}

/** Phone digits: `(`, `)`, spaces and `-` removed. */
const PHONE_PUNCTUATION = /[()\s-]/;

export function phoneNumber(v: string): string | null {
  if (!PHONE_PUNCTUATION.test(v)) return v;
  const p = v.replace(/[()\s-]/g, '');
  return p === '' ? null : p;
}

/** A Brazilian state acronym: exactly two letters, upper-cased. */
export function stateAcronym(v: string): string | { error: string } {
  // "<class>: <value>", as every reason: GET /imports/<id> counts rejects by the text before
  // the colon (with the value in it, each bad value was a class of its own).
  return /^[a-z]{2}$/i.test(v) ? v.toUpperCase() : { error: `state must be a 2-letter acronym: ${JSON.stringify(v)}` };
}

/**
 * Tags: separated by commas or semicolons; staged comma-separated, and split, trimmed and
 * de-duplicated (setMembers) by RowMapper as every add-to-set cell is.
 */
export function tagList(v: string): string {
  return v.includes(';') ? v.replaceAll(';', ',') : v;
}
