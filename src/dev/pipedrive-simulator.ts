/**
 * A local Pipedrive (REST API v1) for tests, demos and benchmarks: persons, deals,
 * personFields, dealFields and their search, with Pipedrive's envelope
 * (`{"success":true,"data":...,"additional_data":{"pagination":...}}`), its error shape
 * (`{"success":false,"error":"...","error_info":"..."}`), 40-hex custom field keys, expanded
 * `person_id` objects on deals, a rolling-window rate limit with the `x-ratelimit-*` headers
 * and `429` + `Retry-After`. State lives in memory. Faults (429 storms, 5xx bursts, refusals
 * of matching records, 5xx after the write was applied, or applied later than the answer
 * like behind a gateway that timed out) are injected through `addFault` or
 * `POST /_sim/faults`; `GET /_sim/stats` counts requests per route.
 */
import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

export interface SimRateLimit {
  limit: number;
  windowMs: number;
}

export interface SimulatorOptions {
  /** Rolling-window limit per token; undefined = unlimited. */
  rateLimit?: SimRateLimit | undefined;
  /** When set, requests must carry it (`x-api-token` header or `api_token` query). */
  token?: string | undefined;
  /** Added to every API response, like a real network round trip. */
  latencyMs?: number | undefined;
}

export interface Fault {
  /** HTTP status to answer, or 0 to drop the connection. */
  status: number;
  /** How many matching requests get it; -1 = all of them. */
  count: number;
  method?: string | undefined;
  /** `/v1/deals` matches `/v1/deals` and `/v1/deals/...`. */
  path?: string | undefined;
  /** Only requests whose JSON body has these values. */
  match?: Record<string, unknown> | undefined;
  retryAfter?: number | undefined;
  /** Apply the request, then answer the fault status (the ambiguous failure). */
  afterCommit?: boolean | undefined;
  /**
   * Answer the fault status (0: drop the connection) at once and apply the request this
   * many ms later: a gateway's 504 or a client's timeout while the backend still works.
   */
  applyAfterMs?: number | undefined;
  error?: string | undefined;
}

export interface SimStats {
  requests: number;
  byRoute: Record<string, number>;
  rateLimited: number;
  faults: number;
  persons: number;
  deals: number;
}

interface Field {
  id: number;
  key: string;
  name: string;
  field_type: string;
  edit_flag: boolean;
  active_flag: boolean;
  add_time: string;
}

type Rec = Record<string, unknown> & { id: number };

class ApiError extends Error {
  readonly status: number;
  constructor(status: number, message: string) {
    super(message);
    this.status = status;
  }
}

const ERROR_INFO = 'Please check developers.pipedrive.com for more information about Pipedrive API.';

function now(): string {
  return new Date().toISOString().slice(0, 19).replace('T', ' ');
}

function systemFields(names: Array<[string, string, string]>): Field[] {
  return names.map(([key, name, type], i) => ({
    id: i + 1, key, name, field_type: type, edit_flag: false, active_flag: true, add_time: '2020-01-01 00:00:00',
  }));
}

/** `list` ordered by a v1 `sort` parameter; lists are kept in id order (no sort needed for `id ASC`). */
function sorted(list: Rec[], sort: string | null): Rec[] {
  if (!sort?.trim()) return list;
  const keys = sort.split(',').map((part) => {
    const m = /^\s*([A-Za-z0-9_]+)(?:\s+(ASC|DESC))?\s*$/i.exec(part);
    if (!m) throw new ApiError(400, `Invalid sort: ${sort}`);
    return { field: m[1] as string, desc: m[2]?.toUpperCase() === 'DESC' };
  });
  if (keys.length === 1 && keys[0]?.field === 'id' && !keys[0].desc) return list;
  const cmp = (a: unknown, b: unknown) => (a === b ? 0 : a == null ? -1 : b == null ? 1 : (a as number) < (b as number) ? -1 : 1);
  return [...list].sort((a, b) => {
    for (const k of keys) {
      const c = cmp(a[k.field], b[k.field]);
      if (c) return k.desc ? -c : c;
    }
    return 0;
  });
}

