import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Parser } from 'tap-parser';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { fingerprintId, type HostFingerprint } from '../harness/fingerprint.js';
import { formatTapDocument } from './ktap.js';
import { validateResults } from './schema.js';
import { assertWellFormed, cmdImport, idComponent, importKselftest, importKutTap, outcomeOf, parseTap, TapParseError, type TapDocument } from './tapImport.js';

/** The real kvm-unit-tests log and a kselftest KTAP log written from the spec (reports/fixtures/README.md). */
const KUT_FIXTURE = join(import.meta.dirname, 'fixtures', 'kvm-unit-tests-x86.tap');
const KSELFTEST_FIXTURE = join(import.meta.dirname, 'fixtures', 'kselftest-kvm.ktap');
const kut = readFileSync(KUT_FIXTURE, 'utf8');
const kselftest = readFileSync(KSELFTEST_FIXTURE, 'utf8');

/** The tree of a document as names, outcomes, directive texts and plans, for comparisons. */
interface Shape {
  plan: number | null;
  planSkip?: string;
  bail: string | null;
  name?: string;
  tests: { n: number; name: string; outcome: string; directive: string; comment?: string; diagnostics: readonly string[]; sub?: Shape }[];
  footer: readonly string[];
}
function shape(d: TapDocument): Shape {
  return {
    plan: d.plan?.count ?? null,
    ...(d.plan?.skip !== undefined ? { planSkip: d.plan.skip } : {}),
    bail: d.bailOut?.reason ?? null,
    ...(d.name !== undefined ? { name: d.name } : {}),
    tests: d.results.map((r) => ({
      n: r.number,
      name: r.description,
      outcome: outcomeOf(r),
      directive: r.directive ? `${r.directive.kind} ${r.directive.text}` : '',
      ...(r.comment ? { comment: r.comment } : {}),
      diagnostics: r.diagnostics,
      ...(r.subtests ? { sub: shape(r.subtests) } : {}),
    })),
    footer: d.footer,
  };
}

