/**
 * A minimal HTTP/1.1 keep-alive client connection for the load generator: one request at
 * a time, responses framed by Content-Length or chunked encoding (RFC 9112 section 6).
 * node:http's client costs several times more CPU per request, and on a 2-core machine
 * the generator must not eat the server's CPU it is trying to measure.
 */
import net from 'node:net';

export interface RawResponse {
  status: number;
  body: Buffer;
}

export type ResponseCallback = (err: Error | null, res?: RawResponse) => void;

const HEADER_END = Buffer.from('\r\n\r\n');

export class HttpConnection {
  private readonly socket: net.Socket;
  private buf: Buffer | undefined;
  private pending: ResponseCallback | undefined;
  private closeAfter = false;
  /** When the request in flight was written (performance.now()), for timeouts. */
  sentAt = 0;
  connected = false;
  dead = false;

  /**
   * `onConnect` is called once the TCP connection is up; `onDead` once when the connection
   * can no longer be used (with the error, if any, and whether it had ever connected).
   */
  constructor(
    host: string,
    port: number,
    onConnect: (conn: HttpConnection) => void,
    onDead: (conn: HttpConnection, err: Error | undefined) => void,
  ) {
    this.socket = net.connect({ host, port });
    this.socket.setNoDelay(true);
    this.socket.once('connect', () => {
      this.connected = true;
      onConnect(this);
    });
    this.socket.on('data', (chunk) => this.onData(chunk));
    const die = (err?: Error) => {
      if (this.dead) return;
      this.dead = true;
      const cb = this.pending;
      this.pending = undefined;
      cb?.(err ?? new Error('connection closed'));
      onDead(this, err);
    };
    this.socket.on('error', (err) => die(err));
    this.socket.on('close', () => die());
  }

  get busy(): boolean {
    return this.pending !== undefined;
  }

  /** Writes one complete request (head and body); `done` gets the response or the error. */
  send(request: string | Buffer, done: ResponseCallback): void {
    if (this.dead) {
      done(new Error('connection closed'));
      return;
    }
    this.pending = done;
    this.sentAt = performance.now();
    this.socket.write(request);
  }

  destroy(err?: Error): void {
    this.socket.destroy(err);
  }

  private onData(chunk: Buffer): void {
    this.buf = this.buf ? Buffer.concat([this.buf, chunk]) : chunk;
    const res = this.parse();
    if (!res) return;
    const cb = this.pending;
    this.pending = undefined;
    this.buf = undefined;
    if (this.closeAfter) this.socket.end();
    cb?.(null, res);
  }

  /** A complete response from `buf`, or undefined while more bytes are needed. */
  private parse(): RawResponse | undefined {
    const buf = this.buf!;
    const headEnd = buf.indexOf(HEADER_END);
    if (headEnd < 0) return undefined;
    const head = buf.toString('latin1', 0, headEnd);
    const status = Number(head.slice(9, 12));
    let length = -1;
    let chunked = false;
    this.closeAfter = false;
    for (const line of head.split('\r\n').slice(1)) {
      const colon = line.indexOf(':');
      const name = line.slice(0, colon).trim().toLowerCase();
      const value = line.slice(colon + 1).trim().toLowerCase();
      if (name === 'content-length') length = Number(value);
      else if (name === 'transfer-encoding') chunked = value.includes('chunked');
      else if (name === 'connection') this.closeAfter = value === 'close';
    }
    const bodyStart = headEnd + 4;
    if (chunked) return this.parseChunked(status, buf, bodyStart);
    if (length < 0) length = status === 204 || status === 304 ? 0 : Number.NaN;
    if (Number.isNaN(length)) {
      this.socket.destroy(new Error('response without Content-Length or chunked encoding'));
      return undefined;
    }
    if (buf.length - bodyStart < length) return undefined;
    return { status, body: buf.subarray(bodyStart, bodyStart + length) };
  }

  private parseChunked(status: number, buf: Buffer, start: number): RawResponse | undefined {
    const parts: Buffer[] = [];
    let pos = start;
    for (;;) {
      const lineEnd = buf.indexOf('\r\n', pos, 'latin1');
      if (lineEnd < 0) return undefined;
      const size = parseInt(buf.toString('latin1', pos, lineEnd), 16);
      if (Number.isNaN(size)) {
        this.socket.destroy(new Error('bad chunk size'));
        return undefined;
      }
      if (size === 0) {
        // Last chunk, then (no trailers from our servers) the final CRLF.
        if (buf.length < lineEnd + 4) return undefined;
        return { status, body: Buffer.concat(parts) };
      }
      if (buf.length < lineEnd + 2 + size + 2) return undefined;
      parts.push(buf.subarray(lineEnd + 2, lineEnd + 2 + size));
      pos = lineEnd + 2 + size + 2;
    }
  }
}
