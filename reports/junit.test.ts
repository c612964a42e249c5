import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it, vi } from 'vitest';
import type { HostFingerprint } from '../harness/fingerprint.js';
import { cmdExport, kcidbPath, parseXml, toJunit, toKcidb, XmlError, type XmlElement } from './junit.js';
import { cleanLine, cleanText } from './ktap.js';
import { mergeResults } from './merge.js';
import type { HostFinding, PropertyResult, ResultsFile } from './schema.js';
import { sampleProperty, sampleResults } from './testing/results.js';
import { importKselftest, importKutTap } from './tapImport.js';

const HOST = {
  schema: 1,
  collectedAt: '2026-12-01T00:00:00.000Z',
  kernel: { release: '6.18.44-fc-v657', version: 'Linux version 6.18.44-fc-v657' },
  cpu: { model: 'AMD EPYC', vendor: 'AuthenticAMD', flags: [] },
  kvm: { modules: [{ name: 'kvm_pvm', parameters: { pvm_native: 'Y' } }] },
  qemu: { path: 'qemu', found: true, version: '7.2.22' },
} as unknown as HostFingerprint;

const prop = (over: Partial<PropertyResult> & Pick<PropertyResult, 'id'>): PropertyResult => sampleProperty({ seed: 7, durationMs: 1500, ...over });

const results = (properties: PropertyResult[], over: Partial<ResultsFile> = {}): ResultsFile =>
  sampleResults(properties, {
    options: { families: [...new Set(properties.map((p) => p.family))], runs: 10, seed: 7, machine: 'microvm', accel: 'kvm', cpu: 'host,-arch-capabilities', cpuRequested: 'host', qemu: 'qemu-system-x86_64', qemuArgs: [] },
    host: HOST,
    hostId: '8eda49a4ab27',
    ...over,
  });

const FAIL_FINDING: HostFinding = {
  check: 'host.machine-starts',
  status: 'fail',
  summary: 'the configured machine does not start',
  qemuMessage: 'qemu-system-x86_64: -device pvpanic: <ioport> "in use" & gone',
  commandLine: ['qemu-system-x86_64', '-device', 'pvpanic'],
};
const KD_FINDING: HostFinding = {
  check: 'host.vcpu-model-starts',
  status: 'known-deviation',
  summary: '-cpu host cannot start on this host',
  qemuMessage: 'error: failed to set MSR 0x10a to 0x69',
  commandLine: ['qemu-system-x86_64', '-cpu', 'host'],
  deviation: { id: 'pvm-amd-refuses-arch-capabilities', citation: 'api.rst' },
};

const SAMPLE = results(
  [
    prop({ id: 'leaks.cpuid.no-host-pattern' }),
    prop({
      id: 'leaks.cpuid.deterministic',
      status: 'fail',
      reason: 'CPUID(0x8000001e).EAX is 0x0 in VM B <96 MiB>, 0x1 in VM A & "64 MiB"',
      rule: 'the same leaf gives the same answer',
      path: '4:1:3',
      counterexample: 'counterexamples/leaks.cpuid.deterministic.json',
      replay: 'npx kvmprop replay results/counterexamples/leaks.cpuid.deterministic.json',
    }),
    prop({ id: 'leaks.cpuid.cpl-invariant', status: 'known-deviation', reason: '1120 difference(s) covered by known deviation pvm-cpl3', deviation: { id: 'pvm-cpl3-cpuid-not-intercepted', citation: 'AMD APM Vol. 3, CPUID' } }),
    prop({ id: 'leaks.device.stable', status: 'skip', reason: 'needs -M pc', numRuns: 0 }),
    prop({ id: 'timers.lapic.never-early', status: 'fail', rule: 'timeout', reason: 'the case did not finish in 60 s' }),
  ],
  { findings: [KD_FINDING, FAIL_FINDING], errors: ['migration.x: no result recorded'] },
);

const child = (e: XmlElement, name: string) => e.children.filter((c) => c.name === name);
const props = (e: XmlElement): Record<string, string> => Object.fromEntries((child(e, 'properties')[0]?.children ?? []).map((p) => [p.attrs.name!, p.attrs.value!]));

