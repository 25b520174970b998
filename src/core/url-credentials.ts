/**
 * Credentials written into a URL (`https://user:secret@host/feed.xml`), as users give them
 * for a provider feed or a CRM source. fetch refuses such a URL outright ("Request cannot be
 * constructed from a URL that includes credentials", with the URL, password and all, in the
 * message), so they are sent as HTTP Basic authorization instead (fetch drops that header on
 * a redirect to another origin); and wherever the URL is shown (messages, logs, stored
 * state and errors), its password is masked (`withoutPassword`, `maskUrlPasswords`).
 *
 * A query string often carries a secret too (`?access_token=...`, a signed URL's `sig=`):
 * wherever a URL is shown, the value of every query parameter is masked as well
 * (`?access_token=***&page=***`). One rule for every parameter, not a list of
 * secret-looking names (which would always miss one: `key`, `k`, `X-Amz-Signature`, `s`...):
 * names are kept (they say which parameters were given), a parameter without a value
 * (`?download`, `?flag=`) is kept as written. The request itself uses the real URL.
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
 * A query string (without its `?`) with the value of every parameter replaced by `***`:
 * `access_token=abc&page=2&flag` -> `access_token=***&page=***&flag`. A value runs from the
 * first `=` to the next `&`; a parameter without one, or with an empty one, is kept.
 */
function maskQuery(query: string): string {
  return query
    .split('&')
    .map((param) => {
      const eq = param.indexOf('=');
      return eq < 0 || eq === param.length - 1 ? param : `${param.slice(0, eq)}=***`;
    })
    .join('&');
}

/**
 * `url` as it may be shown, logged or stored: its password replaced by `***` (the user
 * kept, to say which account; a user without a password is a token,
 * `https://TOKEN@host`, masked whole) and the value of every query parameter masked
 * (`?access_token=***`). Unparseable text is returned masked whole.
 */
export function withoutPassword(url: string): string {
  const u = credentialsMasked(url);
  if (!u) return '<unparseable url>';
  if (u.search.length > 1) u.search = maskQuery(u.search.slice(1));
  return u.toString();
}

/**
 * `url` parsed, its password replaced by `***` (a user without a password, a token, masked
 * whole), its query as written; undefined when it is not a URL. withoutPassword masks the
 * query too; a CRM source's identity keeps it (src/pipelines/crm/config.ts).
 */
export function credentialsMasked(url: string): URL | undefined {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    return undefined;
  }
  if (u.password) u.password = '***';
  else if (u.username) u.username = '***';
  return u;
}

/**
 * A URL written in text: scheme, authority (credentials included, to the last `@` before the
 * host, so a password holding a raw `@` is masked whole), path, query. The path and query
 * end at white space, a quote, `<`, `>` or a backtick (the URL quoted in a message); the
 * query at `#` too.
 */
const URL_IN_TEXT = /\b([a-z][a-z0-9+.-]*:\/\/)([^\s/?#]*)([^\s?#"'<>`]*)(\?[^\s#"'<>`]*)?/gi;

/**
 * `text` with the credentials and query values of every URL written in it masked (an error
 * message that quotes a URL): `user:***@`, or `***@` for a user alone or with an empty
 * password (a token), and `?name=***` as `withoutPassword` does.
 */
export function maskUrlPasswords(text: string): string {
  return text.replace(URL_IN_TEXT, (_, scheme: string, authority: string, path: string, query: string | undefined) => {
    const at = authority.lastIndexOf('@');
    let shown = authority;
    if (at >= 0) {
      const userinfo = authority.slice(0, at);
      const colon = userinfo.indexOf(':');
      const token = colon < 0 || colon === userinfo.length - 1; // a user alone, or with an empty password
      shown = `${token ? '***' : `${userinfo.slice(0, colon)}:***`}${authority.slice(at)}`;
    }
    return `${scheme}${shown}${path}${query ? `?${maskQuery(query.slice(1))}` : ''}`;
  });
}
