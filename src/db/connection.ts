/**
 * How every Sluice connection is opened: the pools (openDb), pg-boss's pool and the LISTEN
 * clients are all DbClients (`clientClass`, `openClient`), which bound two waits that a lost
 * network makes endless (docs/operations.md, Lost connections):
 * - Opening a connection: at most `connectTimeoutMs` (SLUICE_DB_CONNECT_TIMEOUT_MS, 10 s)
 *   from the TCP connect to the server's first ReadyForQuery. pg has no default: a connect
 *   whose packets a partition drops waited for ever (or the OS's SYN retries, ~2 min, when
 *   not even the handshake answered), holding its pool slot. It then fails with a
 *   ConnectTimeoutError, "database unavailable" to every retry path (unavailable.ts).
 * - A peer that vanished (its machine lost, a cable pulled): TCP keepalives on both ends.
 *   The server's (`tcp_keepalives_*`, set per session at connect) end a lost client's
 *   backend, so its transaction rolls back and its locks go, after idle + interval x count
 *   (30 + 10 x 3 s) instead of the OS's 2 h 11 min; `client_connection_check_interval` does
 *   the same for a backend busy in a statement. The client's (Node's keepalive: idle, then
 *   10 probes 1 s apart, libuv's fixed values) end a connection to a vanished server, which
 *   a LISTEN or an idle pooled connection would otherwise never learn of.
 * Over a Unix socket the server ignores its keepalive settings (they read 0): harmless.
 */
import pg from 'pg';
import { intEnv } from '../config.ts';
import { ConnectTimeoutError } from './unavailable.ts';

export interface ConnectionSettings {
  /** Longest wait for a connection to open (TCP, TLS, authentication, start-up), in ms; default 10,000. */
  connectTimeoutMs: number;
  /** Seconds a connection is idle before the first keepalive probe, both ends; 0 leaves both ends' defaults. Default 30. */
  keepaliveIdleS: number;
  /** Server side: seconds between two probes, and between two checks of a running statement's client; default 10. */
  keepaliveIntervalS: number;
  /** Server side: probes unanswered before the server drops the connection; default 3. */
  keepaliveCount: number;
}

/**
 * 10 s to connect: pg-boss's own default, and far above a healthy connect (milliseconds; a
 * loaded server's SCRAM exchange and backend start well under a second). About a minute
 * (30 + 10 x 3 s) for the server to let go of a vanished client's locks: a live peer's
 * kernel answers every probe, so only a network silent for 30 s in a row cuts a connection.
 */
export const CONNECTION_DEFAULTS: Readonly<ConnectionSettings> = {
  connectTimeoutMs: 10_000,
  keepaliveIdleS: 30,
  keepaliveIntervalS: 10,
  keepaliveCount: 3,
};

/** The settings from the environment (SLUICE_DB_*), CONNECTION_DEFAULTS where unset. */
export function connectionSettings(): ConnectionSettings {
  return {
    connectTimeoutMs: intEnv('SLUICE_DB_CONNECT_TIMEOUT_MS', CONNECTION_DEFAULTS.connectTimeoutMs),
    keepaliveIdleS: intEnv('SLUICE_DB_KEEPALIVE_IDLE_S', CONNECTION_DEFAULTS.keepaliveIdleS),
    keepaliveIntervalS: intEnv('SLUICE_DB_KEEPALIVE_INTERVAL_S', CONNECTION_DEFAULTS.keepaliveIntervalS),
    keepaliveCount: intEnv('SLUICE_DB_KEEPALIVE_COUNT', CONNECTION_DEFAULTS.keepaliveCount),
  };
}

/**
 * The statement each new connection runs before it is used: the server's side of the
 * keepalives, for this session. SET rather than the start-up packet's `options`: a
 * DATABASE_URL's own `?options=` (Neon's endpoint, a search_path) would replace ours or be
 * replaced, and pgbouncer refuses an `options` start-up parameter unless told to ignore it.
 * Any user may set these (PGC_USERSET). The values are whole numbers (config.ts checks them).
 */