describe('toJunit', () => {
  const xml = toJunit(SAMPLE);
  const root = parseXml(xml);
  const suites = child(root, 'testsuite');

  it('is well-formed, one testsuite per family, host findings and run errors apart', () => {
    expect(xml.startsWith('<?xml version="1.0" encoding="UTF-8"?>\n<testsuites ')).toBe(true);
    expect(root.name).toBe('testsuites');
    expect(root.attrs).toMatchObject({ name: 'kvmprop', tests: '8', failures: '2', errors: '2', skipped: '1', timestamp: '2026-12-01T10:00:00.000Z' });
    expect(suites.map((s) => [s.attrs.name, s.attrs.tests, s.attrs.failures, s.attrs.errors, s.attrs.skipped, s.attrs.hostname])).toEqual([
      ['leaks', '4', '1', '0', '1', '8eda49a4ab27'],
      ['timers', '1', '0', '1', '0', '8eda49a4ab27'],
      ['host', '2', '1', '0', '0', '8eda49a4ab27'],
      ['run', '1', '0', '1', '0', '8eda49a4ab27'],
    ]);
    expect(props(suites[0]!)).toMatchObject({ hostId: '8eda49a4ab27', kernel: '6.18.44-fc-v657', qemu: '7.2.22', cpu: 'host,-arch-capabilities', cpuRequested: 'host', seed: '7' });
  });

  it('names testcases by property id, classname the family, no seed in names', () => {
    const cases = suites.flatMap((s) => child(s, 'testcase'));
    expect(cases.map((c) => [c.attrs.classname, c.attrs.name])).toEqual([
      ['leaks', 'leaks.cpuid.no-host-pattern'],
      ['leaks', 'leaks.cpuid.deterministic'],
      ['leaks', 'leaks.cpuid.cpl-invariant'],
      ['leaks', 'leaks.device.stable'],
      ['timers', 'timers.lapic.never-early'],
      ['host', 'host.vcpu-model-starts'],
      ['host', 'host.machine-starts'],
      ['run', 'kvmprop.run'],
    ]);
    expect(cases[0]!.attrs.time).toBe('1.500');
    const other = parseXml(toJunit({ ...SAMPLE, options: { ...SAMPLE.options, seed: 99 }, properties: SAMPLE.properties.map((p) => ({ ...p, seed: 99 })) }));
    const names = (e: XmlElement) => child(e, 'testsuite').flatMap((s) => [s.attrs.name, ...child(s, 'testcase').map((c) => `${c.attrs.classname} ${c.attrs.name}`)]);
    expect(names(other)).toEqual(names(root));
    expect(names(root).join(' ')).not.toMatch(/\b7\b/);
  });

  it('a failure carries the one-line reason, the rule, the replay and the counterexample; a timeout is an error', () => {
    const [leaks, timers] = suites;
    const f = child(child(leaks!, 'testcase')[1]!, 'failure')[0]!;
    expect(f.attrs).toEqual({ message: 'CPUID(0x8000001e).EAX is 0x0 in VM B <96 MiB>, 0x1 in VM A & "64 MiB"', type: 'the same leaf gives the same answer' });
    expect(f.text).toBe(
      [
        'reason: CPUID(0x8000001e).EAX is 0x0 in VM B <96 MiB>, 0x1 in VM A & "64 MiB"',
        'rule: the same leaf gives the same answer',
        'replay: npx kvmprop replay results/counterexamples/leaks.cpuid.deterministic.json',
        'counterexample: counterexamples/leaks.cpuid.deterministic.json',
        'seed: 7, path: 4:1:3',
      ].join('\n'),
    );
    expect(xml).toContain('&lt;96 MiB&gt;, 0x1 in VM A &amp; &quot;64 MiB&quot;');
    const t = child(timers!, 'testcase')[0]!;
    expect(child(t, 'error')[0]!.attrs).toEqual({ message: 'the case did not finish in 60 s', type: 'timeout' });
    expect(child(t, 'failure')).toEqual([]);
  });

  it('a known deviation passes with a known-deviation property and an explanation; a skip has its reason', () => {
    const kd = child(suites[0]!, 'testcase')[2]!;
    expect(kd.children.map((c) => c.name)).toEqual(['properties', 'system-out']);
    expect(props(kd)).toMatchObject({ 'known-deviation': 'pvm-cpl3-cpuid-not-intercepted', citation: 'AMD APM Vol. 3, CPUID', seed: '7', numRuns: '10', 'metric.vms': '2' });
    expect(child(kd, 'system-out')[0]!.text).toContain('waived: 1120 difference(s) covered by known deviation pvm-cpl3');
    const skip = child(suites[0]!, 'testcase')[3]!;
    expect(child(skip, 'skipped')[0]!.attrs).toEqual({ message: 'needs -M pc' });
    const [hostKd, hostFail] = child(suites[2]!, 'testcase');
    expect(props(hostKd!)['known-deviation']).toBe('pvm-amd-refuses-arch-capabilities');
    expect(child(hostFail!, 'failure')[0]!.text).toContain('qemu: qemu-system-x86_64: -device pvpanic: <ioport> "in use" & gone\ncommand line: qemu-system-x86_64 -device pvpanic');
  });

  it('strips control characters and ANSI sequences from untrusted text and escapes the rest', () => {
    const nasty = 'serial: \x1b[31mPANIC\x1b[0m\x00\x01\x08\x0b\x0c\x1f\x7f </testcase><x a="1"/> &amp; ]]> \ud800 \ufffe ok\r\nnext';
    const r = results([prop({ id: 'leaks.a<b>&"c"', statement: nasty, status: 'fail', reason: nasty, rule: nasty })]);
    const x = toJunit(r);
    const tc = child(child(parseXml(x), 'testsuite')[0]!, 'testcase')[0]!;
    expect(tc.attrs.name).toBe('leaks.a<b>&"c"');
    const f = child(tc, 'failure')[0]!;
    expect(f.attrs.message).toBe(cleanLine(nasty, 1000));
    expect(f.attrs.message).toBe('serial: PANIC </testcase><x a="1"/> &amp; ]]> ok next');
    expect(f.text.split('\n')[0]).toBe(`reason: ${cleanText(nasty).split('\n')[0]}`);
    expect(x).not.toMatch(/[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]/);
  });

  it('is well-formed for any text in any field (property-based)', () => {
    const s = fc.string({ unit: 'binary', maxLength: 60 });
    fc.assert(
      fc.property(fc.array(fc.record({ id: s, reason: s, statement: s, rule: s, status: fc.constantFrom('pass', 'fail', 'known-deviation', 'skip') }), { maxLength: 8 }), s, (xs, err) => {
        const r = results(
          xs.map((x, i) => prop({ id: `f.${x.id}.${i}`, family: 'f', statement: x.statement, status: x.status as PropertyResult['status'], reason: x.reason, rule: x.rule })),
          { errors: err ? [err] : [], findings: [{ ...FAIL_FINDING, qemuMessage: err }] },
        );
        const root = parseXml(toJunit(r));
        const cases = child(root, 'testsuite').flatMap((t) => child(t, 'testcase'));
        expect(cases.length).toBe(xs.length + 1 + (err ? 1 : 0));
        const first = cases[0];
        if (xs[0] && first) expect(first.attrs.name).toBe(cleanLine(`f.${xs[0].id}.0`));
      }),
      { numRuns: 300 },
    );
  });

  it('splits suites by host in a merged file', () => {
    const b = results([prop({ id: 'leaks.cpuid.no-host-pattern', status: 'fail', reason: 'x' })], { hostId: 'bbbbbbbbbbbb' });
    const root = parseXml(toJunit(mergeResults([{ file: 'a.json', results: SAMPLE }, { file: 'b.json', results: b }])));
    expect(child(root, 'testsuite').map((s) => [s.attrs.name, s.attrs.hostname])).toEqual([
      ['leaks@8eda49a4ab27', '8eda49a4ab27'],
      ['timers@8eda49a4ab27', '8eda49a4ab27'],
      ['host@8eda49a4ab27', '8eda49a4ab27'],
      ['leaks@bbbbbbbbbbbb', 'bbbbbbbbbbbb'],
      ['run', '8eda49a4ab27+bbbbbbbbbbbb'],
    ]);
  });
});

