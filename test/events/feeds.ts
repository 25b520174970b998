/** Feeds for the provider tests: the real fixture and a small builder for variations. */
import fs from 'node:fs';
import path from 'node:path';
import { repoRoot } from '../../src/config.ts';

export const RESPONSE_1 = fs.readFileSync(path.join(repoRoot, 'test/fixtures/fever/response_1.xml'), 'utf8');

export interface ZoneSpec {
  zone_id: string;
  price: string;
  capacity?: string;
  name?: string;
  numbered?: string;
}

export interface EventSpec {
  event_id: string;
  start: string;
  end: string;
  zones: ZoneSpec[];
  sold_out?: string;
}

export interface BaseSpec {
  base_event_id: string;
  sell_mode: string;
  title: string;
  events: EventSpec[];
}

const esc = (s: string) => s.replaceAll('&', '&amp;').replaceAll('"', '&quot;').replaceAll('<', '&lt;');

/** An XML feed in the provider's format. */
export function feedXml(bases: BaseSpec[]): string {
  const body = bases
    .map(
      (b) =>
        `<base_event base_event_id="${esc(b.base_event_id)}" sell_mode="${esc(b.sell_mode)}" title="${esc(b.title)}">` +
        b.events
          .map(
            (e) =>
              `<event event_start_date="${e.start}" event_end_date="${e.end}" event_id="${esc(e.event_id)}" sell_from="2020-01-01T00:00:00" sell_to="${e.start}" sold_out="${e.sold_out ?? 'false'}">` +
              e.zones
                .map((z) => `<zone zone_id="${z.zone_id}" capacity="${z.capacity ?? '10'}" price="${z.price}" name="${esc(z.name ?? 'Z')}" numbered="${z.numbered ?? 'true'}" />`)
                .join('\n') +
              '</event>',
          )
          .join('\n') +
        '</base_event>',
    )
    .join('\n');
  return `<?xml version="1.0" encoding="UTF-8"?>\n<eventList version="1.0"><output>\n${body}\n</output></eventList>\n`;
}

/** Titles of a /search body, in order. */
export function titles(body: { data: { events: Array<{ title: string }> } }): string[] {
  return body.data.events.map((e) => e.title);
}
