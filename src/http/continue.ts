/**
 * `Expect: 100-continue` (curl sends it for bodies over 1 MiB): the client waits for `100
 * Continue` before it sends the body. Node answered it at once, before the token, the Host
 * and the upload's parameters were checked, so a refused upload was invited to send its body
 * (and the docs' "refused before a byte of its body is read" did not hold). Now the server
 * sends it only when the body is about to be read: in preParsing for every request but a
 * file upload, whose route sends it itself (routes/imports.ts): a raw body once its
 * parameters are checked and it has an upload slot, a form (whose fields are in the body)
 * once its Content-Length has passed. A
 * request answered without it never had its body sent: its connection is closed after the
 * answer (errors.ts), not kept waiting for a body that will not come.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { FastifyInstance, FastifyRequest } from 'fastify';

const continued = new WeakSet<IncomingMessage>();

function expectsContinue(req: IncomingMessage): boolean {
  return (req.headers.expect ?? '').toLowerCase() === '100-continue';
}

/** Sends `100 Continue` to a request that waits for it (once); nothing for others. */
export function continueBody(req: IncomingMessage, res: ServerResponse): void {
  if (!expectsContinue(req) || continued.has(req) || res.headersSent) return;
  continued.add(req);
  res.writeContinue();
}

/** A request still waiting for `100 Continue`: its body was never sent. */
export function awaitsContinue(req: IncomingMessage): boolean {
  return expectsContinue(req) && !continued.has(req);
}

/**
 * Takes `Expect: 100-continue` from Node (which would answer it at once) and sends it in
 * preParsing, unless `later(req)`: those routes call continueBody themselves.
 */
export function deferContinue(app: FastifyInstance, later: (req: FastifyRequest) => boolean): void {
  app.server.on('checkContinue', (req, res) => app.server.emit('request', req, res));
  app.addHook('preParsing', async (req, reply, payload) => {
    if (!later(req)) continueBody(req.raw, reply.raw);
    return payload;
  });
}