describe('parseXml', () => {
  it('accepts what it should and returns the tree with entities decoded', () => {
    const e = parseXml('<?xml version="1.0"?>\n<!-- c --><a x=\'1\' y="&lt;&#65;&#x42;&amp;"><b/>t&gt;<![CDATA[<raw>]]></a>\n');
    expect(e).toEqual({ name: 'a', attrs: { x: '1', y: '<AB&' }, children: [{ name: 'b', attrs: {}, children: [], text: '' }], text: 't><raw>' });
  });

  it.each([
    ['<a><b></a>', /<\/a> closes <b>/],
    ['<a>', /unclosed <a>/],
    ['<a></a><b/>', /content after the root element/],
    ['<a>x & y</a>', /'&' that starts no entity reference|unknown entity/],
    ['<a>&nbsp;</a>', /unknown entity &nbsp;/],
    ['<a>1 < 2</a>', /'<' that starts no tag/],
    ['<a x="1" x="2"/>', /attribute x repeated/],
    ['<a x=1/>', /malformed attribute/],
    ['<a>\x01</a>', /U\+0001 is not allowed/],
    ['<a>&#1;</a>', /not an XML 1.0 character/],
    ['<a x="<"/>', /malformed attribute|'<' in text/],
    ['text', /text before the root element/],
    ['', /no root element/],
    ['<!DOCTYPE a><a/>', /DOCTYPE/],
  ])('rejects %j', (text, message) => {
    expect(() => parseXml(text)).toThrow(XmlError);
    expect(() => parseXml(text)).toThrow(message);
  });
});

