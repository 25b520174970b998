/**
 * An open-loop HTTP load generator: requests are scheduled at a fixed rate whatever the
 * server does, over as many keep-alive connections as it takes (up to a cap), and each
 * latency is measured from the request's *scheduled* time. A closed-loop tool (each
 * connection waits for its answer before sending again) slows down with the server and
 * hides its queueing ("coordinated omission"); this one does not.
 *
 * Bounded: it stops scheduling after `durationMs`, waits at most `timeoutMs` for the
 * answers in flight, then closes every connection.
 */
import { HttpConnection, type RawResponse } from './http-connection.ts';
import { LatencyRecorder, type LatencySummary } from './latency.ts';

export interface LoadRequest {
  method?: string;
  /** Path and query, e.g. "/visits". */
  path: string;
  headers?: Record<string, string>;
  body?: string;
}

export interface RequestOutcome {
  seq: number;
  /** HTTP status, or 0 when the request failed without an answer. */
  status: number;
  ok: boolean;
  latencyMs: number;
  /** Error kind when status is 0 (ECONNREFUSED, ECONNRESET, timeout, closed...). */
  error?: string;
  body?: Buffer;
}

export interface Progress {
  elapsedMs: number;
  sent: number;
  succeeded: number;
  failed: number;
  inFlight: number;
  /** Successful answers in the last progress interval, per second. */
  rps: number;
}

export interface OpenLoopOptions {
  /** Base URL, http only (e.g. http://127.0.0.1:8080). */
  url: string;
  /** Requests per second. */
  rate: number;
  durationMs: number;
  /** Builds request number `seq` (0-based). */
  request: (seq: number) => LoadRequest;
  /** Most connections open at once (default 4,000); further requests queue (and count as waiting). */
  maxConnections?: number;
  /** Connections being opened at once (default 64). */
  connectConcurrency?: number;
  /** Connections opened before the clock starts (default: 50 ms worth of requests, at most maxConnections). */
  preconnect?: number;
  /** A request unanswered this long after its scheduled time fails as "timeout" (default 10 s). */
  timeoutMs?: number;
  /** Which statuses count as success (default 2xx). */
  isSuccess?: (status: number) => boolean;
  onResult?: (outcome: RequestOutcome) => void;
  /** Called about once a second while running. */
  onProgress?: (p: Progress) => void;
  /** Stops scheduling early (what was sent is still awaited). */
  signal?: AbortSignal;
}

export interface OpenLoopResult {
  rateTarget: number;
  /** Time spent scheduling (the duration, or less when aborted), ms. */
  durationMs: number;
  /** Until the last answer, ms. */
  elapsedMs: number;
  sent: number;
  succeeded: number;
  failed: number;
  /** Successful answers per second of the scheduling window. */
  achievedRps: number;
  statuses: Record<string, number>;
  errors: Record<string, number>;
  /** Latency of the successful requests, from their scheduled time. */
  latency: LatencySummary;
  maxConnections: number;
  /** Up to 5 distinct error bodies or messages, for the report. */
  sampleErrors: string[];
  /**
   * Share of the run this process's event loop was busy (0..1). Near 1, the generator
   * itself was the bottleneck and the latencies measure it, not the server.
   */
  generatorBusy: number;
}

interface Job {
  seq: number;
  scheduledAt: number;
  payload: string;
}

