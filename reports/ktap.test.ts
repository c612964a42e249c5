import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { cleanLine, cleanText, ktapDocument, nameInFamily, toKtap } from './ktap.js';
import { mergeResults } from './merge.js';
import type { HostFinding, PropertyResult, ResultsFile } from './schema.js';
import { sampleProperty, sampleResults } from './testing/results.js';
import { importKselftest, outcomeOf, parseTap, type TapDocument } from './tapImport.js';

const prop = sampleProperty;
const results = sampleResults;

const FINDING: HostFinding = {
  check: 'host.vcpu-model-starts',
  status: 'known-deviation',
  summary: '-cpu host cannot start on this host',
  qemuMessage: "error: failed to set MSR 0x10a to 0x69\nkvm_buf_set_msrs: Assertion `ret == cpu->kvm_msr_buf->nmsrs' failed.",
  commandLine: ['qemu-system-x86_64', '-cpu', 'host'],
  deviation: { id: 'pvm-amd-refuses-arch-capabilities', citation: 'api.rst' },
};

const SAMPLE = results(
  [
    prop({ id: 'leaks.cpuid.rules' }),
    prop({
      id: 'leaks.cpuid.deterministic',
      status: 'fail',
      reason: 'CPUID(0x8000001e).EAX is 0x0 in VM B, 0x1 in VM A',
      rule: 'the same leaf gives the same answer',
      path: '4:1:3',
      counterexample: 'counterexamples/leaks.cpuid.deterministic.json',
      replay: 'npx kvmprop replay results/counterexamples/leaks.cpuid.deterministic.json',
    }),
    prop({ id: 'leaks.cpuid.cpl-invariant', status: 'known-deviation', reason: '1120 difference(s) covered by known deviation pvm-cpl3', deviation: { id: 'pvm-cpl3-cpuid-not-intercepted', citation: 'AMD APM Vol. 3' } }),
    prop({ id: 'leaks.device.stable', status: 'skip', reason: 'not run: the configured machine does not start', numRuns: 0 }),
    prop({ id: 'timers.lapic.never-early', status: 'fail', rule: 'timeout', reason: 'the case did not finish in 60 s' }),
    prop({ id: 'timers.pit.no-lost', status: 'skip', reason: 'needs -M pc' }),
  ],
  { findings: [FINDING], errors: ['migration.x: no result recorded (the run stopped before this property finished)'] },
);

/** The KTAP tree as (name, outcome) pairs, nested. */
type Tree = [string, string, Tree?][];
function tree(d: TapDocument): Tree {
  return d.results.map((r) => (r.subtests ? [r.description, outcomeOf(r), tree(r.subtests)] : [r.description, outcomeOf(r)]));
}

/** What the KTAP of a results file must show, from the results file itself. */
function expectedTree(r: ResultsFile): Tree {
  const outcome = (p: PropertyResult) => (p.status === 'known-deviation' ? 'xfail' : p.status === 'fail' ? (p.rule === 'timeout' ? 'timeout' : p.rule && ['error', 'aborted', 'terminated', 'bail-out'].includes(p.rule) ? 'error' : 'fail') : p.status);
  const families = [...new Set(r.properties.map((p) => p.family))];
  const t: Tree = families.map((f) => {
    const ps = r.properties.filter((p) => p.family === f);
    const parent = ps.some((p) => p.status === 'fail') ? 'fail' : ps.every((p) => p.status === 'skip') ? 'skip' : 'pass';
    return [cleanLine(f), parent, ps.map((p) => [cleanLine(nameInFamily(p.id, p.family)), outcome(p)])];
  });
  if (r.findings.length) t.push(['host', r.findings.some((f) => f.status === 'fail') ? 'fail' : 'pass', r.findings.map((f) => [nameInFamily(f.check, 'host'), f.status === 'fail' ? 'fail' : 'xfail'])]);
  if (r.errors.length) t.push(['run', 'error']);
  return t;
}

