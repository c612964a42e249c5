import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { cmdReport, decades, esc, GENERATOR, plotsOf, renderReport, runsOf, showJson, verdictOf, type ReportInput } from './html.js';
import { readResultsFile } from './merge.js';
import type { PropertyResult, ResultsFile } from './schema.js';
import { hostileFixture, REPORT_FIXTURES } from './testing/reportFixture.js';

const tmp = mkdtempSync(join(tmpdir(), 'kvmprop-html-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const fixtures = (): ReportInput[] => REPORT_FIXTURES.map((f) => readResultsFile(f));

/** Run cmdReport with stderr captured. */
async function report(argv: string[]): Promise<{ code: number; stderr: string }> {
  const lines: string[] = [];
  const spy = vi.spyOn(process.stderr, 'write').mockImplementation((s: string | Uint8Array) => (lines.push(String(s)), true));
  try {
    return { code: await cmdReport(argv), stderr: lines.join('') };
  } finally {
    spy.mockRestore();
  }
}

describe('the HTML report of the real results fixture', () => {
  let html = '';
  beforeAll(async () => {
    html = await renderReport(fixtures(), { generatedAt: '2026-12-01T00:00:00.000Z' });
  });

  it('gives the verdict: the mutant run failed', () => {
    expect(html).toMatch(/<header class="verdict fail"><h1>kvmprop: FAIL<\/h1>/);
    expect(html).toContain(`<meta name="generator" content="${GENERATOR}">`);
  });

  it('has a matrix column per configuration, a mutant run apart from the real one', () => {
    const runs = runsOf(fixtures());
    expect(runs.map((r) => r.config).sort()).toEqual(['microvm · kvm · irqchip on', 'microvm · tcg · irqchip on', 'microvm · tcg · irqchip on · mutant nested-model-gp-as-ud']);
    const kvm = runs.find((r) => r.config === 'microvm · kvm · irqchip on')!;
    expect(new Set(kvm.properties.map((p) => p.family))).toEqual(new Set(['timers', 'migration', 'leaks']));
    for (const f of ['leaks', 'migration', 'nested', 'timers']) expect(html).toContain(`<tr><th>${f}</th>`);
  });

  it('plots timer lateness, the RTC count against the model over time, migration downtime and bytes', async () => {
    const ids = plotsOf(runsOf(fixtures())).map((p) => p.id);
    expect(ids).toEqual(expect.arrayContaining(['lateness-lapic', 'lateness-rtc', 'rtc-timers-rtc-periodic', 'rtc-timers-rtc-slew', 'migration-downtime', 'migration-bytes']));
    for (const id of ids) expect(html).toMatch(new RegExp(`<figure id="${id}" class="plot"><svg[^>]*viewBox="0 0 [\\d.]+ [\\d.]+"`));
  });

  it('shows the counterexample: shrunk workload, expected against observed, and the replay command', () => {
    const cx = html.slice(html.indexOf('<section id="counterexamples">'));
    expect(cx).toContain('nested.single-level.delivery');
    expect(cx).toContain('mov-from-cr-unprivileged');
    expect(cx).toMatch(/Expected \(model\)<\/h4><pre>\{\n {2}&quot;vector&quot;: 6/);
    expect(cx).toMatch(/<h4>Replay<\/h4><pre class="wrap"><code>npx kvmprop replay /);
  });

  it('shows the host fingerprint', () => {
    const host = JSON.parse(readFileSync(REPORT_FIXTURES[0]!, 'utf8')) as ResultsFile;
    expect(html).toContain(esc(host.host.kernel.release));
    expect(html).toContain(esc(host.host.qemu.version));
  });

  it('has no script and loads nothing', () => {
    expect(html).not.toMatch(/<script/i);
    expect(html).not.toMatch(/\b(src|href)="(?!#)/);
  });
});

describe('text from results and counterexamples', () => {
  it('renders inert: <script>, </style>, quotes and escape sequences in a reason, a name, a label and counterexample data', async () => {
    const file = hostileFixture(join(tmp, 'hostile'));
    const html = await renderReport([readResultsFile(file)], { generatedAt: 'x' });
    expect(html).not.toMatch(/<script/i);
    expect(html).not.toMatch(/<img/i);
    expect(html).not.toMatch(/<\/?pre>\s*<b>/);
    expect(html.match(/<\/style>/g)).toHaveLength(1);
    expect(html.match(/<style>/g)).toHaveLength(1);
    expect(html).not.toContain('\x1b');
    expect(html).not.toContain('\u0007');
    // What was written is still there to read, escaped.
    expect(html).toContain('&lt;/style&gt;&lt;script&gt;alert(&quot;reason&quot;)&lt;/script&gt;');
    expect(html).toContain('&lt;img src=x onerror=alert(1)&gt;');
    expect(html).toContain('&lt;/pre&gt;&lt;script&gt;alert(&#39;observed&#39;)&lt;/script&gt;');
    expect(html).toContain('guest serial &lt;script&gt;alert(2)&lt;/script&gt;');
    // vega escapes the label it draws in the SVG.
    expect(html).toMatch(/&lt;script&gt;mode/);
  });

  it('esc escapes every markup character and drops control characters; showJson shows bigints and bytes', () => {
    expect(esc(`<a href="x" title='y'>&\x1b[31m\x00`)).toBe('&lt;a href=&quot;x&quot; title=&#39;y&#39;&gt;&amp;');
    expect(showJson({ a: 255n, b: Uint8Array.of(1, 0xab) })).toBe('{\n  "a": "0xff",\n  "b": "01 ab"\n}');
    expect(showJson('x'.repeat(50), 10)).toMatch(/^"xxxxxxxxx\n… \(42 more characters/);
  });

  it('decade ticks reach the largest value', () => {
    expect(decades(0)).toEqual([0, 1]);
    expect(decades(1)).toEqual([0, 1]);
    expect(decades(42)).toEqual([0, 1, 10, 100]);
  });
});

describe('the verdict', () => {
  const base = JSON.parse(readFileSync(REPORT_FIXTURES[0]!, 'utf8')) as ResultsFile;
  const withProps = (properties: PropertyResult[], over: Partial<ResultsFile> = {}): ReportInput => ({ file: 'x/results.json', results: { ...base, properties, findings: [], errors: [], ...over } });
  const p = (status: PropertyResult['status']): PropertyResult => ({ id: `t.${status}`, family: 't', statement: 's', status, reason: 'r', numRuns: 1, seed: 1, durationMs: 1, metrics: {} });
  it('passes with known deviations, fails on a failure, a failed host check or a run error', () => {
    expect(verdictOf(runsOf([withProps([p('pass'), p('known-deviation'), p('skip')])])).status).toBe('pass');
    expect(verdictOf(runsOf([withProps([p('pass'), p('fail')])])).status).toBe('fail');
    expect(verdictOf(runsOf([withProps([p('pass')], { errors: ['vitest exited with status 3'] })])).status).toBe('fail');
    expect(verdictOf(runsOf([withProps([p('pass')], { findings: [{ check: 'c', status: 'fail', summary: 's', qemuMessage: 'q', commandLine: [] }] })])).status).toBe('fail');
    expect(verdictOf(runsOf([withProps([])])).status).toBe('empty');
  });
});

describe('kvmprop report', () => {
  it('writes DIR/index.html and says so on one line', async () => {
    const out = join(tmp, 'out');
    const r = await report([...REPORT_FIXTURES, '--out', out]);
    expect(r).toEqual({ code: 0, stderr: `kvmprop: HTML report of ${fixtures().reduce((n, i) => n + i.results.properties.length, 0)} results from ${REPORT_FIXTURES.length} file(s) → ${join(out, 'index.html')}\n` });
    expect(readFileSync(join(out, 'index.html'), 'utf8')).toMatch(/^<!doctype html>/);
    // Its own page it replaces.
    expect((await report([REPORT_FIXTURES[0]!, '--out', out])).code).toBe(0);
  });

  it('ends with one clear line and status 2 on a missing, invalid or unreadable results file, or bad arguments', async () => {
    writeFileSync(join(tmp, 'bad.json'), '{"schema":"kvmprop-results"}');
    writeFileSync(join(tmp, 'broken.json'), '{');
    const cases: [string[], RegExp][] = [
      [[join(tmp, 'nope.json'), '--out', join(tmp, 'o1')], /^kvmprop: cannot read .*nope\.json: ENOENT\n$/],
      [[join(tmp, 'bad.json'), '--out', join(tmp, 'o1')], /^kvmprop: .*bad\.json is not a kvmprop results file: version is undefined, expected 2 \(and \d+ more\)\n$/],
      [[join(tmp, 'broken.json'), '--out', join(tmp, 'o1')], /^kvmprop: .*broken\.json is not valid JSON: [^\n]*\n$/],
      [[REPORT_FIXTURES[0]!], /^kvmprop: usage: kvmprop report RESULTS\.\.\. --out DIR\n$/],
      [['--out', join(tmp, 'o1')], /^kvmprop: usage: kvmprop report RESULTS\.\.\. --out DIR\n$/],
      [[REPORT_FIXTURES[0]!, '--out', join(tmp, 'o1'), '--bogus'], /^kvmprop: Unknown option '--bogus'[^\n]*\n$/],
    ];
    for (const [argv, line] of cases) {
      const r = await report(argv);
      expect(r.code, argv.join(' ')).toBe(2);
      expect(r.stderr).toMatch(line);
    }
  });

  it('never overwrites an index.html it did not write', async () => {
    const dir = join(tmp, 'foreign');
    mkdirSync(dir);
    writeFileSync(join(dir, 'index.html'), '<p>mine</p>');
    const r = await report([REPORT_FIXTURES[0]!, '--out', dir]);
    expect(r).toEqual({ code: 2, stderr: `kvmprop: --out ${dir}: ${join(dir, 'index.html')} exists and is not a kvmprop report; choose another directory\n` });
    expect(readFileSync(join(dir, 'index.html'), 'utf8')).toBe('<p>mine</p>');
  });

  it('reads a counterexample relative to its own results file, and says when it cannot', async () => {
    const copy = join(tmp, 'moved');
    cpSync(join(REPORT_FIXTURES.find((f) => f.includes('nested-mutant'))!, '..'), copy, { recursive: true });
    rmSync(join(copy, 'counterexamples'), { recursive: true });
    const html = await renderReport([readResultsFile(copy)], { generatedAt: 'x' });
    expect(html).toMatch(/The counterexample could not be read:<\/strong> cannot read .*nested\.single-level\.delivery\.json: ENOENT/);
  });
});
