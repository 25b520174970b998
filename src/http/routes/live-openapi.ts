/** The OpenAPI description of the live view's routes (src/http/routes/live.ts, docs/visits.md). */
import { errorResponse as error, serverErrors, UNAVAILABLE_CLOSING } from '../openapi.ts';

const count = { type: 'integer', minimum: 0 };
const snapshotUnavailable =
  'the snapshot could not be read (the database unavailable, or the read cancelled after 5 s, e.g. behind a lock; ' +
  `message \`the live view cannot read the database\`), or ${UNAVAILABLE_CLOSING}`;

export const liveOpenApi = {
  tags: [{ name: 'live', description: 'The live view of the visits: a page, its Server-Sent Events, and the same snapshot as JSON. Read-only and open (no token).' }],
  paths: {
    '/live': {
      get: {
        tags: ['live'],
        operationId: 'livePage',
        summary: 'The live page (static HTML that subscribes to /live/stream)',
        responses: {
          '200': {
            description: 'The page, with a Content-Security-Policy allowing only its own inline script and style (by hash)',
            headers: {
              'Content-Security-Policy': { schema: { type: 'string' } },
              'Cache-Control': { schema: { type: 'string', example: 'no-cache' } },
            },
            content: { 'text/html': { schema: { type: 'string' } } },
          },
          ...serverErrors(UNAVAILABLE_CLOSING),
        },
      },
    },
    '/live/snapshot': {
      get: {
        tags: ['live'],
        operationId: 'liveSnapshot',
        summary: 'The latest live snapshot, at most a second old',
        description:
          'The snapshot the stream pushes: answered from memory while less than a second old, else read (one read per second per process at most, shared by the requests that wait for it).',
        responses: {
          '200': { description: 'The snapshot', content: { 'application/json': { schema: { $ref: '#/components/schemas/LiveSnapshot' } } } },
          ...serverErrors(snapshotUnavailable),
        },
      },
    },
    '/live/stream': {
      get: {
        tags: ['live'],
        operationId: 'liveStream',
        summary: 'Server-Sent Events: one live snapshot a second',
        description:
          'The stream starts with `retry: 2000`, then sends one `data:` event a second (250 ms past each second) holding a LiveSnapshot as JSON, ' +
          'or `{"error":{"code":"unavailable","message":"the live view cannot read the database"}}` when that second\'s read failed. ' +
          'A viewer joining while others watch gets the latest snapshot at once. The stream never ends by itself: it ends when the server shuts down, ' +
          'and a viewer more than 1 MiB behind is dropped (the connection closed). At most SLUICE_LIVE_MAX_STREAMS streams per process (default 1,000).',
        responses: {
          '200': {
            description: 'The event stream',
            headers: {
              'Cache-Control': { schema: { type: 'string', example: 'no-cache, no-transform' } },
              'X-Accel-Buffering': { description: 'Tells proxies (nginx) not to buffer the events', schema: { type: 'string', example: 'no' } },
            },
            content: {
              'text/event-stream': {
                schema: {
                  type: 'string',
                  description: 'Events whose `data` is a LiveSnapshot (#/components/schemas/LiveSnapshot) or an ApiError with code `unavailable`',
                  example: 'retry: 2000\n\ndata: {"now":"2025-01-31T12:00:00.250Z","window_seconds":300,...}\n\n',
                },
              },
            },
          },
          '503': error(`Code \`unavailable\`: SLUICE_LIVE_MAX_STREAMS streams are already open on this process (\`too many live viewers on this instance\`), or ${UNAVAILABLE_CLOSING}`),
          '500': serverErrors()['500'],
        },
      },
    },
  },
  schemas: {
    LiveSnapshot: {
      type: 'object',
      description: 'The live view at one instant; every window is computed from `now`, so every process shows the same numbers.',
      properties: {
        now: { type: 'string', format: 'date-time', description: 'When the snapshot was read (this process\'s clock)' },
        window_seconds: { type: 'integer', example: 300, description: 'The chart\'s and "current visitors" window' },
        per_second: { type: 'array', items: count, description: 'Visits per second (by visited_at) of the window_seconds complete seconds up to series_end, oldest first' },
        series_end: { type: 'integer', description: 'Epoch second of the last value of per_second (the last complete second)' },
        visits_last_second: { ...count, description: 'Visits in the last complete second' },
        current_visitors: { ...count, description: 'Distinct visitors with a visit in the last 5 minutes' },
        visits_today: { ...count, description: 'Visits since 00:00 UTC' },
        top_pages: {
          type: 'array',
          description: 'The 10 most visited pages (paths without query string or fragment) in the minutes overlapping the last 5 minutes, most visited first',
          items: {
            type: 'object',
            properties: { page_path: { type: 'string' }, visits: count },
            required: ['page_path', 'visits'],
          },
        },
        recent: {
          type: 'array',
          description: 'The 20 most recent visits, newest first (by receipt)',
          items: {
            type: 'object',
            properties: {
              visited_at: { type: 'string', format: 'date-time' },
              visitor_id: { type: 'string' },
              page_path: { type: 'string' },
              received_at: { type: 'string', format: 'date-time' },
            },
            required: ['visited_at', 'visitor_id', 'page_path', 'received_at'],
          },
        },
        lag: {
          type: 'object',
          description: 'Receipt to committed, over the commits of the last 60 s',
          properties: {
            visits: count,
            avg_ms: { type: 'number', nullable: true, description: 'null without commits in the last 60 s' },
            max_ms: { type: 'integer', nullable: true, description: 'null without commits in the last 60 s' },
          },
          required: ['visits', 'avg_ms', 'max_ms'],
        },
        query_ms: { type: 'number', description: 'How long the snapshot read took, in ms' },
      },
      required: [
        'now', 'window_seconds', 'per_second', 'series_end', 'visits_last_second', 'current_visitors', 'visits_today', 'top_pages', 'recent', 'lag', 'query_ms',
      ],
    },
  },
};
