import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { loadDeviations } from './deviations.js';
import { cmdGate, DEFAULT_POLICY_FILE, formatSummary, gate, globMatches, loadPolicy, parsePolicy, type GateResult } from './gate.js';
import { esc, gateHtml } from './gateHtml.js';
import { exactUCounts, hodgesLehmann, holm, mannWhitney, normalUpperTail, quantile } from './gateStats.js';
import { mergeResults, readResultsFile } from './merge.js';
import type { MeasurementSample, PropertyResult, ResultsFile } from './schema.js';
import { sampleHost, sampleProperty, sampleResults } from './testing/results.js';

const POLICY = loadPolicy(DEFAULT_POLICY_FILE);
const DEVIATIONS = loadDeviations(join(import.meta.dirname, 'known-deviations.json'));
const DOCUMENTED = DEVIATIONS.deviations[0]!.id;
const FIXTURES = join(import.meta.dirname, 'fixtures', 'gate');

const tmp = mkdtempSync(join(tmpdir(), 'kvmprop-gate-test-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const close = (x: number, y: number, rel = 1e-6) => expect(Math.abs(x - y)).toBeLessThanOrEqual(rel * Math.abs(y));

describe('statistics', () => {
  // Reference values: scipy 1.17.1, scipy.stats.mannwhitneyu(candidate, baseline, alternative=..., method=...).
  const b = [1.1, 2.3, 3.2, 4.8, 5.0, 6.7];
  const c = [3.9, 5.5, 7.1, 8.4, 9.0, 6.1, 10.2];

  it('Mann–Whitney U without ties: the rank sum and U by hand, the exact one-sided p', () => {
    // Pooled order: 1.1 2.3 3.2 [3.9] 4.8 5.0 [5.5] [6.1] 6.7 [7.1] [8.4] [9.0] [10.2]
    // candidate ranks 4, 7, 8, 10, 11, 12, 13: R = 65, U = 65 − 7·8/2 = 37 (of 42 pairs).
    const r = mannWhitney(b, c);
    expect(r.rankSum).toBe(65);
    expect(r.u).toBe(37);
    expect(r.method).toBe('exact');
    expect(r.ties).toBe(0);
    close(r.pGreater, 0.011072261072261072);
    close(r.pLess, 0.9930069930069929);
    close(r.cliffsDelta, (2 * 37) / 42 - 1);
  });

  it('the exact distribution of U sums to C(m+n, m) and is symmetric', () => {
    const counts = exactUCounts(7, 6);
    expect(counts.reduce((s, x) => s + x, 0)).toBe(1716);
    expect(counts).toEqual([...counts].reverse());
    expect(exactUCounts(1, 1)).toEqual([1, 1]);
    expect(exactUCounts(2, 2)).toEqual([1, 1, 2, 1, 1]);
  });

  it('with ties: mid-ranks, the tie-corrected variance and the continuity-corrected normal p', () => {
    const bt = [0, 0, 0, 1, 2, 2, 3, 5, 8, 0, 0, 1];
    const ct = [0, 1, 2, 3, 3, 5, 8, 8, 13, 21, 0, 2];
    const r = mannWhitney(bt, ct);
    expect(r.method).toBe('normal');
    expect(r.u).toBe(103.5);
    // tie groups: 0×7, 1×3, 2×4, 3×3, 5×2, 8×3 → Σ(t³ − t) = 336 + 24 + 60 + 24 + 6 + 24
    expect(r.ties).toBe(474);
    close(r.pGreater, 0.034277696869976906);
    close(r.pLess, 0.9699521967420809);
  });

  it('large zero-inflated samples (like timer lateness): a tiny p still has its digits', () => {
    const bz = [...Array(300).fill(0), ...Array(10).fill(5)];
    const cz = [...Array(200).fill(0), ...Array(50).fill(5), ...Array(50).fill(80)];
    const r = mannWhitney(bz, cz);
    expect(r.u).toBe(60750);
    close(r.pGreater, 6.487462120673507e-23, 1e-5);
  });

  it('no ties, N > 50: the normal approximation', () => {
    const bl = Array.from({ length: 60 }, (_, i) => i * 1.5);
    const cl = Array.from({ length: 45 }, (_, j) => j * 1.5 + 10.75);
    const r = mannWhitney(bl, cl);
    expect(r.method).toBe('normal');
    expect(r.u).toBe(1350);
    close(r.pGreater, 0.5012916210663337);
  });

  it('identical constant samples: no evidence either way', () => {
    const r = mannWhitney([3, 3, 3], [3, 3, 3]);
    expect([r.pGreater, r.pLess, r.cliffsDelta]).toEqual([1, 1, 0]);
  });

  it('the normal tail, quantiles (type 7), Hodges–Lehmann and Holm', () => {
    close(normalUpperTail(1.959963984540054), 0.025);
    close(normalUpperTail(-1), 0.8413447460685429);
    close(normalUpperTail(8), 6.22096057427178e-16, 1e-5);
    expect(quantile([1, 2, 3, 4], 0.5)).toBe(2.5);
    expect(quantile([10, 20, 30, 40, 50], 0.9)).toBeCloseTo(46, 10);
    expect(quantile([7], 0.99)).toBe(7);
    expect(hodgesLehmann([1, 2, 3], [11, 12, 13])).toEqual({ shift: 10, approximate: false });
    expect(holm([0.01, 0.04, 0.03, 0.2])).toEqual([0.04, 0.09, 0.09, 0.2]);
  });
});

// ---------------------------------------------------------------------------------------------

const lateness = (values: readonly number[], labels: Record<string, string | number> = { timer: 'lapic', mode: 'periodic' }): MeasurementSample[] => values.map((value) => ({ value, labels }));

/** A deterministic pseudo-random lateness sample: mostly 0, a tail of `scale` µs. */
function lateSample(n: number, seed: number, zeroShare: number, scale: number): number[] {
  let x = seed >>> 0 || 1;
  const next = () => ((x = (Math.imul(x, 1664525) + 1013904223) >>> 0) / 2 ** 32);
  return Array.from({ length: n }, () => (next() < zeroShare ? 0 : Math.round(scale * -Math.log(1 - next()) * 10) / 10));
}

const run = (properties: PropertyResult[], over: Partial<ResultsFile> = {}): ResultsFile =>
  sampleResults(properties, { host: sampleHost('6.18.44', { cpu: { model: 'AMD EPYC', vendor: 'AuthenticAMD', family: 25, modelNumber: 1, stepping: 1, flags: [] } }), ...over });

const gateOf = (b: ResultsFile, c: ResultsFile, policy = POLICY): GateResult => gate({ baseline: b, candidate: c, policy, deviations: DEVIATIONS });

describe('property transitions', () => {
  const base = run([
    sampleProperty({ id: 'timers.a' }),
    sampleProperty({ id: 'timers.b', status: 'fail', reason: 'was broken' }),
    sampleProperty({ id: 'timers.c' }),
    sampleProperty({ id: 'timers.d' }),
    sampleProperty({ id: 'timers.e' }),
    sampleProperty({ id: 'timers.f', status: 'skip', reason: 'needs pc' }),
    sampleProperty({ id: 'timers.g', status: 'known-deviation', reason: 'documented', deviation: { id: DOCUMENTED, citation: 'c' } }),
  ]);

  it('regressed, fixed, waived (said so), undocumented deviation, newly skipped, missing, new', () => {
    const cand = run(
      [
        sampleProperty({ id: 'timers.a', status: 'fail', reason: 'now broken' }),
        sampleProperty({ id: 'timers.b' }),
        sampleProperty({ id: 'timers.c', status: 'known-deviation', reason: 'a documented difference', deviation: { id: DOCUMENTED, citation: 'c' } }),
        sampleProperty({ id: 'timers.d', status: 'known-deviation', reason: 'claims a waiver', deviation: { id: 'not-in-the-file', citation: 'c' } }),
        sampleProperty({ id: 'timers.f', status: 'fail', reason: 'runs now, fails' }),
        sampleProperty({ id: 'timers.g' }),
        sampleProperty({ id: 'timers.h', status: 'skip', reason: 'new' }),
        sampleProperty({ id: 'timers.i' }),
      ].concat([sampleProperty({ id: 'timers.e', status: 'skip', reason: 'no x2apic' })]),
    );
    const g = gateOf(base, cand);
    const kinds = Object.fromEntries(g.properties.map((t) => [t.id, [t.kind, t.effect]]));
    expect(kinds).toEqual({
      'timers.a': ['regressed', 'fail'],
      'timers.b': ['fixed', 'none'],
      'timers.c': ['waived', 'none'],
      'timers.d': ['regressed', 'fail'],
      'timers.e': ['newly-skipped', 'warn'],
      'timers.f': ['new-failure', 'warn'],
      'timers.g': ['fixed', 'none'],
      'timers.h': ['new', 'none'],
      'timers.i': ['new', 'none'],
    });
    expect(g.properties.find((t) => t.id === 'timers.c')!.detail).toMatch(new RegExp(`^waived: documented deviation ${DOCUMENTED} \\(it passed on the baseline\\)`));
    expect(g.properties.find((t) => t.id === 'timers.d')!.detail).toMatch(/not-in-the-file is not in the known-deviations file/);
    expect(g.verdict).toBe('fail');
    expect(g.failures.filter((f) => f.includes('regressed'))).toHaveLength(2);
    const text = formatSummary(g);
    expect(text).toMatch(/REGRESSED\s+timers\.a {2}pass → fail: now broken/);
    expect(text).toMatch(/FIXED\s+timers\.b {2}fail → pass/);
    expect(text).toMatch(new RegExp(`WAIVED\\s+timers\\.c {2}pass → known-deviation: waived: documented deviation ${DOCUMENTED}`));
  });

  it('a property missing from the candidate fails the gate (policy: missing), and errors of the candidate run do too', () => {
    const g = gateOf(base, run(base.properties.filter((p) => p.id !== 'timers.c'), { errors: ['timers.x: vitest crashed'] }));
    expect(g.properties.find((t) => t.id === 'timers.c')).toMatchObject({ kind: 'missing', effect: 'fail' });
    expect(g.failures.some((f) => f.includes('errors of its own: timers.x: vitest crashed'))).toBe(true);
    const lenient = parsePolicy(JSON.stringify({ schema: 'kvmprop-gate-policy', version: 1, properties: { missing: 'warn', runErrors: 'warn' }, series: [] }));
    expect(gateOf(base, run(base.properties.filter((p) => p.id !== 'timers.c')), lenient).verdict).toBe('pass');
  });

  it('host findings are compared like properties', () => {
    const f = { check: 'host.vcpu-model-starts', summary: 'x', qemuMessage: 'q', commandLine: ['qemu'] };
    const g = gateOf(run([], { findings: [{ ...f, status: 'known-deviation', deviation: { id: DOCUMENTED, citation: 'c' } }] }), run([], { findings: [{ ...f, status: 'fail' }] }));
    expect(g.properties).toMatchObject([{ id: 'host.vcpu-model-starts', kind: 'regressed' }]);
  });

  it('hosts: which were compared, paired by CPU across kernels, with warnings for what matters', () => {
    const cand = run(base.properties as PropertyResult[], {
      hostId: 'bbbbbbbbbbbb',
      host: sampleHost('6.19.0', { cpu: { model: 'AMD EPYC', vendor: 'AuthenticAMD', family: 25, modelNumber: 1, stepping: 1, flags: [] }, qemu: { path: 'qemu', found: true, version: '8.2.0' } }),
      options: { ...base.options, seed: 2 },
    });
    const g = gateOf(base, cand);
    expect(g.hosts.pairs).toHaveLength(1);
    const p = g.hosts.pairs[0]!;
    // Another hostId (another kernel), the same CPU: the same machine.
    expect(p.pairedBy).toBe('cpu');
    expect(p.notes).toContain('kernel 6.18.44 → 6.19.0');
    expect(p.warnings.join('\n')).toMatch(/different QEMU: 7\.2\.22 vs 8\.2\.0/);
    expect(p.warnings.join('\n')).toMatch(/run options differ \(seed 1 vs 2\)/);
    const text = formatSummary(g);
    expect(text).toMatch(/baseline {2}aaaaaaaaaaaa {2}AMD EPYC \(AuthenticAMD 25\/1\/1\), kernel 6\.18\.44, QEMU 7\.2\.22/);
    expect(text).toMatch(/candidate bbbbbbbbbbbb .* kernel 6\.19\.0, QEMU 8\.2\.0/);
  });
});

describe('several hosts (kvmprop merge of a CI matrix)', () => {
  const cpu = (model: string, modelNumber: number) => ({ model, vendor: 'AuthenticAMD', family: 25, modelNumber, stepping: 1, flags: [] });
  const on = (hostId: string, release: string, c: ReturnType<typeof cpu>, props: PropertyResult[]) => ({
    file: `${hostId}.json`,
    results: sampleResults(props, { hostId, host: sampleHost(release, { cpu: c }) }),
  });
  const milan = cpu('AMD EPYC 7763', 1);
  const genoa = cpu('AMD EPYC 9654', 17);

  it('pairs each host with the same machine under the candidate kernel, and names the host of a regression', () => {
    const baseline = mergeResults([on('m-old', '6.18', milan, [sampleProperty({ id: 'timers.a' })]), on('g-old', '6.18', genoa, [sampleProperty({ id: 'timers.a' })])]);
    const candidate = mergeResults([
      on('g-new', '6.19', genoa, [sampleProperty({ id: 'timers.a', status: 'fail', reason: 'late on Genoa' })]),
      on('m-new', '6.19', milan, [sampleProperty({ id: 'timers.a' })]),
    ]);
    const g = gateOf(baseline, candidate);
    expect(g.hosts.pairs.map((p) => [p.baseline.hostId, p.candidate.hostId, p.pairedBy])).toEqual([['m-old', 'm-new', 'cpu'], ['g-old', 'g-new', 'cpu']]);
    expect(g.properties.map((t) => [t.hosts, t.kind])).toEqual([['m-old → m-new', 'unchanged'], ['g-old → g-new', 'regressed']]);
    expect(g.failures).toEqual(['timers.a (g-old → g-new): regressed, pass → fail: late on Genoa']);
  });

  it('a baseline host missing from the candidate fails the gate (a matrix leg that did not run)', () => {
    const baseline = mergeResults([on('m-old', '6.18', milan, [sampleProperty({ id: 'timers.a' })]), on('g-old', '6.18', genoa, [sampleProperty({ id: 'timers.a' })])]);
    const candidate = mergeResults([on('m-new', '6.19', milan, [sampleProperty({ id: 'timers.a' })])]);
    const g = gateOf(baseline, candidate);
    expect(g.verdict).toBe('fail');
    expect(g.failures[0]).toMatch(/^baseline host g-old \(AMD EPYC 9654 .*\) has no counterpart in the candidate/);
  });
});

describe('measurements', () => {
  const withLateness = (values: number[], over: Partial<ResultsFile> = {}) => run([sampleProperty({ id: 'timers.lapic.schedule', measurements: { 'lateness.lapic': lateness(values) } })], over);

  it('a clear shift of the tail is a regression, with the test, p, effect sizes and thresholds in its line', () => {
    const g = gateOf(withLateness(lateSample(400, 1, 0.9, 30)), withLateness(lateSample(400, 2, 0.6, 120)));
    expect(g.verdict).toBe('fail');
    const m = g.measurements.find((x) => x.series === 'lateness.lapic' && x.group === 'all')!;
    expect(m.verdict).toBe('regression');
    expect(m.test!.pWorse).toBeLessThan(1e-10);
    expect(m.cliffsDelta).toBeGreaterThan(0.2);
    expect(formatSummary(g)).toMatch(/REGRESSION\s+lateness\.lapic \[all\] {2}Mann–Whitney U, one-sided \(candidate larger\): U=[\d.]+, p=[0-9.e-]+( \(Holm over \d+: [0-9.e-]+\))?; Cliff's delta 0\.\d+; p90 .* thresholds: alpha 0\.01, p90 worse by ≥ \+25% and ≥ 50 µs, Cliff's delta ≥ 0\.2/);
    // The same shift the other way round is an improvement, not a failure.
    const back = gateOf(withLateness(lateSample(400, 2, 0.6, 120)), withLateness(lateSample(400, 1, 0.9, 30)));
    expect(back.verdict).toBe('pass');
    expect(back.measurements.find((x) => x.group === 'all')!.verdict).toBe('improvement');
  });

  it('significant but tiny (a quiet host, many samples): not a regression, said so', () => {
    const b = Array.from({ length: 4000 }, (_, i) => 10 + (i % 50) / 10);
    const c = b.map((x) => x + 0.6);
    const g = gateOf(withLateness(b), withLateness(c));
    const m = g.measurements.find((x) => x.group === 'all')!;
    expect(m.test!.pWorse).toBeLessThan(1e-10);
    expect(m.verdict).toBe('significant-below-threshold');
    expect(m.detail).toMatch(/p90 worse by \+4\.\d+% < \+25%/);
    expect(g.verdict).toBe('pass');
  });

  it('two samples of one distribution pass; too few samples are not tested, and said so', () => {
    expect(gateOf(withLateness(lateSample(500, 3, 0.9, 40)), withLateness(lateSample(500, 4, 0.9, 40))).verdict).toBe('pass');
    const g = gateOf(withLateness([0, 0, 1]), withLateness([900, 950, 990]));
    expect(g.verdict).toBe('pass');
    expect(g.measurements[0]).toMatchObject({ verdict: 'insufficient-samples' });
    expect(formatSummary(g)).toMatch(/not tested\s+lateness\.lapic \[all\] {2}not tested: 3 baseline and 3 candidate samples, the policy asks for 20/);
  });

  it('per label set when both sides have enough; lower-is-worse; warn-only rules; series without a rule', () => {
    const policy = parsePolicy(
      JSON.stringify({
        schema: 'kvmprop-gate-policy',
        version: 1,
        series: [
          { series: 'lateness.*', direction: 'higher-is-worse', groupBy: ['mode'], minSamples: 20 },
          { series: 'migration.mbps', direction: 'lower-is-worse', action: 'warn', quantile: 0.5 },
        ],
      }),
    );
    const samples = (periodic: number[], oneShot: number[]) => [...lateness(periodic, { mode: 'periodic' }), ...lateness(oneShot, { mode: 'one-shot' })];
    const mk = (periodic: number[], oneShot: number[], mbps: number[]) =>
      run([sampleProperty({ id: 'x.y', measurements: { 'lateness.lapic': samples(periodic, oneShot), 'migration.mbps': lateness(mbps, {}), 'rtc.windowCount': lateness([1, 2], {}) } })]);
    const g = gate({
      baseline: mk(lateSample(300, 5, 0.9, 30), lateSample(40, 6, 0.9, 30), Array.from({ length: 30 }, (_, i) => 900 + i)),
      candidate: mk(lateSample(300, 7, 0.9, 30), lateSample(40, 8, 0.2, 300), Array.from({ length: 30 }, (_, i) => 500 + i)),
      policy,
      deviations: DEVIATIONS,
    });
    const v = Object.fromEntries(g.measurements.map((m) => [`${m.series} ${m.group}`, `${m.verdict}/${m.effect}`]));
    expect(v['lateness.lapic mode=one-shot']).toBe('regression/fail');
    expect(v['lateness.lapic mode=periodic']).toBe('no-significant-change/none');
    expect(v['migration.mbps all']).toBe('regression/warn');
    expect(g.notGated).toEqual([{ series: 'rtc.windowCount', hosts: 'aaaaaaaaaaaa → aaaaaaaaaaaa', n: { baseline: 2, candidate: 2 } }]);
    expect(g.failures.some((f) => f.startsWith('lateness.lapic [mode=one-shot]'))).toBe(true);
    expect(g.warnings.some((w) => w.startsWith('migration.mbps [all]'))).toBe(true);
  });
});

describe('policy', () => {
  const ok = { schema: 'kvmprop-gate-policy', version: 1, series: [{ series: 'lateness.*', direction: 'higher-is-worse' }] };
  const bad = (over: unknown) => () => parsePolicy(JSON.stringify(over), 'p.json');

  it('the default policy parses; thresholds fall back to defaults', () => {
    expect(POLICY.series.map((r) => r.series)).toEqual(['lateness.*', 'migration.downtimeMs', 'migration.totalTimeMs', 'hostWait.*']);
    expect(parsePolicy(JSON.stringify(ok)).series[0]).toMatchObject({ alpha: 0.01, quantile: 0.9, minRelativeIncrease: 0.25, minCliffsDelta: 0.2, minSamples: 20, action: 'fail' });
    expect(globMatches('lateness.*', 'lateness.lapic')).toBe(true);
    expect(globMatches('migration.downtimeMs', 'migrationXdowntimeMs')).toBe(false);
  });

  it('rejects, naming the key: bad JSON, schema/version, unknown keys, wrong types, out-of-range values', () => {
    expect(() => parsePolicy('{', 'p.json')).toThrow(/^p\.json: not valid JSON/);
    expect(bad({ ...ok, version: 2 })).toThrow(/expected "schema": "kvmprop-gate-policy", "version": 1/);
    expect(bad({ ...ok, thresholds: {} })).toThrow(/p\.json\.thresholds is not a policy key/);
    expect(bad({ ...ok, series: [{ series: 'x', direction: 'higher-is-worse', aplha: 0.05 }] })).toThrow(/series\[0\]\.aplha is not a policy key/);
    expect(bad({ ...ok, series: [{ series: 'x', direction: 'up' }] })).toThrow(/series\[0\]\.direction must be "higher-is-worse" or "lower-is-worse"/);
    expect(bad({ ...ok, series: [{ series: 'x', direction: 'higher-is-worse', alpha: 1.5 }] })).toThrow(/series\[0\]\.alpha must be between 0 and 1/);
    expect(bad({ ...ok, defaults: { minSamples: 1 } })).toThrow(/defaults\.minSamples must be an integer ≥ 2/);
    expect(bad({ ...ok, defaults: { quantile: '0.9' } })).toThrow(/defaults\.quantile must be a number/);
    expect(bad({ ...ok, properties: { missing: 'ignore' } })).toThrow(/properties\.missing must be "fail" or "warn"/);
    expect(bad({ ...ok, series: {} })).toThrow(/series must be an array/);
    expect(bad({ ...ok, series: [{ series: 'x', direction: 'higher-is-worse', groupBy: 'mode' }] })).toThrow(/groupBy must be an array of label names/);
  });
});

describe('gate.html', () => {
  it('escapes everything that came from a results file and loads nothing', () => {
    const evil = '<script>alert(1)</script>"\'&`\u001b[31m';
    const b = run([sampleProperty({ id: `timers.${evil}` })], { hostId: `<b>host</b>` });
    const c = run([sampleProperty({ id: `timers.${evil}`, status: 'fail', reason: `guest said ${evil}` })], {
      hostId: `<b>host</b>`,
      host: sampleHost('<i>6.19</i>', { cpu: { model: '<img src=x onerror=alert(1)>', vendor: 'v', family: 1, modelNumber: 1, stepping: 1, flags: [] } }),
    });
    const html = gateHtml(gateOf(b, c));
    expect(html).not.toMatch(/<script|<img|<b>host|<i>6/);
    expect(html).toContain('&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#39;&amp;&#96;');
    expect(html).not.toContain('\u001b');
    expect(html).not.toMatch(/<[a-z]+[^>]*\s(src|href|on[a-z]+)=/i);
    expect(html).toContain("default-src 'none'");
    expect(esc('a<b>"c"')).toBe('a&lt;b&gt;&quot;c&quot;');
  });
});

describe('kvmprop gate (the command)', () => {
  const write = (name: string, x: unknown) => {
    const f = join(tmp, name);
    writeFileSync(f, typeof x === 'string' ? x : JSON.stringify(x));
    return f;
  };
  const capture = async (argv: string[]) => {
    const out: string[] = [];
    const err: string[] = [];
    const so = vi.spyOn(process.stdout, 'write').mockImplementation((s) => (out.push(String(s)), true));
    const se = vi.spyOn(process.stderr, 'write').mockImplementation((s) => (err.push(String(s)), true));
    try {
      return { code: await cmdGate(argv), out: out.join(''), err: err.join('') };
    } finally {
      so.mockRestore();
      se.mockRestore();
    }
  };
  const A = write('a.json', run([sampleProperty({ id: 'timers.a' })]));
  const B = write('b.json', run([sampleProperty({ id: 'timers.a', status: 'fail', reason: 'late' })]));

  it('exit 0 without regression, 1 with one; --out writes gate.json and gate.html', async () => {
    expect((await capture(['--baseline', A, '--candidate', A])).code).toBe(0);
    const dir = join(tmp, 'out');
    const r = await capture(['--baseline', A, '--candidate', B, '--out', dir]);
    expect(r.code).toBe(1);
    expect(r.out).toMatch(/^kvmprop gate: FAIL/);
    const g = JSON.parse(readFileSync(join(dir, 'gate.json'), 'utf8')) as GateResult;
    expect([g.schema, g.version, g.verdict]).toEqual(['kvmprop-gate', 1, 'fail']);
    expect(readFileSync(join(dir, 'gate.html'), 'utf8')).toMatch(/^<!DOCTYPE html>/);
  });

  it('exit 2 and one line: missing arguments, unreadable or corrupt results, a bad policy', async () => {
    const cases: [string[], RegExp][] = [
      [['--baseline', A], /^kvmprop: usage: kvmprop gate --baseline/],
      [['--baseline', join(tmp, 'nope.json'), '--candidate', A], /^kvmprop: cannot read .*nope\.json: ENOENT/],
      [['--baseline', write('corrupt.json', '{"schema":'), '--candidate', A], /is not valid JSON/],
      [['--baseline', write('other.json', { schema: 'x' }), '--candidate', A], /is not a kvmprop results file/],
      [['--baseline', A, '--candidate', A, '--policy', write('pol.json', { schema: 'kvmprop-gate-policy', version: 1, series: [{ series: '*', direction: 'sideways' }] })], /series\[0\]\.direction must be/],
      [['--baseline', A, '--candidate', A, '--policy', join(tmp, 'no-policy.json')], /cannot read policy/],
      [['--baseline', A, '--candidate', A, '--bogus'], /Unknown option/],
    ];
    for (const [argv, re] of cases) {
      const r = await capture(argv);
      expect(r.code, argv.join(' ')).toBe(2);
      expect(r.err).toMatch(re);
      expect(r.err.trim().split('\n')).toHaveLength(1);
    }
  });
});

describe('acceptance: real runs of this project on its development host (reports/fixtures/gate/)', () => {
  // Four timers.lapic.schedule runs, 200 cases, seed 1, made by scripts/gate-demo.mjs on a loaded
  // 2-core shared host (README.md there): normal-1..3 plain, hog with two CPU hogs pinned beside QEMU.
  const fixture = (name: string) => readResultsFile(join(FIXTURES, `${name}.json`)).results;
  const [normal1, normal2, normal3, hog] = ['normal-1', 'normal-2', 'normal-3', 'hog'].map(fixture) as [ResultsFile, ResultsFile, ResultsFile, ResultsFile];
  const lateness = (g: GateResult) => g.measurements.filter((m) => m.series === 'lateness.lapic');

  it('two normal runs against each other pass, both ways, with their lateness tested', () => {
    for (const [b, c] of [[normal2, normal3], [normal3, normal2]] as const) {
      const g = gateOf(b, c);
      expect(g.failures).toEqual([]);
      expect(g.verdict).toBe('pass');
      expect(lateness(g).filter((m) => m.test).length).toBeGreaterThan(0);
      expect(lateness(g).some((m) => m.verdict === 'regression')).toBe(false);
      // Both runs hit the same failure (a spurious LAPIC interrupt under load): listed, not a regression.
      expect(g.properties.find((t) => t.id === 'timers.lapic.schedule')!.kind).toBe('still-failing');
    }
  });

  it('the run with CPU hogs beside QEMU fails the gate on the timer lateness regression, against every normal run', () => {
    const g = gateOf(normal1, hog);
    expect(g.verdict).toBe('fail');
    // Only the measurement fails it: the property's status did not change (the documented deviation on both).
    expect(g.properties.map((t) => [t.id, t.kind])).toEqual([['host.vcpu-model-starts', 'still-waived'], ['timers.lapic.schedule', 'still-waived']]);
    const all = lateness(g).find((m) => m.group === 'all')!;
    expect(all).toMatchObject({ verdict: 'regression', effect: 'fail' });
    expect(all.test!.pWorseAdjusted).toBeLessThan(0.01);
    expect(all.cliffsDelta).toBeGreaterThanOrEqual(0.2);
    expect(all.quantile!.absoluteWorsening).toBeGreaterThanOrEqual(50);
    expect(g.failures.some((f) => f.startsWith('lateness.lapic [all]'))).toBe(true);
    for (const normal of [normal2, normal3]) {
      const h = gateOf(normal, hog);
      expect(h.verdict).toBe('fail');
      expect(lateness(h).some((m) => m.verdict === 'regression' && m.effect === 'fail')).toBe(true);
    }
    // Which hosts were compared is said: one host, one kernel, the wrapper as the QEMU binary.
    expect(g.hosts.pairs[0]!.notes.join('\n')).toMatch(/same kernel \(6\.18\.44-fc-v1045\)/);
    expect(g.hosts.pairs[0]!.notes.join('\n')).toMatch(/QEMU binary qemu-system-x86_64 → \S+qemu-hog/);
  });

  it('a normal run whose property failed (a spurious LAPIC interrupt) against one where it passed: the property regression, not the load', () => {
    const g = gateOf(normal1, normal2);
    expect(g.verdict).toBe('fail');
    expect(g.properties.find((t) => t.id === 'timers.lapic.schedule')).toMatchObject({ kind: 'regressed', baseline: 'known-deviation', candidate: 'fail' });
    expect(g.failures.find((f) => f.startsWith('timers.lapic.schedule'))).toMatch(/one more than the \d+ expiries the schedule allows/);
    // The busier host's lateness is significant but below the policy's effect.
    expect(lateness(g).some((m) => m.verdict === 'significant-below-threshold')).toBe(true);
    expect(lateness(g).some((m) => m.verdict === 'regression')).toBe(false);
  });
});