const KUT_FIXTURE = join(import.meta.dirname, 'fixtures', 'kvm-unit-tests-x86.tap');

describe('the kvm-unit-tests fixture as JUnit and KCIDB', () => {
  const r = importKutTap(readFileSync(KUT_FIXTURE, 'utf8'), { source: 'kvm-unit-tests-x86.tap' });
  it('JUnit: 4,120 testcases, 45 not passing (24 failures, 21 errors: 19 timeouts, 2 aborted), 11 skipped', () => {
    const root = parseXml(toJunit(r));
    expect(root.attrs).toMatchObject({ tests: '4120', failures: '24', errors: '21', skipped: '11' });
    expect(child(root, 'testsuite').map((s) => s.attrs.name)).toEqual(['kvm-unit-tests']);
  });
  it('KCIDB: the same counts by status, timeouts as ERROR', () => {
    const k = toKcidb(r);
    expect(checkKcidb(k)).toEqual([]);
    const by = (s: string) => k.tests.filter((t) => t.status === s).length;
    expect([by('PASS'), by('FAIL'), by('ERROR'), by('SKIP')]).toEqual([4064, 24, 21, 11]);
    expect(k.tests.find((t) => t.path === 'kvmprop.kvm-unit-tests.x2apic')).toMatchObject({ status: 'ERROR', misc: { rule: 'timeout' } });
  });
});

