/**
 * GET /: the intake dashboard (src/web/dashboard.html), a static page that talks to the
 * imports API with fetch. The page itself holds no data, so it is public (src/http/auth.ts
 * PUBLIC_ROUTES); everything it fetches (the list, the statuses, the rejects, uploads) needs
 * the API token when one is set, which the page asks for and sends on every call.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { FastifyInstance, FastifyReply } from 'fastify';
import { repoRoot } from '../../config.ts';
import type { AppContext } from '../context.ts';

const PAGE = path.join(repoRoot, 'src', 'web', 'dashboard.html');

export interface StaticPage {
  html: string;
  csp: string;
}

/**
 * Reads a page once and builds its Content-Security-Policy: the inline `<script>` and
 * `<style>` are allowed by hash and nothing else may run, so a file name or reject text
 * that slips into the DOM as markup still cannot execute (the page writes them as text).
 */
export function loadStaticPage(file: string): StaticPage {
  const html = fs.readFileSync(file, 'utf8');
  const hashes = (tag: string) =>
    [...html.matchAll(new RegExp(`<${tag}>([\\s\\S]*?)</${tag}>`, 'g'))]
      .map((m) => `'sha256-${createHash('sha256').update(m[1]!).digest('base64')}'`)
      .join(' ');
  const csp = [
    "default-src 'none'",
    `script-src ${hashes('script')}`,
    `style-src ${hashes('style')}`,
    "connect-src 'self'",
    "img-src 'self' data:",
    "base-uri 'none'",
    // Uploads go through fetch, never a form submission.
    "form-action 'none'",
    "frame-ancestors 'none'",
  ].join('; ');
  return { html, csp };
}

/** Sends a page loaded by loadStaticPage with its policy and the headers every page needs. */
export function sendStaticPage(reply: FastifyReply, page: StaticPage): FastifyReply {
  return reply
    .header('content-type', 'text/html; charset=utf-8')
    .header('content-security-policy', page.csp)
    .header('x-content-type-options', 'nosniff')
    .header('cache-control', 'no-cache')
    .send(page.html);
}

export function dashboardRoutes(app: FastifyInstance, _ctx: AppContext): void {
  const page = loadStaticPage(PAGE);
  app.get('/', async (_req, reply) => sendStaticPage(reply, page));
}
