/** The members of a set cell (add-to-set columns, tags). */

/**
 * An add-to-set cell's members, comma-separated, each trimmed, blanks dropped, each once in
 * first-seen order (null when none is left): what the merge takes for a set ("a, a,b" adds
 * a and b once), whatever the column's parser did, so that a key's rows give the same set
 * folded together or merged apart (another chunk or part).
 */
export function setMembers(value: string): string | null {
  if (!value.includes(',')) return value.trim() || null;
  const members = new Set<string>();
  for (const m of value.split(',')) {
    const t = m.trim();
    if (t) members.add(t);
  }
  return members.size > 0 ? [...members].join(',') : null;
}