/** The parts of KCIDB's v4.5 JSON schema this export uses: required fields, patterns, enums, known keys. */
function checkKcidb(k: ReturnType<typeof toKcidb>): string[] {
  const errs: string[] = [];
  const ORIGIN = /^[a-z0-9_]+$/;
  const ID = /^[a-z0-9_]+:.*$/;
  const keys = {
    checkout: ['id', 'origin', 'tree_name', 'git_repository_url', 'git_commit_hash', 'git_commit_name', 'git_repository_branch', 'patchset_files', 'patchset_hash', 'message_id', 'comment', 'start_time', 'contacts', 'log_url', 'log_excerpt', 'valid', 'misc'],
    build: ['checkout_id', 'id', 'origin', 'comment', 'start_time', 'duration', 'architecture', 'command', 'compiler', 'input_files', 'output_files', 'config_name', 'config_url', 'log_url', 'log_excerpt', 'valid', 'misc'],
    test: ['build_id', 'id', 'origin', 'environment', 'path', 'comment', 'log_url', 'log_excerpt', 'status', 'number', 'waived', 'start_time', 'duration', 'output_files', 'misc'],
  };
  if (JSON.stringify(k.version) !== '{"major":4,"minor":5}') errs.push('version');
  const check = (kind: keyof typeof keys, o: Record<string, unknown>, required: string[]) => {
    for (const r of required) if (typeof o[r] !== 'string') errs.push(`${kind} ${String(o.id)}: ${r} missing`);
    for (const key of Object.keys(o)) if (!keys[kind].includes(key)) errs.push(`${kind} ${String(o.id)}: unknown key ${key}`);
    for (const [key, v] of Object.entries(o)) if (v === null) errs.push(`${kind} ${String(o.id)}: ${key} is null`);
    if (!ORIGIN.test(String(o.origin))) errs.push(`${kind}: origin ${String(o.origin)}`);
    for (const key of ['id', 'checkout_id', 'build_id']) if (key in o && !ID.test(String(o[key]))) errs.push(`${kind}: ${key} ${String(o[key])}`);
    if (typeof o.log_excerpt === 'string' && o.log_excerpt.length > 16384) errs.push(`${kind} ${String(o.id)}: log_excerpt too long`);
  };
  const checkouts = new Set(k.checkouts.map((c) => c.id));
  const builds = new Set(k.builds.map((b) => b.id));
  for (const c of k.checkouts) check('checkout', c, ['id', 'origin']);
  for (const b of k.builds) {
    check('build', b, ['checkout_id', 'id', 'origin']);
    if (!checkouts.has(b.checkout_id)) errs.push(`build ${String(b.id)}: no checkout ${String(b.checkout_id)}`);
  }
  const ids = new Set<unknown>();
  for (const t of k.tests) {
    check('test', t, ['build_id', 'id', 'origin']);
    if (!builds.has(t.build_id)) errs.push(`test ${String(t.id)}: no build`);
    if (ids.has(t.id)) errs.push(`test ${String(t.id)}: repeated id`);
    ids.add(t.id);
    if (!/^[.a-zA-Z0-9_-]*$/.test(String(t.path))) errs.push(`test ${String(t.id)}: path ${String(t.path)}`);
    if (!['FAIL', 'ERROR', 'MISS', 'PASS', 'DONE', 'SKIP'].includes(String(t.status))) errs.push(`test ${String(t.id)}: status ${String(t.status)}`);
    const env = t.environment as Record<string, unknown> | undefined;
    if (env) for (const key of Object.keys(env)) if (!['compatible', 'comment', 'misc'].includes(key)) errs.push(`test ${String(t.id)}: environment.${key}`);
    if ('waived' in t && typeof t.waived !== 'boolean') errs.push(`test ${String(t.id)}: waived`);
  }
  return errs;
}

describe('toKcidb', () => {
  const k = toKcidb(SAMPLE);
  it('has the checkouts, builds and tests KCIDB v4.5 expects', () => {
    expect(checkKcidb(k)).toEqual([]);
    expect(k.checkouts).toEqual([{ id: 'kvmprop:linux-6.18.44-fc-v657', origin: 'kvmprop', comment: 'Linux 6.18.44-fc-v657 (KVM under test)', start_time: SAMPLE.startedAt, valid: true, misc: { kernel_release: '6.18.44-fc-v657', kernel_version: 'Linux version 6.18.44-fc-v657' } }]);
    expect(k.builds).toHaveLength(1);
    expect(k.builds[0]).toMatchObject({ id: 'kvmprop:host-8eda49a4ab27', checkout_id: 'kvmprop:linux-6.18.44-fc-v657', origin: 'kvmprop', architecture: 'x86_64', misc: { hostId: '8eda49a4ab27', qemu: '7.2.22', kvm_modules: [{ name: 'kvm_pvm', parameters: { pvm_native: 'Y' } }] } });
  });

  it('maps statuses: pass PASS, fail FAIL (ERROR when it did not complete), known-deviation FAIL waived, skip SKIP', () => {
    expect(k.tests.map((t) => [t.path, t.status, t.waived ?? false])).toEqual([
      ['kvmprop.leaks.cpuid.no-host-pattern', 'PASS', false],
      ['kvmprop.leaks.cpuid.deterministic', 'FAIL', false],
      ['kvmprop.leaks.cpuid.cpl-invariant', 'FAIL', true],
      ['kvmprop.leaks.device.stable', 'SKIP', false],
      ['kvmprop.timers.lapic.never-early', 'ERROR', false],
      ['kvmprop.host.vcpu-model-starts', 'FAIL', true],
      ['kvmprop.host.machine-starts', 'FAIL', false],
      ['kvmprop.run', 'ERROR', false],
    ]);
    expect(k.tests[1]).toMatchObject({
      id: 'kvmprop:8eda49a4ab27:2026-12-01T10:00:00.000Z:leaks.cpuid.deterministic',
      build_id: 'kvmprop:host-8eda49a4ab27',
      comment: 'leaks.cpuid.deterministic holds',
      log_excerpt: 'CPUID(0x8000001e).EAX is 0x0 in VM B <96 MiB>, 0x1 in VM A & "64 MiB"',
      duration: 1.5,
      misc: { kvmprop_status: 'fail', seed: 7, path: '4:1:3', rule: 'the same leaf gives the same answer', counterexample: 'counterexamples/leaks.cpuid.deterministic.json', metrics: { vms: 2 } },
    });
    expect(k.tests[2]!.misc).toMatchObject({ deviation: { id: 'pvm-cpl3-cpuid-not-intercepted' } });
  });

  it('paths are KCIDB paths whatever the ids hold; imported nested kselftest ids keep their dots', () => {
    expect(kcidbPath(['kvmprop', 'a b', 'c:d.e/f'])).toBe('kvmprop.a_b.c_d.e_f');
    const ks = toKcidb(importKselftest(readFileSync(join(import.meta.dirname, 'fixtures', 'kselftest-kvm.ktap'), 'utf8')));
    expect(checkKcidb(ks)).toEqual([]);
    expect(ks.tests.map((t) => t.path)).toContain('kvmprop.kselftest.kvm.set_memory_region_test.delete_region.delete_overlapping');
  });

  it('one build per host, one checkout per kernel in a merged file', () => {
    const b = results([prop({ id: 'leaks.cpuid.no-host-pattern' })], { hostId: 'bbbbbbbbbbbb' });
    const m = toKcidb(mergeResults([{ file: 'a.json', results: SAMPLE }, { file: 'b.json', results: b }]));
    expect(checkKcidb(m)).toEqual([]);
    expect(m.builds.map((x) => x.id)).toEqual(['kvmprop:host-8eda49a4ab27', 'kvmprop:host-bbbbbbbbbbbb']);
    expect(m.checkouts).toHaveLength(1);
  });
});

