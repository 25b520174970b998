/**
 * A TCP proxy in front of PostgreSQL for fault tests: its connections can be dropped (as a
 * load balancer, pgbouncer or the network does), it can go down (open connections cut,
 * new ones reset at once, as while the server restarts) and come back up, and it can stall
 * (nothing passes either way, connections left open: packets dropped by the network).
 */
import net from 'node:net';

export interface TcpProxy {
  /** `url` with its host and port replaced by the proxy's. */
  url: string;
  /** Connections accepted (and passed on) so far. */
  accepted: number;
  /** Connections reset while down. */
  refused: number;
  /** Ends every open connection abruptly; new ones are still accepted. */
  dropAll(): void;
  /** Drops every open connection and resets new ones until `up()`. */
  down(): void;
  up(): void;
  /** Passes nothing either way, on open and new connections, keeping them open, until `flow()`. */
  stall(): void;
  flow(): void;
  close(): Promise<void>;
}

export async function startTcpProxy(url: string): Promise<TcpProxy> {
  const target = new URL(url);
  const sockets = new Set<net.Socket>();
  let isDown = false;
  let stalled = false;
  /** Forwarding on `from`'s data, held while stalled (a stall drops, it does not buffer). */
  const forward = (from: net.Socket, to: net.Socket) => {
    from.on('data', (d: Buffer) => void (stalled || to.write(d)));
    from.on('end', () => to.end());
  };
  const server = net.createServer((client) => {
    client.on('error', () => {});
    if (isDown) {
      proxy.refused++;
      client.destroy();
      return;
    }
    proxy.accepted++;
    const upstream = net.connect(Number(target.port), target.hostname);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('error', () => {});
      s.on('close', () => {
        sockets.delete(s);
        client.destroy();
        upstream.destroy();
      });
    }
    forward(client, upstream);
    forward(upstream, client);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const proxied = new URL(url);
  proxied.hostname = '127.0.0.1';
  proxied.port = String((server.address() as net.AddressInfo).port);
  const proxy: TcpProxy = {
    url: proxied.toString(),
    accepted: 0,
    refused: 0,
    dropAll() {
      for (const s of sockets) s.destroy();
    },
    down() {
      isDown = true;
      proxy.dropAll();
    },
    up() {
      isDown = false;
    },
    stall() {
      stalled = true;
    },
    flow() {
      stalled = false;
    },
    close() {
      proxy.dropAll();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
  return proxy;
}
