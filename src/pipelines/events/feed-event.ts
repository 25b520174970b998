/**
 * From a raw `<event>` of the provider feed to a checked event, or a reject with a reason.
 *
 * Terminology: a *base event* is the provider's plan (title, sell mode); an *event* is one
 * session of it (dates, zones); a *zone* is a priced area. The key of an event is the pair
 * (base_event_id, event_id): the provider reuses event ids across base events.
 */
import { createHash } from 'node:crypto';
import { MAX_EVENT_CHARS, type Attributes, type RawFeedEvent } from '../../formats/xml-events-reader.ts';
import { realDateTime, storableYear } from '../../validate/values.ts';

export interface Zone {
  zone_id: string;
  capacity: number | null;
  price: number;
  name: string | null;
  numbered: boolean | null;
}

export interface FeedEvent {
  /** Public id: UUID v5 of the (base_event_id, event_id) pair. */
  id: string;
  baseEventId: string;
  eventId: string;
  title: string;
  sellMode: 'online' | 'offline';
  organizerCompanyId: string | null;
  /** Local times as `YYYY-MM-DDTHH:MM:SS`. */
  startsAt: string;
  endsAt: string;
  sellFrom: string | null;
  sellTo: string | null;
  soldOut: boolean;
  minPrice: number;
  maxPrice: number;
  zones: Zone[];
  /** `zones` as JSON text. */
  zonesJson: string;
  /** Hash of the event's own stored values (not the base event's): equal means no write. */
  contentHash: string;
}

export interface FeedReject {
  line: number;
  baseEventId: string | null;
  eventId: string | null;
  reason: string;
  raw: string;
}

export type Checked = { ok: true; event: FeedEvent } | { ok: false; reject: FeedReject };

/** Namespace of Sluice's event ids (random, fixed forever: changing it changes every id). */
const EVENT_ID_NAMESPACE = '6f1c2b9e-3d4a-4e8f-a2b7-5c0d9e8f1a23';

/** RFC 4122 UUID version 5 (SHA-1, name-based) of `name` in `namespace`. */
export function uuidV5(namespace: string, name: string): string {
  const ns = Buffer.from(namespace.replaceAll('-', ''), 'hex');
  const hash = createHash('sha1').update(ns).update(name).digest();
  hash[6] = (hash[6]! & 0x0f) | 0x50;
  hash[8] = (hash[8]! & 0x3f) | 0x80;
  const h = hash.subarray(0, 16).toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20, 32)}`;
}

/**
 * The public id of an event: UUID v5 of `base_event_id:event_id` when neither id holds a
 * colon, else of `\u0000<UTF-8 bytes of base_event_id>:base_event_id:event_id`.
 *
 * `a:b` + `c` and `a` + `b:c` both joined to `a:b:c`, so two events got one id and the store's
 * UNIQUE (id) failed every later sync. Why the two forms never give one name to two pairs:
 * - a plain name has exactly one colon, between two ids without any: it gives back its pair;
 * - a prefixed name has at least three colons, so it is never a plain name; after the NUL,
 *   the byte length says where base_event_id ends, whatever colons either id holds;
 * - it starts with U+0000, which no feed id can hold (XML 1.0 forbids it, even as `&#0;`), so
 *   it is also none of the names the old `base:event` form gave: ids already stored for
 *   pairs with a colon (they keep them) never collide with new ones.
 * Pairs without a colon keep the id they always had.
 */
export function eventUuid(baseEventId: string, eventId: string): string {
  const name =
    baseEventId.includes(':') || eventId.includes(':')
      ? `\u0000${Buffer.byteLength(baseEventId)}:${baseEventId}:${eventId}`
      : `${baseEventId}:${eventId}`;
  return uuidV5(EVENT_ID_NAMESPACE, name);
}

/**
 * Longest base_event_id or event_id, in characters (code points). The pair keys
 * provider_events' primary-key index, whose entries Postgres caps at 2,704 bytes: two ids of
 * 256 characters take at most 2 x 1,024 bytes of UTF-8.
 */
export const MAX_ID_CHARS = 256;


/**
 * Prices at or above this overflow `numeric(14, 2)` once Postgres rounds them to cents
 * (999999999999.995 becomes 10^12). Compared with the double that is sent: its shortest
 * decimal form, which is what Postgres reads, is at or above this iff the double is.
 */
const PRICE_OVERFLOW = 999_999_999_999.995;

const LOCAL_DATE_TIME = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})$/;


function localDateTime(value: string | undefined, field: string, required: boolean): string | null {
  if (value === undefined || value === '') {
    if (required) throw new RejectError(`${field} is missing`);
    return null;
  }
  const m = LOCAL_DATE_TIME.exec(value);
  if (!m) throw new RejectError(`${field} is not a date-time (YYYY-MM-DDTHH:MM:SS): ${shown(value)}`);
  const [y, mo, d, h, mi, s] = m.slice(1).map(Number) as [number, number, number, number, number, number];
  if (!storableYear(y)) throw new RejectError(`${field} is outside the years 0001-9999: ${value}`);
  if (!realDateTime(y, mo, d, h, mi, s)) throw new RejectError(`${field} is an impossible date: ${value}`);
  return value;
}

const PRICE = /^\d{1,12}(\.\d+)?$/;
const COUNT = /^\d{1,9}$/;

