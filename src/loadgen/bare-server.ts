/**
 * The baseline of the visits benchmark: a bare node:http server that reads each POST body,
 * parses the JSON and answers 202 `{"accepted":1}`, storing nothing. Whatever Sluice does
 * beyond this (validation, group commit, durable storage) is the difference measured.
 *
 * Run as its own process: `node src/loadgen/bare-server.ts --port 0` prints
 * `listening <port>` on stdout once ready.
 */
import http from 'node:http';
import { fileURLToPath } from 'node:url';

const ACCEPTED = JSON.stringify({ accepted: 1 });

export function startBareServer(port = 0, host = '127.0.0.1'): Promise<http.Server> {
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      let status = 202;
      try {
        JSON.parse(Buffer.concat(chunks).toString('utf8'));
      } catch {
        status = 400;
      }
      res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(ACCEPTED) });
      res.end(ACCEPTED);
    });
  });
  // Same keep-alive behaviour as Fastify's defaults would give a load generator.
  server.keepAliveTimeout = 72_000;
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve(server));
  });
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const i = process.argv.indexOf('--port');
  const server = await startBareServer(i > 0 ? Number(process.argv[i + 1]) : 0);
  const addr = server.address();
  process.stdout.write(`listening ${typeof addr === 'object' && addr ? addr.port : ''}\n`);
  process.on('SIGTERM', () => server.close(() => process.exit(0)));
}