describe('toKtap', () => {
  it('writes KTAP v1: version, plan, a subtest per family, a result per property', () => {
    const text = toKtap(SAMPLE);
    const lines = text.split('\n');
    expect(lines[0]).toBe('KTAP version 1');
    expect(lines[1]).toBe('1..4');
    expect(text).toContain('\n  KTAP version 1\n  # Subtest: leaks\n  1..4\n  ok 1 cpuid.rules\n');
    expect(text).toContain(
      '  # reason: CPUID(0x8000001e).EAX is 0x0 in VM B, 0x1 in VM A\n' +
        '  # rule: the same leaf gives the same answer\n' +
        '  # counterexample: counterexamples/leaks.cpuid.deterministic.json\n' +
        '  # replay: npx kvmprop replay results/counterexamples/leaks.cpuid.deterministic.json\n' +
        '  # seed: 1, path: 4:1:3\n' +
        '  not ok 2 cpuid.deterministic\n',
    );
    expect(text).toContain('  ok 3 cpuid.cpl-invariant # XFAIL 1120 difference(s) covered by known deviation pvm-cpl3\n');
    expect(text).toContain('  ok 4 device.stable # SKIP not run: the configured machine does not start\n');
    expect(text).toContain('  not ok 1 lapic.never-early # TIMEOUT the case did not finish in 60 s\n');
    expect(text).toContain('not ok 1 leaks\n');
    expect(text).toContain('  ok 1 vcpu-model-starts # XFAIL -cpu host cannot start on this host\n');
    expect(text).toContain('# error: migration.x: no result recorded (the run stopped before this property finished)\nnot ok 4 run # ERROR 1 error of the run itself\n');
    expect(text).not.toMatch(/seed 1\b.*\bok\b/);
    expect(text.endsWith('# Totals: pass:1 fail:2 xfail:0 xpass:0 skip:0 error:1\n')).toBe(true);
  });

  it('round-trips through the parser: same names and statuses, nested, no problems', () => {
    const d = parseTap(toKtap(SAMPLE));
    const problems = (x: TapDocument): string[] => [...x.problems, ...x.results.flatMap((r) => (r.subtests ? problems(r.subtests) : []))];
    expect(problems(d)).toEqual([]);
    expect(tree(d)).toEqual(expectedTree(SAMPLE));
    expect(d.results[0]!.subtests!.results[1]!.diagnostics[0]).toBe('reason: CPUID(0x8000001e).EAX is 0x0 in VM B, 0x1 in VM A');
  });

  it('a property id and the family rebuild the id: family name + "." + subtest name', () => {
    const d = parseTap(toKtap(SAMPLE));
    const ids = d.results.filter((r) => r.subtests && r.description !== 'host').flatMap((f) => f.subtests!.results.map((p) => `${f.description}.${p.description}`));
    expect(ids).toEqual(SAMPLE.properties.map((p) => p.id));
  });

  it('keeps untrusted text from breaking the structure', () => {
    const nasty = results([
      prop({ id: 'leaks.a#b\\c', status: 'fail', reason: 'line one\nTAP version 13\n1..1\nok 1 injected\r\nBail out! no\x1b[31m red\x1b[0m \x00\x07 end # SKIP' }),
      prop({ id: 'leaks.\nnot ok 9 x', status: 'skip', reason: 'why\n# TODO' }),
    ]);
    const text = toKtap(nasty);
    expect(text).not.toMatch(/[\x00-\x08\x0b-\x1f\x7f]/);
    expect(text).toContain('  ok 2 not ok 9 x # SKIP why # TODO\n');
    expect(text).toContain('  not ok 1 a\\#b\\\\c\n');
    const d = parseTap(text);
    expect(d.problems).toEqual([]);
    expect(tree(d)).toEqual([['leaks', 'fail', [['a#b\\c', 'fail'], ['not ok 9 x', 'skip']]]]);
    expect(d.results[0]!.subtests!.results[0]!.diagnostics).toEqual(['reason: line one', '> TAP version 13', '1..1', 'ok 1 injected', 'Bail out! no red  end # SKIP']);
  });

  it('round-trips arbitrary ids, reasons and statuses (property-based)', () => {
    const str = fc.string({ unit: 'binary', maxLength: 40 });
    const status = fc.constantFrom('pass', 'fail', 'known-deviation', 'skip') as fc.Arbitrary<PropertyResult['status']>;
    const arb = fc.array(
      fc.record({ family: fc.constantFrom('leaks', 'timers', 'a b', 'x#y'), name: str, status, reason: str, rule: fc.option(fc.constantFrom('r', 'timeout', 'error'), { nil: undefined }) }),
      { minLength: 1, maxLength: 12 },
    );
    fc.assert(
      fc.property(arb, (xs) => {
        const r = results(xs.map((x, i) => prop({ id: `${x.family}.${x.name}.${i}`, family: x.family, status: x.status, reason: x.reason || 'r', ...(x.rule ? { rule: x.rule } : {}) })));
        const d = parseTap(toKtap(r));
        expect(d.problems).toEqual([]);
        expect(tree(d)).toEqual(expectedTree(r));
      }),
      { numRuns: 200 },
    );
  });

  it('nests a merged file by host, then family', () => {
    const b = results([prop({ id: 'leaks.cpuid.rules', status: 'fail', reason: 'x' })], { hostId: 'bbbbbbbbbbbb' });
    const merged = mergeResults([{ file: 'a.json', results: SAMPLE }, { file: 'b.json', results: b }]);
    const d = ktapDocument(merged);
    expect(d.results.map((r) => [r.description, outcomeOf(r)])).toEqual([['aaaaaaaaaaaa', 'fail'], ['bbbbbbbbbbbb', 'fail'], ['run', 'error']]);
    expect(tree(parseTap(toKtap(merged)))[1]).toEqual(['bbbbbbbbbbbb', 'fail', [['leaks', 'fail', [['cpuid.rules', 'fail']]]]]);
  });

  it('writes imported kselftest results back as KTAP that parses to the same statuses', () => {
    const r = importKselftest(readFileSync(join(import.meta.dirname, 'fixtures', 'kselftest-kvm.ktap'), 'utf8'));
    const d = parseTap(toKtap(r));
    const sub = d.results[0]!.subtests!;
    expect(d.results[0]!.description).toBe('kselftest');
    expect(sub.results.map((x) => [`kselftest.${x.description}`, outcomeOf(x)])).toEqual(
      r.properties.map((p) => [p.id, p.status === 'known-deviation' ? 'xfail' : p.status === 'fail' ? (p.rule === 'timeout' ? 'timeout' : p.rule === 'error' || p.rule === 'bail-out' ? 'error' : 'fail') : p.status]),
    );
  });
});

describe('cleanText / cleanLine', () => {
  it('removes ANSI sequences, control characters and unpaired surrogates; keeps tabs and newlines', () => {
    expect(cleanText('a\x1b[1;31mb\x1b[0m\x1b]0;title\x07c\x00d\x7f\x85e\r\nf\rg\th\ud800i\ufffe')).toBe('abcde\nf\ng\thi');
    expect(cleanText('😀 ok')).toBe('😀 ok');
    expect(cleanLine('  a\n\n b\t c ')).toBe('a b c');
    expect(cleanLine('x'.repeat(3000)).length).toBe(2000);
  });
});
