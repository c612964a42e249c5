/**
 * The HTML report in a real browser: Debian's chromium (installed by scripts/setup.mjs), driven by
 * playwright-core, opens the report of the real results fixture through file:// (no server, no
 * network), at a phone's viewport and a wide screen's. No console error and no page error; every
 * plot's SVG is drawn with a size and has marks; at phone width the page does not scroll sideways
 * (wide tables and code scroll inside their own boxes). A hostile report (every text field tries to
 * inject markup) runs no script and opens no dialog. The screenshots are kept in
 * .scratch/report-browser/ (gitignored), their paths printed.
 */
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PROJECT_ROOT } from '../harness/guest/build.js';
import { plotsOf, renderReport, runsOf } from './html.js';
import { readResultsFile } from './merge.js';
import { hostileFixture, REPORT_FIXTURES } from './testing/reportFixture.js';

const CHROMIUM = '/usr/bin/chromium';
const SHOTS = join(PROJECT_ROOT, '.scratch', 'report-browser');
const VIEWPORTS = [
  { name: 'phone', width: 390, height: 844 },
  { name: 'wide', width: 1600, height: 1000 },
] as const;

const tmp = mkdtempSync(join(tmpdir(), 'kvmprop-html-browser-'));
let browser: Browser | undefined;
let report = '';
let hostile = '';
let plots = 0;

beforeAll(async () => {
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: the browser test needs Debian's chromium; run \`node scripts/setup.mjs\` as root (or \`apt-get install -y --no-install-recommends chromium\`)`);
  const inputs = REPORT_FIXTURES.map((f) => readResultsFile(f));
  plots = plotsOf(runsOf(inputs)).length;
  report = join(tmp, 'report', 'index.html');
  mkdirSync(join(tmp, 'report'));
  writeFileSync(report, await renderReport(inputs));
  hostile = join(tmp, 'hostile', 'index.html');
  writeFileSync(hostile, await renderReport([readResultsFile(hostileFixture(join(tmp, 'hostile')))]));
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'], timeout: 30_000 });
  mkdirSync(SHOTS, { recursive: true });
}, 60_000);

afterAll(async () => {
  await browser?.close();
  rmSync(tmp, { recursive: true, force: true });
});

// Run in the page (as source text: this project's TypeScript has no DOM types).
/** Each plot: its SVG's drawn size, how many marks it drew, and whether it sticks out of the viewport. */
const FIGURES = `[...document.querySelectorAll('figure.plot')].map((f) => {
  const svg = f.querySelector('svg');
  const box = svg && svg.getBoundingClientRect();
  return {
    id: f.id,
    width: box ? box.width : 0,
    height: box ? box.height : 0,
    marks: svg ? svg.querySelectorAll('g[class*="mark-"][class*="role-mark"] > path, g[class*="mark-"][class*="role-mark"] > line, g[class*="mark-"][class*="role-mark"] > rect').length : 0,
    overflows: box ? box.right > document.documentElement.clientWidth + 1 : true,
  };
})`;
/** How wide the page and its main content are against the viewport. */
const WIDTHS = `({ doc: document.documentElement.scrollWidth, main: document.querySelector('main').scrollWidth, viewport: document.documentElement.clientWidth })`;

interface Opened {
  readonly page: Page;
  readonly problems: string[];
  readonly dialogs: string[];
  close(): Promise<void>;
}

async function open(file: string, viewport: { width: number; height: number }): Promise<Opened> {
  const context = await browser!.newContext({ viewport, offline: true });
  const page = await context.newPage();
  const problems: string[] = [];
  const dialogs: string[] = [];
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') problems.push(`console ${m.type()}: ${m.text()}`);
  });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('requestfailed', (r) => problems.push(`request failed: ${r.url()}`));
  page.on('request', (r) => {
    if (r.url() !== pathToFileURL(file).href) problems.push(`request: ${r.url()}`);
  });
  page.on('dialog', (d) => {
    dialogs.push(d.message());
    void d.dismiss();
  });
  await page.goto(pathToFileURL(file).href, { waitUntil: 'load' });
  return { page, problems, dialogs, close: () => context.close() };
}

describe("the HTML report in Debian's chromium", () => {
  for (const vp of VIEWPORTS) {
    it(`${vp.name} (${vp.width}×${vp.height}): no errors, every plot drawn, no sideways scrolling`, async () => {
      const o = await open(report, vp);
      try {
        const figures = (await o.page.evaluate(FIGURES)) as { id: string; width: number; height: number; marks: number; overflows: boolean }[];
        expect(figures.length, 'a figure per plot').toBe(plots);
        expect(plots).toBeGreaterThanOrEqual(6);
        for (const f of figures) {
          expect(f.width, `${f.id} width`).toBeGreaterThan(100);
          expect(f.height, `${f.id} height`).toBeGreaterThan(60);
          expect(f.marks, `${f.id} marks`).toBeGreaterThan(0);
          expect(f.overflows, `${f.id} fits the viewport`).toBe(false);
        }
        const widths = (await o.page.evaluate(WIDTHS)) as { doc: number; main: number; viewport: number };
        expect(widths.doc, 'the page scrolls sideways').toBeLessThanOrEqual(widths.viewport);
        expect(widths.main, 'main is wider than the viewport').toBeLessThanOrEqual(widths.viewport);
        expect(await o.page.locator('header.verdict h1').textContent()).toBe('kvmprop: FAIL');
        const shot = join(SHOTS, `report-${vp.name}.png`);
        // The whole page at wide width; the first screen at phone width (its whole page is ~8000 px tall).
        await o.page.screenshot({ path: shot, fullPage: vp.name === 'wide' });
        process.stdout.write(`report screenshot (${vp.name}): ${shot}\n`);
        expect(o.problems).toEqual([]);
        expect(o.dialogs).toEqual([]);
      } finally {
        await o.close();
      }
    }, 30_000);
  }

  it('a hostile report runs nothing: no script element, no dialog, no error', async () => {
    const o = await open(hostile, VIEWPORTS[1]);
    try {
      const dom = await o.page.evaluate(`({ scripts: document.querySelectorAll('script').length, imgs: document.querySelectorAll('img').length, bold: document.querySelectorAll('b').length, styles: document.querySelectorAll('style').length })`);
      expect(dom).toEqual({ scripts: 0, imgs: 0, bold: 0, styles: 1 });
      expect(await o.page.locator('body').textContent()).toContain('</style><script>alert("reason")</script>');
      expect(o.dialogs).toEqual([]);
      expect(o.problems).toEqual([]);
    } finally {
      await o.close();
    }
  }, 30_000);
});