const OWNER = { id: 1, name: 'Simulator Owner', email: 'owner@example.invalid', has_pic: 0, active_flag: true, value: 1 };

export class PipedriveSimulator extends EventEmitter {
  persons: Rec[] = [];
  deals: Rec[] = [];
  personFields: Field[] = [];
  dealFields: Field[] = [];
  stats: SimStats = { requests: 0, byRoute: {}, rateLimited: 0, faults: 0, persons: 0, deals: 0 };
  private faults: Fault[] = [];
  private window: Float64Array = new Float64Array(0);
  private next = 0;
  private filled = 0;
  private server: http.Server | undefined;
  private o: SimulatorOptions;
  /** Open client connections and requests being handled (see idle()). */
  private sockets = new Set<Socket>();
  private handling = 0;
  /** Requests answered already and still to be applied (faults with `applyAfterMs`). */
  private late = new Set<NodeJS.Timeout>();

  constructor(options: SimulatorOptions = {}) {
    super();
    this.o = { ...options };
    this.reset();
  }

  /** Forgets every record, field, fault and count. */
  reset(): void {
    this.persons = [];
    this.deals = [];
    this.personFields = systemFields([
      ['name', 'Name', 'varchar'], ['first_name', 'First name', 'varchar'], ['last_name', 'Last name', 'varchar'],
      ['email', 'Email', 'varchar'], ['phone', 'Phone', 'phone'], ['org_id', 'Organization', 'org'],
      ['owner_id', 'Owner', 'user'], ['add_time', 'Person created', 'date'],
    ]);
    this.dealFields = systemFields([
      ['title', 'Title', 'varchar'], ['value', 'Value', 'monetary'], ['currency', 'Currency', 'varchar'],
      ['person_id', 'Contact person', 'people'], ['status', 'Status', 'status'],
      ['expected_close_date', 'Expected close date', 'date'], ['add_time', 'Deal created', 'date'],
    ]);
    this.faults = [];
    for (const t of this.late) clearTimeout(t);
    this.late.clear();
    this.stats = { requests: 0, byRoute: {}, rateLimited: 0, faults: 0, persons: 0, deals: 0 };
    this.window = new Float64Array(this.o.rateLimit?.limit ?? 0);
    this.next = 0;
    this.filled = 0;
  }

  /** Changes the limit at run time (undefined = unlimited); the window starts empty. */
  setRateLimit(rateLimit: SimRateLimit | undefined): void {
    this.o.rateLimit = rateLimit;
    this.window = new Float64Array(rateLimit?.limit ?? 0);
    this.next = 0;
    this.filled = 0;
  }

  addFault(f: Fault): void {
    this.faults.push({ ...f });
  }

  clearFaults(): void {
    this.faults = [];
  }

