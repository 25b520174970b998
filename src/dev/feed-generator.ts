/**
 * Generates a provider feed of any size, in the shape of the real one
 * (test/fixtures/fever/response_1.xml), as a stream of text chunks, so a 100 MB feed never
 * sits in memory. Deterministic: the same options give the same bytes.
 */

export interface GenerateOptions {
  /** Events in the feed. */
  events: number;
  /** Zones per event. */
  zones: number;
  /** Events per base event (default 5). */
  eventsPerBase?: number;
  /** First event start (default 2021-01-01T00:00:00, local time). */
  from?: string;
  /** Days the events are spread over (default 730). */
  days?: number;
  /**
   * Fetch number: in round r, one event in ten (those with id % 10 === r % 10) gets new
   * prices, as a live feed would (default 0: all prices as in round 0).
   */
  round?: number;
  /** Percent of base events sold offline only (default 10). */
  offlinePercent?: number;
}

function pad(n: number, w = 2): string {
  return String(n).padStart(w, '0');
}

function localIso(ms: number): string {
  const d = new Date(ms);
  return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())}T${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}`;
}

/** The feed as text chunks of roughly 64 KiB. */
export function* generateFeed(o: GenerateOptions): Generator<string> {
  const perBase = o.eventsPerBase ?? 5;
  const start = Date.parse(`${o.from ?? '2021-01-01T00:00:00'}Z`);
  const spanMs = (o.days ?? 730) * 86_400_000;
  const round = o.round ?? 0;
  const offline = o.offlinePercent ?? 10;
  let buf = '<?xml version="1.0" encoding="UTF-8"?>\n<eventList version="1.0">\n   <output>\n';
  for (let i = 0; i < o.events; i++) {
    const baseId = Math.floor(i / perBase) + 1;
    if (i % perBase === 0) {
      const mode = baseId % 100 < offline ? 'offline' : 'online';
      buf += `      <base_event base_event_id="${baseId}" sell_mode="${mode}" organizer_company_id="${(baseId % 7) + 1}" title="Generated plan ${baseId}">\n`;
    }
    const eventId = i + 1;
    // Whole minutes, evenly spread, starting on the hour.
    const startMs = start + Math.floor((i * spanMs) / Math.max(o.events, 1) / 60_000) * 60_000;
    const endMs = startMs + (60 + (i % 4) * 30) * 60_000;
    buf += `         <event event_start_date="${localIso(startMs)}" event_end_date="${localIso(endMs)}" event_id="${eventId}" sell_from="${localIso(startMs - 30 * 86_400_000)}" sell_to="${localIso(startMs - 3_600_000)}" sold_out="${i % 13 === 0}">\n`;
    const bump = eventId % 10 === round % 10 ? round : 0;
    for (let z = 0; z < o.zones; z++) {
      const price = 5 + ((eventId * 31 + z * 17 + bump * 7) % 200);
      buf += `            <zone zone_id="${z + 1}" capacity="${10 + ((z * 13) % 300)}" price="${price}.00" name="Zone ${z + 1}" numbered="${z % 2 === 0}" />\n`;
    }
    buf += '         </event>\n';
    if (i % perBase === perBase - 1 || i === o.events - 1) buf += '      </base_event>\n';
    if (buf.length >= 65_536) {
      yield buf;
      buf = '';
    }
  }
  yield `${buf}   </output>\n</eventList>\n`;
}
