/**
 * Headless Chromium for the page tests: Debian's `chromium` (installed by
 * scripts/ensure-chromium.sh when missing) driven by playwright-core. Screenshots and other
 * artifacts go to test-artifacts/ (git-ignored), kept after the run for inspection.
 *
 *   const browser = await launchBrowser();
 *   after(() => browser.close());
 *   const page = await browser.newPage();
 *   await page.screenshot({ path: artifactPath('dashboard.png') });
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import { repoRoot } from '../../src/config.ts';

export const ARTIFACTS_DIR = path.join(repoRoot, 'test-artifacts');

/** The flags the page tests run Chromium with (no sandbox: tests run as root in CI boxes). */
export const CHROMIUM_FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'];

/** Path of the chromium binary, installing it first (apt-get) when missing. */
export function chromiumPath(): string {
  const find = () => {
    try {
      return execFileSync('sh', ['-c', 'command -v chromium'], { encoding: 'utf8' }).trim();
    } catch {
      return '';
    }
  };
  let found = find();
  if (!found) {
    execFileSync('sh', [path.join(repoRoot, 'scripts', 'ensure-chromium.sh')], { stdio: 'inherit' });
    found = find();
  }
  if (!found) throw new Error('chromium is not installed (run scripts/ensure-chromium.sh)');
  return found;
}

/** Launches headless Chromium; close it in `after`. */
export async function launchBrowser(): Promise<Browser> {
  return chromium.launch({ executablePath: chromiumPath(), headless: true, args: CHROMIUM_FLAGS });
}

/** A path under test-artifacts/ (created), e.g. for screenshots. */
export function artifactPath(name: string): string {
  fs.mkdirSync(ARTIFACTS_DIR, { recursive: true });
  return path.join(ARTIFACTS_DIR, name);
}

/**
 * Collects what the page reports as broken (uncaught exceptions, console errors such as
 * Content-Security-Policy violations); assert it is empty at the end of a test.
 */
export function pageErrors(page: Page): string[] {
  const errors: string[] = [];
  page.on('pageerror', (err) => errors.push(`pageerror: ${err.message}`));
  page.on('console', (msg) => {
    if (msg.type() === 'error') errors.push(`console: ${msg.text()}`);
  });
  return errors;
}