  /** Starts listening on 127.0.0.1; resolves to the API root (`http://127.0.0.1:P/v1`). */
  async listen(port = 0, host = '127.0.0.1'): Promise<string> {
    const server = http.createServer({ keepAliveTimeout: 30_000 }, (req, res) => {
      this.handling++;
      void this.handle(req, res).finally(() => {
        this.handling--;
        this.emit('settled');
      });
    });
    server.on('connection', (socket) => {
      this.sockets.add(socket);
      socket.once('close', () => {
        this.sockets.delete(socket);
        this.emit('settled');
      });
    });
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => resolve());
    });
    const addr = server.address() as AddressInfo;
    return `http://${host}:${addr.port}/v1`;
  }

  /**
   * Resolves when no client connection is open, no request is being handled and none is
   * waiting to be applied late: after a client was killed, every request it had sent has
   * been applied (as a real server would) or dropped.
   */
  async idle(): Promise<void> {
    while (this.sockets.size > 0 || this.handling > 0 || this.late.size > 0) await new Promise((r) => this.once('settled', r));
  }

  /** Resolves when every request answered before being applied (`applyAfterMs`) is applied. */
  async applied(): Promise<void> {
    while (this.late.size > 0) await new Promise((r) => this.once('settled', r));
  }

  private applyLater(ms: number, method: string, url: URL, body: Record<string, unknown>): void {
    const t = setTimeout(() => {
      this.late.delete(t);
      try {
        this.api(method, url, body);
      } catch {
        // Refused: nobody hears of it (the client had its answer already).
      }
      this.emit('settled');
    }, ms);
    this.late.add(t);
  }

  async close(): Promise<void> {
    for (const t of this.late) clearTimeout(t);
    this.late.clear();
    const s = this.server;
    if (!s) return;
    this.server = undefined;
    s.closeAllConnections();
    await new Promise<void>((r) => s.close(() => r()));
  }

  /** Rolling window: at most `limit` accepted requests in any `windowMs`. */
  private rate(): { ok: boolean; headers: Record<string, string>; retryAfter: number } {
    const rl = this.o.rateLimit;
    if (!rl) return { ok: true, headers: {}, retryAfter: 0 };
    const t = performance.now();
    let inWindow = 0;
    let oldest = Infinity;
    for (let i = 0; i < this.filled; i++) {
      const v = this.window[i] as number;
      if (v > t - rl.windowMs) {
        inWindow++;
        if (v < oldest) oldest = v;
      }
    }
    const ok = inWindow < rl.limit;
    if (ok) {
      this.window[this.next] = t;
      this.next = (this.next + 1) % rl.limit;
      this.filled = Math.min(this.filled + 1, rl.limit);
      inWindow++;
      if (oldest === Infinity) oldest = t;
    }
    const reset = Math.max(1, Math.ceil((oldest + rl.windowMs - t) / 1000));
    return {
      ok,
      retryAfter: reset,
      headers: {
        'x-ratelimit-limit': String(rl.limit),
        'x-ratelimit-remaining': String(Math.max(0, rl.limit - inWindow)),
        'x-ratelimit-reset': String(reset),
      },
    };
  }

  private takeFault(method: string, path: string, body: Record<string, unknown> | undefined): Fault | undefined {
    const i = this.faults.findIndex(
      (f) =>
        f.count !== 0 &&
        (!f.method || f.method === method) &&
        (!f.path || path === f.path || path.startsWith(`${f.path}/`)) &&
        (!f.match || Object.entries(f.match).every(([k, v]) => body?.[k] === v)),
    );
    if (i < 0) return undefined;
    const f = this.faults[i] as Fault;
    if (f.count > 0) f.count--;
    this.stats.faults++;
    return f;
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://sim');
    const method = req.method ?? 'GET';
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const raw = Buffer.concat(chunks).toString('utf8');
    const send = (status: number, payload: unknown, headers: Record<string, string> = {}) => {
      const text = JSON.stringify(payload);
      res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), ...headers });
      res.end(text);
    };
    if (url.pathname.startsWith('/_sim/')) return this.control(method, url, raw, send);

    const route = `${method} ${url.pathname.replace(/\/\d+(?=\/|$)/g, '/:id')}`;
    this.stats.requests++;
    this.stats.byRoute[route] = (this.stats.byRoute[route] ?? 0) + 1;
    let status = 200;
    try {
      if (this.o.latencyMs) await sleep(this.o.latencyMs);
      const token = req.headers['x-api-token'] ?? url.searchParams.get('api_token');
      if (this.o.token !== undefined && token !== this.o.token) {
        status = 401;
        return send(401, { success: false, error: 'You need to be authorized to make this request.', errorCode: 401, error_info: ERROR_INFO });
      }
      const limit = this.rate();
      if (!limit.ok) {
        status = 429;
        this.stats.rateLimited++;
        return send(429, { success: false, error: 'Rate limit has been exceeded', errorCode: 429, error_info: ERROR_INFO }, {
          ...limit.headers, 'retry-after': String(limit.retryAfter),
        });
      }
      let body: Record<string, unknown> | undefined;
      if (raw) {
        try {
          body = JSON.parse(raw) as Record<string, unknown>;
        } catch {
          status = 400;
          return send(400, { success: false, error: 'Malformed JSON body', error_info: ERROR_INFO, data: null }, limit.headers);
        }
      }
      const fault = this.takeFault(method, url.pathname, body);
      if (fault?.applyAfterMs !== undefined) {
        this.applyLater(fault.applyAfterMs, method, url, body ?? {});
        status = fault.status;
        if (fault.status === 0) {
          res.socket?.destroy();
          return;
        }
        return send(fault.status, { success: false, error: fault.error ?? `Injected ${fault.status}`, errorCode: fault.status, error_info: ERROR_INFO }, limit.headers);
      }
      if (fault?.status === 0) {
        // A dropped connection (before or after applying the request).
        if (fault.afterCommit) {
          try {
            this.api(method, url, body ?? {});
          } catch {
            // The client never sees the answer either way.
          }
        }
        status = 0;
        res.socket?.destroy();
        return;
      }
      if (fault && !fault.afterCommit) {
        status = fault.status;
        const extra: Record<string, string> = fault.retryAfter !== undefined ? { 'retry-after': String(fault.retryAfter) } : {};
        return send(fault.status, { success: false, error: fault.error ?? `Injected ${fault.status}`, errorCode: fault.status, error_info: ERROR_INFO }, { ...limit.headers, ...extra });
      }
      try {
        const out = this.api(method, url, body ?? {});
        status = fault ? fault.status : out.status;
        if (fault) return send(fault.status, { success: false, error: fault.error ?? `Injected ${fault.status} after commit`, error_info: ERROR_INFO }, limit.headers);
        return send(out.status, { success: true, data: out.data, additional_data: out.additional ?? null }, limit.headers);
      } catch (err) {
        if (!(err instanceof ApiError)) throw err;
        status = err.status;
        return send(err.status, { success: false, error: err.message, errorCode: err.status, error_info: ERROR_INFO, data: null, additional_data: null }, limit.headers);
      }
    } finally {
      this.emit('request', { method, route, status });
    }
  }

  private control(method: string, url: URL, raw: string, send: (s: number, p: unknown) => void): void {
    if (method === 'GET' && url.pathname === '/_sim/stats') {
      return send(200, { ...this.stats, persons: this.persons.length, deals: this.deals.length });
    }
    if (method === 'POST' && url.pathname === '/_sim/faults') {
      this.addFault(JSON.parse(raw) as Fault);
      return send(201, { ok: true });
    }
    if (method === 'DELETE' && url.pathname === '/_sim/faults') {
      this.clearFaults();
      return send(200, { ok: true });
    }
    if (method === 'PUT' && url.pathname === '/_sim/rate-limit') {
      const b = JSON.parse(raw || '{}') as Partial<SimRateLimit>;
      this.setRateLimit(b.limit && b.windowMs ? { limit: b.limit, windowMs: b.windowMs } : undefined);
      return send(200, { ok: true });
    }
    if (method === 'POST' && url.pathname === '/_sim/reset') {
      this.reset();
      return send(200, { ok: true });
    }
    if (method === 'POST' && url.pathname === '/_sim/stats/reset') {
      this.stats = { requests: 0, byRoute: {}, rateLimited: 0, faults: 0, persons: 0, deals: 0 };
      return send(200, { ok: true });
    }
    send(404, { error: 'unknown simulator control route' });
  }

  private api(method: string, url: URL, body: Record<string, unknown>): { status: number; data: unknown; additional?: unknown } {
    const parts = url.pathname.split('/').filter(Boolean); // ['v1', 'deals', '12']
    if (parts[0] !== 'v1') throw new ApiError(404, `Unknown method .`);
    const [, resource, idOrSub] = parts;
    const q = url.searchParams;
    switch (`${method} ${resource}${idOrSub === undefined ? '' : idOrSub === 'search' ? '/search' : '/:id'}`) {
      case 'GET personFields':
        return this.page(this.personFields, q);
      case 'GET dealFields':
        return this.page(this.dealFields, q);
      case 'POST personFields':
        return { status: 201, data: this.addField(this.personFields, body) };
      case 'POST dealFields':
        return { status: 201, data: this.addField(this.dealFields, body) };
      case 'GET persons':
        return this.page(this.persons, q);
      case 'GET deals': {
        const filter = q.get('status') ?? 'all_not_deleted';
        const list = filter === 'all_not_deleted' ? this.deals.filter((d) => d.status !== 'deleted') : this.deals.filter((d) => d.status === filter);
        return this.page(list, q, (d) => this.expandDeal(d as Rec));
      }
      case 'POST persons':
        return { status: 201, data: this.writePerson(undefined, body) };
      case 'PUT persons/:id':
        return { status: 200, data: this.writePerson(this.find(this.persons, idOrSub, 'Person'), body) };
      case 'GET persons/:id':
        return { status: 200, data: this.find(this.persons, idOrSub, 'Person') };
      case 'POST deals':
        return { status: 201, data: this.expandDeal(this.writeDeal(undefined, body)) };
      case 'PUT deals/:id':
        return { status: 200, data: this.expandDeal(this.writeDeal(this.find(this.deals, idOrSub, 'Deal'), body)) };
      case 'GET deals/:id':
        return { status: 200, data: this.expandDeal(this.find(this.deals, idOrSub, 'Deal')) };
      case 'GET persons/search':
        return this.search(this.persons, this.personFields, 'person', q);
      case 'GET deals/search':
        return this.search(this.deals, this.dealFields, 'deal', q);
      default:
        throw new ApiError(404, `Unknown method .`);
    }
  }

  /**
   * Offset pagination as Pipedrive does it: start, limit (max 500), more_items_in_collection;
   * `sort` as v1 takes it ("field_1 ASC, field_2 DESC", first-level fields).
   */
  private page(all: unknown[], q: URLSearchParams, shape = (x: unknown) => x): { status: number; data: unknown; additional: unknown } {
    const list = sorted(all as Rec[], q.get('sort'));
    const start = Math.max(0, Number(q.get('start') ?? 0) || 0);
    const limit = Math.min(500, Math.max(1, Number(q.get('limit') ?? 100) || 100));
    const data = list.slice(start, start + limit).map(shape);
    const more = start + limit < list.length;
    const pagination = { start, limit, more_items_in_collection: more, ...(more ? { next_start: start + limit } : {}) };
    return { status: 200, data: data.length ? data : null, additional: { pagination } };
  }

  private find(list: Rec[], id: string | undefined, what: string): Rec {
    const rec = list[Number(id) - 1];
    if (!rec || rec.status === 'deleted') throw new ApiError(404, `${what} not found`);
    return rec;
  }

  private addField(list: Field[], body: Record<string, unknown>): Field {
    if (typeof body.name !== 'string' || !body.name.trim()) throw new ApiError(400, 'Field name must be given.');
    const types = ['varchar', 'varchar_auto', 'text', 'double', 'monetary', 'date', 'enum', 'set', 'phone', 'time', 'address'];
    const type = typeof body.field_type === 'string' ? body.field_type : '';
    if (!types.includes(type)) throw new ApiError(400, 'Field type is invalid.');
    const f: Field = {
      id: list.length + 1, key: randomBytes(20).toString('hex'), name: body.name, field_type: type,
      edit_flag: true, active_flag: true, add_time: now(),
    };
    list.push(f);
    return f;
  }

  private customValues(fields: Field[], body: Record<string, unknown>, rec: Rec): void {
    for (const f of fields) {
      if (!f.edit_flag || !(f.key in body)) continue;
      const v = body[f.key];
      rec[f.key] = v === null || v === '' ? null : String(v);
    }
  }

  private writePerson(existing: Rec | undefined, body: Record<string, unknown>): Rec {
    if (!existing && (typeof body.name !== 'string' || !body.name.trim())) throw new ApiError(400, 'Name must be given.');
    if ('name' in body && (typeof body.name !== 'string' || !body.name.trim())) throw new ApiError(400, 'Name must be given.');
    const rec: Rec = existing ?? {
      id: this.persons.length + 1, company_id: 1, owner_id: OWNER, org_id: null, active_flag: true, visible_to: '3',
      email: [{ value: '', primary: true }], phone: [{ value: '', primary: true }], open_deals_count: 0, add_time: now(),
    };
    if (typeof body.name === 'string') {
      const name = body.name.trim();
      const sp = name.indexOf(' ');
      Object.assign(rec, { name, first_name: sp < 0 ? name : name.slice(0, sp), last_name: sp < 0 ? null : name.slice(sp + 1) });
    }
    this.customValues(this.personFields, body, rec);
    rec.update_time = now();
    if (!existing) this.persons.push(rec);
    return rec;
  }

  private writeDeal(existing: Rec | undefined, body: Record<string, unknown>): Rec {
    if (!existing || 'title' in body) {
      if (typeof body.title !== 'string' || !body.title.trim()) throw new ApiError(400, 'Title must be given.');
    }
    if ('value' in body && body.value !== null && !Number.isFinite(Number(body.value))) throw new ApiError(400, 'Value must be a number.');
    if ('status' in body && !['open', 'won', 'lost', 'deleted'].includes(String(body.status))) throw new ApiError(400, 'Invalid status.');
    if ('expected_close_date' in body && body.expected_close_date !== null && !/^\d{4}-\d{2}-\d{2}$/.test(String(body.expected_close_date))) {
      throw new ApiError(400, 'Expected close date must be in YYYY-MM-DD format.');
    }
    if ('person_id' in body && body.person_id !== null) {
      const p = this.persons[Number(body.person_id) - 1];
      if (!p) throw new ApiError(400, `Person with id ${String(body.person_id)} does not exist.`);
    }
    const rec: Rec = existing ?? {
      id: this.deals.length + 1, value: 0, currency: 'USD', status: 'open', person_id: null, org_id: null, user_id: OWNER,
      stage_id: 1, pipeline_id: 1, expected_close_date: null, won_time: null, lost_time: null, close_time: null, add_time: now(),
    };
    if (typeof body.title === 'string') rec.title = body.title.trim();
    if ('value' in body) rec.value = body.value === null ? 0 : Number(body.value);
    if (typeof body.currency === 'string') rec.currency = body.currency;
    if ('person_id' in body) rec.person_id = body.person_id === null ? null : Number(body.person_id);
    if ('expected_close_date' in body) rec.expected_close_date = body.expected_close_date ?? null;
    if ('status' in body && body.status !== rec.status) {
      rec.status = body.status;
      rec.won_time = body.status === 'won' ? now() : null;
      rec.lost_time = body.status === 'lost' ? now() : null;
      rec.close_time = body.status === 'won' || body.status === 'lost' ? now() : null;
    }
    this.customValues(this.dealFields, body, rec);
    rec.update_time = now();
    if (!existing) this.deals.push(rec);
    return rec;
  }

  /** v1 returns deals with `person_id` expanded to an object whose `value` is the id. */
  private expandDeal(d: Rec): Rec {
    const p = typeof d.person_id === 'number' ? this.persons[d.person_id - 1] : undefined;
    return {
      ...d,
      person_id: p ? { active_flag: true, name: p.name, email: p.email, phone: p.phone, owner_id: 1, value: p.id } : null,
      person_name: p ? p.name : null,
      active: d.status === 'open',
      deleted: d.status === 'deleted',
    };
  }

  /** `exact_match` search over custom field values (the only search Sluice uses). */
  private search(list: Rec[], fields: Field[], type: string, q: URLSearchParams) {
    const term = q.get('term') ?? '';
    if (term.length < 1) throw new ApiError(400, 'Search term must be at least 1 character long with exact_match.');
    const custom = fields.filter((f) => f.edit_flag).map((f) => f.key);
    const items = list
      .filter((r) => r.status !== 'deleted' && custom.some((k) => r[k] === term))
      .map((r) => ({ result_score: 1, item: { id: r.id, type, name: r.name ?? r.title, title: r.title, custom_fields: custom.map((k) => r[k]).filter((v) => v != null) } }));
    return { status: 200, data: { items }, additional: { pagination: { start: 0, limit: 100, more_items_in_collection: false } } };
  }
}