describe('parseTap', () => {
  it('reads result lines, directives, comments and escapes', () => {
    const d = parseTap(
      [
        'TAP version 13',
        '1..9',
        'ok 1 - msr: Expected #GP on WRMSR(0x8ff), got vector 13',
        'not ok 2 name with \\# hash # SKIP not here',
        'ok 3 - xapic: x2apic not detected # skip',
        'not ok 4 sel # exit=1',
        'ok 5 # XFAIL known to fail',
        'ok 6 t # XPASS',
        'not ok 7 t # TIMEOUT 120 seconds',
        'not ok 8 # error KVM_CREATE_VM failed',
        'not ok 9 todo one # TODO not done',
      ].join('\n'),
    );
    expect(d.problems).toEqual([]);
    expect(d.version).toBe('TAP version 13');
    expect(d.results.map((r) => [r.description, outcomeOf(r), r.directive?.text ?? r.comment ?? null])).toEqual([
      ['msr: Expected #GP on WRMSR(0x8ff), got vector 13', 'pass', null],
      ['name with # hash', 'skip', 'not here'],
      ['xapic: x2apic not detected', 'skip', ''],
      ['sel', 'fail', 'exit=1'],
      ['', 'xfail', 'known to fail'],
      ['t', 'xpass', ''],
      ['t', 'timeout', '120 seconds'],
      ['', 'error', 'KVM_CREATE_VM failed'],
      ['todo one', 'xfail', 'not done'],
    ]);
  });

  it('keeps diagnostics with the result they precede, the rest in the footer; a YAML block with its result', () => {
    const d = parseTap('KTAP version 1\n1..2\n# before one\nok 1 one\n  ---\n  message: x\n  ...\n# before two\n#\nnot ok 2 two\n# Totals: pass:1 fail:1 xfail:0 xpass:0 skip:0 error:0\n');
    expect(d.problems).toEqual([]);
    expect(d.results[0]!.diagnostics).toEqual(['before one']);
    expect(d.results[0]!.yaml).toEqual(['message: x']);
    expect(d.results[1]!.diagnostics).toEqual(['before two', '']);
    expect(d.footer).toEqual(['Totals: pass:1 fail:1 xfail:0 xpass:0 skip:0 error:0']);
    expect(d.totals).toEqual({ pass: 1, fail: 1, xfail: 0, xpass: 0, skip: 0, error: 0 });
  });

  it('nests subtests by indentation (2 or 4 spaces, any depth) and by kselftest runner "# " prefixes', () => {
    const ktap = parseTap('KTAP version 1\n1..1\n  KTAP version 1\n  # Subtest: a\n  1..1\n    KTAP version 1\n    1..2\n    ok 1 x\n    ok 2 y # SKIP no\n  ok 1 b\nok 1 a\n');
    expect(ktap.problems).toEqual([]);
    const a = ktap.results[0]!;
    expect(a.subtests?.name).toBe('a');
    expect(a.subtests?.results[0]?.subtests?.results.map((r) => [r.description, outcomeOf(r)])).toEqual([['x', 'pass'], ['y', 'skip']]);
    const tap14 = parseTap('TAP version 14\n1..1\n    # Subtest: s\n    1..1\n    not ok 1 inner\nnot ok 1 s\n');
    expect(tap14.results[0]!.subtests?.results[0]?.description).toBe('inner');
    const runner = parseTap(
      ['TAP version 13', '1..1', '# timeout set to 120', '# selftests: kvm: cpuid_test', '# TAP version 13', '# 1..2', '# ok 1 a', '# # diag of b', '# not ok 2 b', '# # Totals: pass:1 fail:1 xfail:0 xpass:0 skip:0 error:0', 'not ok 1 selftests: kvm: cpuid_test # exit=1'].join('\n'),
    );
    expect(runner.problems).toEqual([]);
    const r = runner.results[0]!;
    expect(r.diagnostics).toEqual(['timeout set to 120', 'selftests: kvm: cpuid_test']);
    expect(r.subtests?.results.map((x) => [x.description, outcomeOf(x), x.diagnostics])).toEqual([['a', 'pass', []], ['b', 'fail', ['diag of b']]]);
    expect(r.subtests?.totals?.fail).toBe(1);
  });

  it('indented lines without TAP structure are unknown lines, not subtests', () => {
    const d = parseTap('TAP version 13\n1..1\n   some guest output\nok 1 a\n');
    expect(d.results[0]!.subtests).toBeUndefined();
    expect(d.unknown).toEqual([{ line: 3, text: 'some guest output' }]);
  });

  it('lists problems: numbering, a plan not reached, Totals that disagree, a second plan', () => {
    const d = parseTap('KTAP version 1\n1..3\nok 1 a\nok 3 b\n# Totals: pass:5 fail:0 xfail:0 xpass:0 skip:0 error:0\n');
    expect(d.problems).toEqual(['line 4: test number 3, expected 2', 'plan 1..3 but 2 results', '"# Totals:" says pass:5, the results give pass:2']);
  });

  it('a Bail out ends the document; a plan left short by it is no problem', () => {
    const d = parseTap('TAP version 13\n1..3\nok 1 a\nBail out! no /dev/kvm\nok 2 b\n');
    expect(d.bailOut).toEqual({ reason: 'no /dev/kvm', line: 4 });
    expect(d.results).toHaveLength(1);
    expect(d.problems).toEqual([]);
    expect(() => assertWellFormed(d, 'x', 5)).not.toThrow();
  });

  it('agrees with tap-parser on the flat kvm-unit-tests log', () => {
    const d = parseTap(kut);
    const p = new Parser();
    let final: { count: number; pass: number; fail: number; skip: number } | undefined;
    p.on('complete', (r) => (final = r));
    p.end(kut);
    expect(final).toBeDefined();
    const skips = d.results.filter((r) => outcomeOf(r) === 'skip').length;
    expect(d.results.length).toBe(final!.count);
    expect(d.results.filter((r) => !r.ok).length).toBe(final!.fail);
    expect(skips).toBe(final!.skip);
    // tap-parser counts a skipped "ok" as a pass as well.
    expect(d.results.filter((r) => r.ok).length).toBe(final!.pass);
  });
});