describe('kvmprop export', () => {
  const dir = mkdtempSync(join(tmpdir(), 'kvmprop-export-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('writes each format from a results file or a run directory', () => {
    writeFileSync(join(dir, 'results.json'), JSON.stringify(SAMPLE));
    const err = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
    try {
      expect(cmdExport(['--format', 'junit', dir, '--out', join(dir, 'r.xml')])).toBe(0);
      expect(cmdExport(['--format', 'ktap', join(dir, 'results.json'), '--out', join(dir, 'r.ktap')])).toBe(0);
      expect(cmdExport(['--format', 'kcidb', join(dir, 'results.json'), '--out', join(dir, 'r.kcidb.json')])).toBe(0);
    } finally {
      err.mockRestore();
    }
    expect(parseXml(readFileSync(join(dir, 'r.xml'), 'utf8')).name).toBe('testsuites');
    expect(readFileSync(join(dir, 'r.ktap'), 'utf8').startsWith('KTAP version 1\n')).toBe(true);
    expect(checkKcidb(JSON.parse(readFileSync(join(dir, 'r.kcidb.json'), 'utf8')))).toEqual([]);
  });

  it('refuses bad input in one line, exit 2', () => {
    writeFileSync(join(dir, 'bad.json'), '{"schema":"other"}');
    const lines: string[] = [];
    const err = vi.spyOn(process.stderr, 'write').mockImplementation((s) => (lines.push(String(s)), true));
    try {
      expect(cmdExport(['--format', 'html', join(dir, 'results.json')])).toBe(2);
      expect(cmdExport(['--format', 'junit', join(dir, 'bad.json')])).toBe(2);
      expect(cmdExport(['--format', 'junit', join(dir, 'nothing.json')])).toBe(2);
    } finally {
      err.mockRestore();
    }
    expect(lines[0]).toBe('kvmprop: usage: kvmprop export --format junit|ktap|kcidb RESULTS [--out FILE]\n');
    expect(lines[1]).toMatch(/bad\.json is not a kvmprop results file: schema is "other", expected "kvmprop-results" \(and \d+ more\)\n$/);
    expect(lines[2]).toMatch(/cannot read .*nothing\.json: ENOENT\n$/);
  });
});