export async function runOpenLoop(opts: OpenLoopOptions): Promise<OpenLoopResult> {
  const target = new URL(opts.url);
  if (target.protocol !== 'http:') throw new Error(`only http:// targets are supported, got ${opts.url}`);
  const host = target.hostname.replace(/^\[|\]$/g, '');
  const port = Number(target.port || 80);
  const hostHeader = target.host;
  const basePath = target.pathname.replace(/\/$/, '');
  const maxConns = opts.maxConnections ?? 4000;
  const connectConcurrency = opts.connectConcurrency ?? 64;
  const timeoutMs = opts.timeoutMs ?? 10_000;
  const isSuccess = opts.isSuccess ?? ((s: number) => s >= 200 && s < 300);
  const total = Math.floor((opts.rate * opts.durationMs) / 1000);

  const latency = new LatencyRecorder();
  const statuses: Record<string, number> = {};
  const errors: Record<string, number> = {};
  const sampleErrors = new Set<string>();
  const idle: HttpConnection[] = [];
  const open = new Set<HttpConnection>();
  const jobs = new Map<HttpConnection, Job>();
  const queue: Job[] = [];
  let queueHead = 0;
  let sent = 0;
  let succeeded = 0;
  let failed = 0;
  let peakConns = 0;
  let scheduling = true;
  let lastProgressOk = 0;

  let start = performance.now();
  let scheduleEnd = start + opts.durationMs;
  let finish!: () => void;
  const finished = new Promise<void>((r) => (finish = r));

  const encode = (req: LoadRequest): string => {
    const body = req.body ?? '';
    let head = `${req.method ?? 'POST'} ${basePath}${req.path} HTTP/1.1\r\nhost: ${hostHeader}\r\n`;
    for (const [k, v] of Object.entries(req.headers ?? {})) head += `${k}: ${v}\r\n`;
    return `${head}content-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`;
  };

  const complete = (job: Job, err: Error | null, res?: RawResponse) => {
    const latencyMs = performance.now() - job.scheduledAt;
    let outcome: RequestOutcome;
    if (err || !res) {
      const kind = errorKind(err);
      errors[kind] = (errors[kind] ?? 0) + 1;
      if (sampleErrors.size < 5) sampleErrors.add(`${kind}: ${err?.message ?? 'no response'}`);
      failed++;
      outcome = { seq: job.seq, status: 0, ok: false, latencyMs, error: kind };
    } else {
      statuses[res.status] = (statuses[res.status] ?? 0) + 1;
      const ok = isSuccess(res.status);
      if (ok) {
        succeeded++;
        latency.record(latencyMs);
      } else {
        failed++;
        if (sampleErrors.size < 5) sampleErrors.add(`${res.status}: ${res.body.toString('utf8', 0, 300)}`);
      }
      outcome = { seq: job.seq, status: res.status, ok, latencyMs, body: res.body };
    }
    opts.onResult?.(outcome);
  };

  const run = (conn: HttpConnection, job: Job) => {
    jobs.set(conn, job);
    conn.send(job.payload, (err, res) => {
      jobs.delete(conn);
      complete(job, err, res);
      if (!conn.dead) {
        const next = nextQueued();
        if (next) run(conn, next);
        else idle.push(conn);
      }
      checkDone();
    });
  };

  const nextQueued = (): Job | undefined => {
    if (queueHead >= queue.length) return undefined;
    const job = queue[queueHead++]!;
    if (queueHead > 4096 && queueHead * 2 > queue.length) {
      queue.splice(0, queueHead);
      queueHead = 0;
    }
    return job;
  };

  // New connections are opened only for queued requests, at most `connectConcurrency` at a
  // time: a burst of thousands of SYNs overflows the server's accept queue (backlog 511 in
  // Node) and the kernel's SYN retransmission then adds whole seconds to the latency.
  let connecting = 0;
  const openMore = () => {
    while (queueHead + connecting < queue.length && open.size < maxConns && connecting < connectConcurrency) {
      newConnection();
    }
  };

  // Resolved on every connect or failure, for preconnect().
  let wake: (() => void) | undefined;
  const wakeUp = () => {
    const w = wake;
    wake = undefined;
    w?.();
  };

  const onConnect = (conn: HttpConnection) => {
    connecting--;
    wakeUp();
    const job = nextQueued();
    if (job) run(conn, job);
    else idle.push(conn);
    openMore();
  };

  const onDead = (conn: HttpConnection, err: Error | undefined) => {
    open.delete(conn);
    if (!conn.connected) {
      connecting--;
      wakeUp();
      // A refused connection fails the request that asked for it, at once: a server that
      // is down must not make the generator spin on reconnects until every timeout.
      const job = nextQueued();
      if (job) complete(job, err ?? new Error('connection closed'));
    } else {
      const i = idle.indexOf(conn);
      if (i >= 0) idle.splice(i, 1);
    }
    openMore();
    checkDone();
  };

  const newConnection = (): HttpConnection => {
    const conn = new HttpConnection(host, port, onConnect, onDead);
    connecting++;
    open.add(conn);
    if (open.size > peakConns) peakConns = open.size;
    return conn;
  };

  const dispatch = (job: Job) => {
    sent++;
    let conn = idle.pop();
    while (conn && conn.dead) conn = idle.pop();
    if (conn) {
      run(conn, job);
    } else {
      queue.push(job);
      openMore();
    }
  };

  const inFlight = () => jobs.size + (queue.length - queueHead);

  const checkDone = () => {
    if (!scheduling && inFlight() === 0) finish();
  };

  // The scheduler: every millisecond or so, send everything whose time has come.
  const interval = 1000 / opts.rate;
  let seq = 0;
  let schedTimer: NodeJS.Timeout | undefined;
  const stopScheduling = () => {
    if (!scheduling) return;
    scheduling = false;
    scheduleEnd = Math.min(scheduleEnd, performance.now());
    if (schedTimer) clearTimeout(schedTimer);
    checkDone();
  };
  const tick = () => {
    const now = performance.now();
    const due = Math.min(total, Math.floor((now - start) / interval) + 1);
    while (seq < due) {
      dispatch({ seq, scheduledAt: start + seq * interval, payload: encode(opts.request(seq)) });
      seq++;
    }
    if (seq >= total || opts.signal?.aborted) stopScheduling();
    else schedTimer = setTimeout(tick, 1);
  };
  opts.signal?.addEventListener('abort', stopScheduling, { once: true });

  // Timeouts are swept, not timed per request: one timer instead of thousands.
  const sweep = setInterval(() => {
    const now = performance.now();
    for (const [conn, job] of jobs) {
      if (now - job.scheduledAt > timeoutMs) conn.destroy(Object.assign(new Error('no answer in time'), { code: 'timeout' }));
    }
    while (queueHead < queue.length && now - queue[queueHead]!.scheduledAt > timeoutMs) {
      complete(nextQueued()!, Object.assign(new Error('no connection free in time'), { code: 'timeout' }));
    }
    checkDone();
  }, 100);

  const progress = setInterval(() => {
    opts.onProgress?.({
      elapsedMs: performance.now() - start,
      sent,
      succeeded,
      failed,
      inFlight: inFlight(),
      rps: succeeded - lastProgressOk,
    });
    lastProgressOk = succeeded;
  }, 1000);

  // Connections for the first 50 ms of requests exist before the clock starts.
  const pre = Math.min(maxConns, Math.max(0, Math.floor(opts.preconnect ?? Math.ceil(opts.rate / 20))));
  for (let i = 0; i < pre; i++) {
    while (connecting >= connectConcurrency) await new Promise<void>((r) => (wake = r));
    newConnection();
  }
  while (connecting > 0) await new Promise<void>((r) => (wake = r));
  start = performance.now();
  scheduleEnd = start + opts.durationMs;
  const elu = performance.eventLoopUtilization();

  if (total === 0) stopScheduling();
  else tick();
  await finished;
  clearInterval(sweep);
  clearInterval(progress);
  for (const conn of open) conn.destroy();

  // The window requests were scheduled over: the full duration unless aborted early.
  const durationMs = opts.signal?.aborted ? Math.max(1, scheduleEnd - start) : opts.durationMs;
  return {
    rateTarget: opts.rate,
    durationMs: Math.round(durationMs),
    elapsedMs: Math.round(performance.now() - start),
    sent,
    succeeded,
    failed,
    achievedRps: Math.round((succeeded * 1000) / durationMs),
    statuses,
    errors,
    latency: latency.summary(),
    maxConnections: peakConns,
    sampleErrors: [...sampleErrors],
    generatorBusy: Math.round(performance.eventLoopUtilization(elu).utilization * 100) / 100,
  };
}

function errorKind(err: Error | null): string {
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code === 'string') return code;
  return err?.message === 'connection closed' ? 'closed' : 'error';
}