function zoneOf(a: Attributes): Zone {
  const zoneId = a.zone_id;
  if (!zoneId) throw new RejectError('a zone has no zone_id');
  if (a.price === undefined || !PRICE.test(a.price)) {
    throw new RejectError(`zone ${clip(zoneId)} has no valid price: ${shown(a.price ?? null)}`);
  }
  const price = Number(a.price);
  if (price >= PRICE_OVERFLOW) {
    throw new RejectError(`zone ${clip(zoneId)} has a price above 999999999999.99 (rounded to cents): ${shown(a.price)}`);
  }
  if (a.capacity !== undefined && !COUNT.test(a.capacity)) {
    throw new RejectError(`zone ${clip(zoneId)} has an invalid capacity: ${shown(a.capacity)}`);
  }
  return {
    zone_id: zoneId,
    capacity: a.capacity === undefined ? null : Number(a.capacity),
    price,
    name: a.name ?? null,
    numbered: bool(a.numbered, `zone ${clip(zoneId)} numbered`),
  };
}

function bool(value: string | undefined, field: string): boolean | null {
  if (value === undefined) return null;
  if (value === 'true') return true;
  if (value === 'false') return false;
  throw new RejectError(`${field} is not true/false: ${shown(value)}`);
}

/**
 * `value` cut to `max` characters for a reject. A copy, not a slice: V8 keeps a slice's whole
 * original alive, and a batch of rejects must not hold on to attributes of up to 1 Mi characters.
 */
function clip(value: string, max = 100): string {
  return value.length <= max ? value : Buffer.from(`${value.slice(0, max)}…`).toString();
}

/** A feed value quoted in a reject's reason (clipped). */
function shown(value: string | null): string {
  return JSON.stringify(value === null ? null : clip(value));
}

/** Whether `s` has more than `max` characters (code points); counts no further. */
function longerThan(s: string, max: number): boolean {
  if (s.length <= max) return false; // never more code points than UTF-16 units
  let n = 0;
  for (const _ of s) if (++n > max) return true;
  return false;
}

class RejectError extends Error {}

/** Checks one raw event: a FeedEvent, or a reject saying why (never throws for bad data). */
export function checkFeedEvent(raw: RawFeedEvent): Checked {
  const baseEventId = raw.base.base_event_id || null;
  const eventId = raw.event.event_id || null;
  try {
    if (!baseEventId) throw new RejectError('the event is not inside a base_event with a base_event_id');
    if (!eventId) throw new RejectError('event_id is missing');
    for (const [name, id] of [['base_event_id', baseEventId], ['event_id', eventId]] as const) {
      if (longerThan(id, MAX_ID_CHARS)) throw new RejectError(`${name} is longer than ${MAX_ID_CHARS} characters: ${shown(id)}`);
    }
    const sellMode = raw.base.sell_mode;
    if (sellMode !== 'online' && sellMode !== 'offline') {
      throw new RejectError(`sell_mode is not online/offline: ${shown(sellMode ?? null)}`);
    }
    const title = raw.base.title;
    if (!title) throw new RejectError('the base event has no title');
    const startsAt = localDateTime(raw.event.event_start_date, 'event_start_date', true)!;
    const endsAt = localDateTime(raw.event.event_end_date, 'event_end_date', true)!;
    if (endsAt < startsAt) throw new RejectError(`event_end_date ${endsAt} is before event_start_date ${startsAt}`);
    const sellFrom = localDateTime(raw.event.sell_from, 'sell_from', false);
    const sellTo = localDateTime(raw.event.sell_to, 'sell_to', false);
    const soldOut = bool(raw.event.sold_out, 'sold_out') ?? false;
    if (raw.truncatedZones) throw new RejectError('the event has too many zones');
    if (raw.oversized) throw new RejectError(`the event is longer than ${MAX_EVENT_CHARS.toLocaleString('en-US')} characters of XML`);
    if (raw.zones.length === 0) throw new RejectError('the event has no zones, so no price');
    // The same zone_id may appear twice in one event (e.g. numbered and unnumbered seats of
    // one area, with different prices): both are kept, both count for the price range.
    const zones = raw.zones.map(zoneOf);
    let minPrice = Infinity;
    let maxPrice = -Infinity;
    for (const z of zones) {
      if (z.price < minPrice) minPrice = z.price;
      if (z.price > maxPrice) maxPrice = z.price;
    }
    const organizerCompanyId = raw.base.organizer_company_id || null;
    const id = eventUuid(baseEventId, eventId);
    const zonesJson = JSON.stringify(zones);
    const contentHash = createHash('sha1').update(JSON.stringify([startsAt, endsAt, sellFrom, sellTo, soldOut])).update(zonesJson).digest('base64url');
    return {
      ok: true,
      event: { id, baseEventId, eventId, title, sellMode, organizerCompanyId, startsAt, endsAt, sellFrom, sellTo, soldOut, minPrice, maxPrice, zones, zonesJson, contentHash },
    };
  } catch (err) {
    if (!(err instanceof RejectError)) throw err;
    const keep = (id: string | null) => (id && longerThan(id, MAX_ID_CHARS) ? clip(id, MAX_ID_CHARS) : id);
    const ids = { baseEventId: keep(baseEventId), eventId: keep(eventId) };
    return { ok: false, reject: { line: raw.line, ...ids, reason: err.message, raw: rawText(raw) } };
  }
}

/** The event back as XML-ish text for the reject record (bounded: a reject is not a dump). */
function rawText(raw: RawFeedEvent): string {
  const attrs = (a: Attributes) =>
    Object.entries(a)
      .map(([k, v]) => ` ${clip(k)}="${clip(v, 1000).replaceAll('"', '&quot;')}"`)
      .join('');
  const zones = raw.zones.slice(0, 20).map((z) => `<zone${attrs(z)}/>`).join('');
  const more = raw.zones.length > 20 ? `<!-- ${raw.zones.length - 20} more zones -->` : '';
  const text = `<base_event${attrs(raw.base)}><event${attrs(raw.event)}>${zones}${more}</event></base_event>`;
  return clip(text, 4000);
}
