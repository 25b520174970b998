/**
 * Credentials written into a URL (`https://user:secret@host/feed.xml`), as users give them
 * for a provider feed or a CRM source. fetch refuses such a URL outright ("Request cannot be
 * constructed from a URL that includes credentials", with the URL, password and all, in the
 * message), so they are sent as HTTP Basic authorization instead; and wherever the URL is
 * shown (messages, logs, stored errors), its password is masked (`withoutPassword`).
 */

/** The URL without its user and password, and their Basic `authorization` header (none without credentials). */
export function basicAuth(url: string): { url: string; headers: Record<string, string> } {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    return { url, headers: {} };
  }
  if (!u.username && !u.password) return { url, headers: {} };
  const user = decoded(u.username);
  const password = decoded(u.password);
  u.username = '';
  u.password = '';
  return { url: u.toString(), headers: { authorization: `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}` } };
}

/** Percent-decoded text; as written when it is not valid percent-encoding (`%zz`). */
function decoded(text: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    return text;
  }
}

/**
 * `url` with its password replaced by `***` (the user kept, to say which account); a user
 * without a password is a token (`https://TOKEN@host`), masked whole. Unparseable text is
 * returned masked whole.
 */
export function withoutPassword(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    else if (u.username) u.username = '***';
    return u.toString();
  } catch {
    return '<unparseable url>';
  }
}

/**
 * `text` with the credentials of every URL written in it masked (an error message that
 * quotes a URL): `user:***@`, or `***@` for a user alone or with an empty password (a
 * token). The credentials run to
 * the last `@` before the host, so a password holding a raw `@` is masked whole.
 */
export function maskUrlPasswords(text: string): string {
  return text.replace(/\b([a-z][a-z0-9+.-]*:\/\/)([^\s/?#]*)@/gi, (_, scheme: string, userinfo: string) => {
    const colon = userinfo.indexOf(':');
    const token = colon < 0 || colon === userinfo.length - 1; // a user alone, or with an empty password
    return `${scheme}${token ? '***' : `${userinfo.slice(0, colon)}:***`}@`;
  });
}