/** A kvm-unit-tests-shaped log of n results, plan at the end. */
function kutLike(n: number): string {
  return ['TAP version 13', ...Array.from({ length: n }, (_, i) => `ok ${i + 1} - t${i % 7}: check ${i}`), `1..${n}`].join('\n') + '\n';
}

describe('corrupt input is one clear error line', () => {
  const cases: [string, string, RegExp][] = [
    ['empty', '', /^log: not TAP: no version line, plan or test result in 0 lines$/],
    ['JSON', '{"schema": "kvmprop-results"}\n', /^log: not TAP: no version line, plan or test result in 1 line$/],
    ['a build log', 'make: Entering directory\ncc -O2 -c x.c\n', /not TAP/],
    ['a log cut before its plan', kutLike(1000).split('\n').slice(0, 1000).join('\n'), /^log: truncated TAP: no plan line \(999 results, the last at line 1000\)$/],
    ['a plan the results do not reach', 'TAP version 13\n1..4120\nok 1 a\nok 2 b\n', /^log: truncated TAP: plan 1\.\.4120 \(line 2\) but 2 results$/],
    ['a cut plan line', `${kutLike(4120).split('\n').slice(0, 4121).join('\n')}\n1..41`, /truncated TAP: plan 1\.\.41 \(line 4122\) but 4120 results/],
  ];
  it.each(cases)('%s', (_name, text, message) => {
    for (const f of [importKutTap, importKselftest]) {
      let err: unknown;
      try {
        f(text, { source: 'log' });
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(TapParseError);
      expect(err).toBeInstanceOf(Error);
      expect((err as Error).message).toMatch(message);
      expect((err as Error).message).not.toContain('\n');
    }
  });
});

describe(`importKutTap: kvm-unit-tests run_tests.sh -t (${KUT_FIXTURE})`, () => {
  const r = importKutTap(kut, { source: 'kvm-unit-tests-x86.tap', startedAt: '2026-12-01T00:00:00.000Z' });

  it('imports every result: 4,120, 45 of them failures, as the fixture README says', () => {
    expect(validateResults(r)).toEqual([]);
    expect(r.properties).toHaveLength(4120);
    expect(r.totals).toEqual({ pass: 4064, fail: 45, 'known-deviation': 0, skip: 11 });
    expect(r.status).toBe('fail');
    expect(r.errors).toEqual([]);
    expect(new Set(r.properties.map((p) => p.id)).size).toBe(4120);
    expect(r.properties.every((p) => p.family === 'kvm-unit-tests' && /^kvm-unit-tests\.[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)?$/.test(p.id))).toBe(true);
    expect(r.imported).toMatchObject({ format: 'kut-tap', suite: 'kvm-unit-tests', source: 'kvm-unit-tests-x86.tap', lines: 4122, tapVersion: 'TAP version 13', problems: [] });
    expect(r.hostId).toBe('unknown');
    expect((r.host as unknown as { imported: boolean }).imported).toBe(true);
  });

  it('keeps timeouts visible: the test itself fails with rule timeout, its limit and a metric', () => {
    const timeouts = r.properties.filter((p) => p.rule === 'timeout');
    expect(timeouts).toHaveLength(19);
    expect(r.metrics.timeouts).toBe(19);
    expect(r.properties.filter((p) => p.rule === 'aborted').map((p) => p.id)).toEqual(['kvm-unit-tests.syscall', 'kvm-unit-tests.umip']);
    const x2apic = r.properties.find((p) => p.id === 'kvm-unit-tests.x2apic')!;
    expect(x2apic).toMatchObject({ status: 'fail', rule: 'timeout', durationMs: 30_000, metrics: { timeouts: 1 }, statement: 'kvm-unit-tests x2apic: timeout; duration=30' });
    expect(x2apic.reason).toBe('timeout: the test did not finish within 30s (not ok 54 - x2apic: timeout; duration=30)');
    expect(r.properties.find((p) => p.id === 'kvm-unit-tests.sieve')).toMatchObject({ rule: 'timeout', durationMs: 180_000 });
  });

  it('names checks by test and text, repeats in order, and keeps the reason of failures and skips', () => {
    expect(r.properties[0]).toMatchObject({ id: 'kvm-unit-tests.x2apic.apic_existence', status: 'pass', numRuns: 1, statement: 'kvm-unit-tests x2apic: apic existence' });
    expect(r.properties[4]!.id).toBe('kvm-unit-tests.x2apic.apic_disable_CR8_0');
    expect(r.properties[15]!.id).toBe('kvm-unit-tests.x2apic.apic_disable_CR8_0--2');
    const spec = r.properties.filter((p) => p.id.startsWith('kvm-unit-tests.msr.SPEC_CTRL'));
    expect(spec.map((p) => p.id)).toEqual(['kvm-unit-tests.msr.SPEC_CTRL', ...[2, 3, 4, 5, 6, 7, 8].map((n) => `kvm-unit-tests.msr.SPEC_CTRL--${n}`)]);
    expect(r.properties.find((p) => p.id === 'kvm-unit-tests.la57.Write_to_GDTR_BASE_with_value_ffaaaaaaaaaaaaaa_did_NOT_fail_as_expected')).toMatchObject({
      status: 'fail',
      reason: 'not ok 4063 - la57: Write to GDTR_BASE with value ffaaaaaaaaaaaaaa did NOT fail as expected',
    });
    expect(r.properties.find((p) => p.id === 'kvm-unit-tests.xapic.self_ipi_x2apic_x2apic_not_detected')).toMatchObject({ status: 'skip', numRuns: 0, reason: 'self_ipi_x2apic: x2apic not detected' });
    expect(r.properties.find((p) => p.id === 'kvm-unit-tests.msr.Expected_GP_on_RDMSR_x2APIC_MSR_0x800_got_vector_13')?.statement).toBe('kvm-unit-tests msr: Expected #GP on RDMSR(x2APIC MSR 0x800), got vector 13');
  });

});

describe('importKutTap: small logs', () => {
  it('takes a failure reason from the diagnostics after it (TAP 13), a Bail out as an error of the run', () => {
    const t = importKutTap('TAP version 13\nok 1 - a: b\nnot ok 2 - a: c\n# FAIL: expected 1, got 2\n#   at x86/a.c:10\n1..2\n');
    expect(t.properties[1]).toMatchObject({ id: 'kvm-unit-tests.a.c', reason: 'FAIL: expected 1, got 2; at x86/a.c:10' });
    const b = importKutTap('TAP version 13\n1..3\nok 1 - a: b\nBail out! \x1b[31mQEMU died\x1b[0m\n');
    expect(b.errors).toEqual(['kvm-unit-tests run bailed out at line 4: QEMU died']);
    expect(b.status).toBe('fail');
    expect(validateResults(b)).toEqual([]);
  });
});

describe('importKselftest: KTAP with nested subtests', () => {
  const r = importKselftest(kselftest, { source: 'kselftest-kvm.ktap' });
  const byId = new Map(r.properties.map((p) => [p.id, p]));

  it('imports the fixture as a valid results file', () => {
    expect(validateResults(r)).toEqual([]);
    expect(r.properties).toHaveLength(21);
    expect(r.totals).toEqual({ pass: 13, fail: 4, 'known-deviation': 1, skip: 3 });
    expect(r.properties.every((p) => p.family === 'kselftest' && p.id.startsWith('kselftest.kvm.'))).toBe(true);
    expect(r.imported.problems).toEqual(['kselftest.kvm.dirty_log_test: plan 1..3 but 2 results']);
  });

  it('maps every directive, names subtests kselftest.<suite>.<subtest>, any depth', () => {
    expect(byId.get('kselftest.kvm.cpuid_test.guest_cpuid_matches_supported')?.status).toBe('pass');
    expect(byId.get('kselftest.kvm.xapic_state_test.x2apic')).toMatchObject({ status: 'skip', reason: 'x2apic: x2APIC not supported by the vCPU model' });
    expect(byId.get('kselftest.kvm.hyperv_features.hv_msr_hypercall_page')).toMatchObject({ status: 'fail' });
    expect(byId.get('kselftest.kvm.hyperv_features.hv_msr_hypercall_page')?.reason).toContain('Expected #GP on WRMSR(HV_X64_MSR_HYPERCALL), got vector 0x0 <&> "quoted"');
    expect(byId.get('kselftest.kvm.hyperv_features.hv_hcall_post_message')).toMatchObject({ status: 'known-deviation', reason: 'expected failure (XFAIL): HVCALL_POST_MESSAGE is not emulated under kvm_pvm' });
    expect(byId.get('kselftest.kvm.userspace_msr_exit_test.msr_filter_deny')).toMatchObject({ status: 'fail', rule: 'error' });
    expect(byId.get('kselftest.kvm.set_memory_region_test.delete_region.delete_overlapping')).toMatchObject({ status: 'skip' });
    expect(byId.get('kselftest.kvm.set_memory_region_test.delete_region.delete_with_vcpu_running')?.status).toBe('pass');
  });

  it('reports a program only where its own verdict says more than its subtests', () => {
    // Explained by a failing subtest: no property of its own.
    expect(byId.has('kselftest.kvm.hyperv_features')).toBe(false);
    expect(byId.has('kselftest.kvm.userspace_msr_exit_test')).toBe(false);
    expect(byId.has('kselftest.kvm.set_memory_region_test.delete_region')).toBe(false);
    expect(byId.get('kselftest.kvm.vmx_preemption_timer_test')).toMatchObject({ status: 'skip', reason: 'nested VMX is not available (no VMX on this host)' });
    expect(byId.get('kselftest.kvm.kvm_clock_test')).toMatchObject({ status: 'fail', rule: 'bail-out', reason: 'Bail out! KVM_SET_CLOCK failed, rc: -1 errno: 22 (Invalid argument) (2 of 4 planned subtests ran)' });
    expect(byId.get('kselftest.kvm.dirty_log_test')).toMatchObject({ status: 'fail', rule: 'timeout', metrics: { timeouts: 1 }, reason: 'timeout: 120 seconds (2 of 3 planned subtests ran)' });
    expect(r.properties.filter((p) => p.status === 'fail').map((p) => p.id)).toEqual([
      'kselftest.kvm.hyperv_features.hv_msr_hypercall_page',
      'kselftest.kvm.kvm_clock_test',
      'kselftest.kvm.dirty_log_test',
      'kselftest.kvm.userspace_msr_exit_test.msr_filter_deny',
    ]);
  });

  it('round-trips: parse, write back as KTAP, parse again gives the same tree, nested subtests included', () => {
    const first = parseTap(kselftest);
    expect(first.problems).toEqual([]);
    const text = formatTapDocument(first);
    const again = parseTap(text);
    expect(shape(again)).toEqual(shape(first));
    expect(formatTapDocument(again)).toBe(text);
    const depth = (d: TapDocument): number => 1 + Math.max(0, ...d.results.map((x) => (x.subtests ? depth(x.subtests) : 0)));
    expect(depth(again)).toBe(3);
  });

  it('reads one program\'s output with --suite, a kselftest runner log, and a top-level Bail out', () => {
    const one = importKselftest('TAP version 13\n1..2\nok 1 a\nok 2 # SKIP b needs VMX\n', { suite: 'kvm: vmx_tsc' });
    expect(one.properties.map((p) => [p.id, p.status])).toEqual([['kselftest.kvm_vmx_tsc.a', 'pass'], ['kselftest.kvm_vmx_tsc.b_needs_VMX', 'skip']]);
    const runner = importKselftest('TAP version 13\n1..1\n# selftests: kvm: x\n# TAP version 13\n# 1..1\n# not ok 1 inner\nnot ok 1 selftests: kvm: x # exit=1\n');
    expect(runner.properties.map((p) => [p.id, p.status])).toEqual([['kselftest.kvm.x.inner', 'fail']]);
    const bail = importKselftest('KTAP version 1\n1..3\nok 1 a\nBail out! out of memory\n');
    expect(bail.errors).toEqual(['kselftest run bailed out at line 4 after 1 of 3 tests: out of memory']);
    expect(validateResults(bail)).toEqual([]);
  });
});

describe('idComponent', () => {
  it('keeps [A-Za-z0-9_-], folds the rest into single underscores', () => {
    expect(idComponent('apic_disable: CR8: 0')).toBe('apic_disable_CR8_0');
    expect(idComponent('*0xfee00030: ffffffff')).toBe('0xfee00030_ffffffff');
    expect(idComponent('pcid-enabled')).toBe('pcid-enabled');
    expect(idComponent(' :: ')).toBe('unnamed');
  });
});

const HOST: HostFingerprint = {
  schema: 1,
  collectedAt: '2026-12-01T08:55:30.003Z',
  kernel: { release: '6.18.44-fc-v657', version: 'Linux version 6.18.44-fc-v657' },
  cpu: { model: 'AMD EPYC', vendor: 'AuthenticAMD', family: 25, modelNumber: 1, stepping: 1, flags: ['x2apic', 'hypervisor'] },
  kvm: {
    device: 'ok', apiVersion: 12, modules: [{ name: 'kvm', parameters: {} }, { name: 'kvm_pvm', parameters: {} }], vendorModules: ['kvm_pvm'], caps: {},
    nested: false, dirtyRing: true, manualDirtyLogProtect: true, tscScaling: false, x2apic: true, tscDeadline: true,
  },
  qemu: { path: 'qemu-system-x86_64', found: true, version: '7.2.22' },
  tools: { gcc: 'gcc 12.2.0', ld: 'GNU ld 2.40' },
};

describe('kvmprop import', () => {
  const dir = mkdtempSync(join(tmpdir(), 'kvmprop-import-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('writes a valid results file, with a host fingerprint when given one', async () => {
    writeFileSync(join(dir, 'host.json'), JSON.stringify(HOST));
    writeFileSync(join(dir, 'kut.tap'), 'TAP version 13\nok 1 - a: b\nnot ok 2 - a: timeout; duration=90s\n1..2\n');
    const err = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
    try {
      expect(await cmdImport(['--format', 'ktap', KSELFTEST_FIXTURE, '--out', join(dir, 'ks.json'), '--host', join(dir, 'host.json')])).toBe(0);
      expect(await cmdImport(['--format', 'kut-tap', join(dir, 'kut.tap'), '--out', join(dir, 'kut.json'), '--host-id', 'dev-intel'])).toBe(0);
    } finally {
      err.mockRestore();
    }
    const ks = JSON.parse(readFileSync(join(dir, 'ks.json'), 'utf8'));
    expect(validateResults(ks)).toEqual([]);
    expect(ks.hostId).toBe(fingerprintId(HOST));
    expect(ks.host.cpu.vendor).toBe('AuthenticAMD');
    const k = JSON.parse(readFileSync(join(dir, 'kut.json'), 'utf8'));
    expect([k.hostId, k.properties.length, k.totals.fail, k.properties[1].rule]).toEqual(['dev-intel', 2, 1, 'timeout']);
  });

  it('refuses bad input with exit 2 and one line', async () => {
    writeFileSync(join(dir, 'bad.log'), 'Segmentation fault\n');
    const lines: string[] = [];
    const err = vi.spyOn(process.stderr, 'write').mockImplementation((s) => (lines.push(String(s)), true));
    try {
      expect(await cmdImport(['--format', 'kut-tap', join(dir, 'bad.log'), '--out', join(dir, 'x.json')])).toBe(2);
      expect(await cmdImport(['--format', 'junit', join(dir, 'bad.log')])).toBe(2);
      expect(await cmdImport(['--format', 'ktap', join(dir, 'missing.log')])).toBe(2);
      expect(await cmdImport(['--format', 'ktap', '--bogus', join(dir, 'bad.log')])).toBe(2);
    } finally {
      err.mockRestore();
    }
    expect(lines).toHaveLength(4);
    expect(lines[0]).toBe('kvmprop: bad.log: not TAP: no version line, plan or test result in 1 line\n');
    expect(lines[1]).toMatch(/^kvmprop: usage: kvmprop import --format kut-tap\|ktap LOG/);
    expect(lines[2]).toMatch(/^kvmprop: cannot read .*missing\.log: ENOENT\n$/);
    for (const l of lines) expect(l.trimEnd()).not.toContain('\n');
  });
});