export function sessionSql(s: ConnectionSettings): string | undefined {
  if (s.keepaliveIdleS === 0) return undefined;
  return [
    `SET tcp_keepalives_idle = ${s.keepaliveIdleS}`,
    `SET tcp_keepalives_interval = ${s.keepaliveIntervalS}`,
    `SET tcp_keepalives_count = ${s.keepaliveCount}`,
    // A backend in a long statement reads nothing from its client, so it would learn of the
    // dead connection only when it answers: this polls the socket meanwhile. Only where the
    // server's platform can (Linux, macOS, the BSDs): elsewhere (Windows) any value but 0 is
    // an error, which must not refuse every connection, so it is tried on its own.
    `DO $$ BEGIN PERFORM set_config('client_connection_check_interval', '${s.keepaliveIntervalS * 1000}', false);
       EXCEPTION WHEN OTHERS THEN NULL; END $$`,
  ].join('; ');
}

type ConnectCallback = (err: Error | null, client?: pg.Client) => void;

/**
 * A pg.Client class with `settings` applied (for a pool's `Client` option). Its connect()
 * gives up after connectTimeoutMs with a ConnectTimeoutError naming the host, port and
 * database (never the password), then runs sessionSql; a connection whose SET fails is
 * closed and the connect fails with that error.
 */
export function clientClass(settings: ConnectionSettings = connectionSettings()): typeof pg.Client {
  const sql = sessionSql(settings);
  return class DbClient extends pg.Client {
    constructor(config?: string | pg.ClientConfig) {
      super({
        ...(typeof config === 'string' ? { connectionString: config } : config),
        // Ours, below (a pool's connectionTimeoutMillis, pg-boss's, reaches clients too).
        connectionTimeoutMillis: 0,
        keepAlive: settings.keepaliveIdleS > 0,
        keepAliveInitialDelayMillis: settings.keepaliveIdleS * 1000,
      });
    }

    override connect(): Promise<pg.Client>;
    override connect(callback: ((err: Error) => void) | ((err: null, c: pg.Client) => void)): void;
    override connect(callback?: ((err: Error) => void) | ((err: null, c: pg.Client) => void)): Promise<pg.Client> | void {
      const opened = this.open();
      if (!callback) return opened;
      // pg-pool connects its clients with a callback.
      const done = callback as ConnectCallback;
      opened.then((c) => done(null, c), (err: Error) => done(err));
    }

    private async open(): Promise<pg.Client> {
      let timedOut = false;
      let connected = false;
      // What pg's own connectionTimeoutMillis does, with an error of ours: the stream is
      // destroyed (ending it would wait for a FIN the silent peer never acknowledges). It
      // covers the session's SET too: a peer lost right after start-up must not hold us.
      const timer = setTimeout(() => {
        timedOut = true;
        this.connection.stream.destroy();
      }, settings.connectTimeoutMs);
      // The socket keeps the process alive while it connects; the timer need not.
      timer.unref();
      // A connection lost during the SET (the timer's destroy, a dropped peer) is also emitted
      // as 'error' on this client, before any pool listens to it: without a listener that
      // throws in the process (serve died). The failure itself reaches the catch below.
      const swallow = () => {};
      this.on('error', swallow);
      try {
        await super.connect();
        connected = true;
        if (sql) await this.query(sql);
      } catch (err) {
        // Not handed out half set up; not waited for (a silent peer would hold us).
        if (connected) this.end().catch(() => {});
        if (!timedOut) throw err;
        const where = this.host.startsWith('/') ? `socket ${this.host}` : `${this.host}:${this.port}`;
        throw new ConnectTimeoutError(
          `could not connect to database "${this.database ?? ''}" at ${where}: no answer within ${settings.connectTimeoutMs} ms (SLUICE_DB_CONNECT_TIMEOUT_MS)`,
          { cause: err },
        );
      } finally {
        clearTimeout(timer);
        this.off('error', swallow);
      }
      return this;
    }
  };
}

/** A new (unconnected) client with the connection settings, for a connection of its own (LISTEN). */
export function newClient(config: pg.ClientConfig, settings?: ConnectionSettings): pg.Client {
  const Client = clientClass(settings);
  return new Client(config);
}
