/**
 * A small Server-Sent Events reader (WHATWG HTML, "Server-sent events": `data:` lines,
 * events separated by a blank line) over fetch, for the benchmark's lag probe and the
 * tests. Each event's data is handed over with the time it arrived.
 */
export interface SseSubscription {
  /** Resolves when the stream ended (closed by either side). */
  done: Promise<void>;
  close(): void;
}

export function subscribeSse(url: string, onData: (data: string, receivedAt: number) => void): SseSubscription {
  const abort = new AbortController();
  const done = (async () => {
    const res = await fetch(url, { signal: abort.signal, headers: { accept: 'text/event-stream' } });
    if (!res.ok || !res.body) throw new Error(`GET ${url}: ${res.status}`);
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = '';
    let data: string[] = [];
    for (;;) {
      const { value, done: end } = await reader.read();
      if (end) return;
      buf += value;
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl).replace(/\r$/, '');
        buf = buf.slice(nl + 1);
        if (line === '') {
          if (data.length) onData(data.join('\n'), Date.now());
          data = [];
        } else if (line.startsWith('data:')) {
          data.push(line.slice(5).replace(/^ /, ''));
        }
      }
    }
  })().catch((err: unknown) => {
    if (!abort.signal.aborted) throw err;
  });
  return { done, close: () => abort.abort() };
}
