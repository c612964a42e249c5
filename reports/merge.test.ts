import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { cmdMerge, hostIdOf, hostsOf, MergeError, mergeResults, readResultsFile, type MergedResultsFile } from './merge.js';
import { validateResults, type HostFinding, type PropertyResult, type ResultsFile } from './schema.js';
import { sampleHost, sampleProperty, sampleResults } from './testing/results.js';
import { importKselftest } from './tapImport.js';

const host = (release: string) => sampleHost(release, { qemu: undefined });
const prop = sampleProperty;
const results = (hostId: string, properties: PropertyResult[], over: Partial<ResultsFile> = {}): ResultsFile =>
  sampleResults(properties, { host: host(`kernel-of-${hostId}`), hostId, ...over });

const FINDING: HostFinding = { check: 'host.vcpu-model-starts', status: 'known-deviation', summary: '-cpu host cannot start', qemuMessage: 'q', commandLine: ['qemu'] };

const shardA = results('aaaa', [prop({ id: 'leaks.cpuid.rules', metrics: { vms: 2, cpuidQueries: 100 } }), prop({ id: 'leaks.cpuid.deterministic', status: 'fail', reason: 'differs', counterexample: 'counterexamples/leaks.cpuid.deterministic.json' })], {
  findings: [FINDING],
  startedAt: '2026-12-01T10:00:00.000Z',
  finishedAt: '2026-12-01T10:03:00.000Z',
});
const shardB = results('aaaa', [prop({ id: 'timers.lapic.never-early', metrics: { vms: 3, timerInterrupts: 40 } }), prop({ id: 'timers.pit.no-lost', status: 'skip', reason: 'needs -M pc' })], {
  findings: [FINDING],
  startedAt: '2026-12-01T09:59:00.000Z',
  finishedAt: '2026-12-01T10:07:00.000Z',
  errors: ['timers.rtc.x: no result recorded'],
});
const otherHost = results('bbbb', [prop({ id: 'leaks.cpuid.rules', status: 'known-deviation', reason: 'covered', deviation: { id: 'pvm-x', citation: 'c' } })], { findings: [{ ...FINDING, status: 'fail' }] });

describe('mergeResults', () => {
  it('merges shards of one host: properties concatenated, totals, metrics and status recomputed', () => {
    const m = mergeResults([{ file: 'a/results.json', results: shardA }, { file: 'b/results.json', results: shardB }]);
    expect(validateResults(m)).toEqual([]);
    expect(m.properties.map((p) => [p.id, p.hostId])).toEqual([
      ['leaks.cpuid.rules', 'aaaa'],
      ['leaks.cpuid.deterministic', 'aaaa'],
      ['timers.lapic.never-early', 'aaaa'],
      ['timers.pit.no-lost', 'aaaa'],
    ]);
    expect(m.totals).toEqual({ pass: 2, fail: 1, 'known-deviation': 0, skip: 1 });
    expect(m.metrics).toEqual({ vms: 2 + 2 + 3 + 2, cpuidQueries: 100, timerInterrupts: 40 });
    expect(m.status).toBe('fail');
    expect(m.hostId).toBe('aaaa');
    expect(m.hosts.map((h) => [h.hostId, h.startedAt, h.finishedAt])).toEqual([['aaaa', '2026-12-01T09:59:00.000Z', '2026-12-01T10:07:00.000Z']]);
    expect([m.startedAt, m.finishedAt]).toEqual(['2026-12-01T09:59:00.000Z', '2026-12-01T10:07:00.000Z']);
    expect(m.options.families).toEqual(['leaks', 'timers']);
    // The same host check from two shards is one finding.
    expect(m.findings).toEqual([{ ...FINDING, hostId: 'aaaa' }]);
    expect(m.errors).toEqual(['timers.rtc.x: no result recorded']);
    expect(m.sources.map((s) => [s.file, s.hostId, s.properties, s.status])).toEqual([['a/results.json', 'aaaa', 2, 'fail'], ['b/results.json', 'aaaa', 2, 'fail']]);
  });

  it('keeps hosts apart by hostId: the same property on two hosts is two results, findings stay per host', () => {
    const m = mergeResults([{ file: 'a.json', results: shardA }, { file: 'b.json', results: otherHost }]);
    expect(validateResults(m)).toEqual([]);
    expect(m.properties.filter((p) => p.id === 'leaks.cpuid.rules').map((p) => [p.hostId, p.status])).toEqual([['aaaa', 'pass'], ['bbbb', 'known-deviation']]);
    expect(m.hosts.map((h) => [h.hostId, h.host.kernel.release])).toEqual([['aaaa', 'kernel-of-aaaa'], ['bbbb', 'kernel-of-bbbb']]);
    expect(m.hostId).toBe('aaaa+bbbb');
    expect(m.findings.map((f) => [f.hostId, f.status])).toEqual([['aaaa', 'known-deviation'], ['bbbb', 'fail']]);
    expect(m.totals).toEqual({ pass: 1, fail: 1, 'known-deviation': 1, skip: 0 });
  });

  it('drops a duplicate with the same status, refuses conflicting duplicates from one host', () => {
    const again = results('aaaa', [prop({ id: 'leaks.cpuid.rules', seed: 2 })]);
    const m = mergeResults([{ file: 'a.json', results: shardA }, { file: 'again.json', results: again }]);
    expect(m.properties.filter((p) => p.id === 'leaks.cpuid.rules').map((p) => p.seed)).toEqual([1]);
    const flaky = results('aaaa', [prop({ id: 'leaks.cpuid.rules', status: 'fail', reason: 'now it fails' })]);
    expect(() => mergeResults([{ file: 'a.json', results: shardA }, { file: 'flaky.json', results: flaky }])).toThrow(
      new MergeError('conflicting results for leaks.cpuid.rules on host aaaa: pass in a.json, fail in flaky.json'),
    );
  });

  it('merges merged files and imported suites; a merged file merges again to the same', () => {
    const ab = mergeResults([{ file: 'a.json', results: shardA }, { file: 'b.json', results: otherHost }]);
    const ks = importKselftest(readFileSync(join(import.meta.dirname, 'fixtures', 'kselftest-kvm.ktap'), 'utf8'), { source: 'kselftest-kvm.ktap', hostId: 'bbbb' });
    const all = mergeResults([{ file: 'ab.json', results: ab }, { file: 'ks.json', results: ks }]);
    expect(validateResults(all)).toEqual([]);
    expect(all.hosts.map((h) => h.hostId)).toEqual(['aaaa', 'bbbb']);
    expect(all.sources.map((s) => s.file)).toEqual(['a.json', 'b.json', 'ks.json']);
    expect(all.sources[2]!.imported).toMatchObject({ suite: 'kselftest' });
    expect(all.properties.length).toBe(ab.properties.length + ks.properties.length);
    expect(all.properties.filter((p) => p.family === 'kselftest').every((p) => p.hostId === 'bbbb')).toBe(true);
    expect(all.totals).toEqual({ pass: 1 + 13, fail: 1 + 4, 'known-deviation': 1 + 1, skip: 3 });
    const again = mergeResults([{ file: 'all.json', results: all }]);
    expect({ ...again, sources: [] }).toEqual({ ...all, sources: [] });
    expect(hostsOf(all)).toBe(all.hosts);
    expect(hostIdOf(all.properties[0]!, all)).toBe('aaaa');
  });

  it('rebases counterexample paths onto the merged file, refuses nothing to merge and invalid input', () => {
    const m = mergeResults([{ file: '/runs/host-a/results.json', results: shardA }], { outDir: '/runs' });
    expect(m.properties[1]!.counterexample).toBe('host-a/counterexamples/leaks.cpuid.deterministic.json');
    expect(() => mergeResults([])).toThrow(MergeError);
    expect(() => mergeResults([{ file: 'x.json', results: { ...shardA, version: 1 } as unknown as ResultsFile }])).toThrow('x.json is not a kvmprop results file: version is 1, expected 2');
  });
});

describe('kvmprop merge', () => {
  const dir = mkdtempSync(join(tmpdir(), 'kvmprop-merge-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('merges run directories and files into FILE', () => {
    mkdirSync(join(dir, 'a'));
    writeFileSync(join(dir, 'a', 'results.json'), JSON.stringify(shardA));
    writeFileSync(join(dir, 'b.json'), JSON.stringify(otherHost));
    const lines: string[] = [];
    const err = vi.spyOn(process.stderr, 'write').mockImplementation((s) => (lines.push(String(s)), true));
    try {
      expect(cmdMerge([join(dir, 'a'), join(dir, 'b.json'), '--out', join(dir, 'merged.json')])).toBe(0);
    } finally {
      err.mockRestore();
    }
    const m = JSON.parse(readFileSync(join(dir, 'merged.json'), 'utf8')) as MergedResultsFile;
    expect(validateResults(m)).toEqual([]);
    expect(m.hosts).toHaveLength(2);
    expect(m.properties[1]!.counterexample).toBe('a/counterexamples/leaks.cpuid.deterministic.json');
    expect(readResultsFile(join(dir, 'merged.json')).results.properties).toHaveLength(3);
    expect(lines).toEqual([`kvmprop: merged 2 files, 2 hosts: 3 results (pass 1, fail 1, known-deviation 1, skip 0), status fail → ${join(dir, 'merged.json')}\n`]);
  });

  it('a conflict or a bad file is one line and exit 2', () => {
    writeFileSync(join(dir, 'flaky.json'), JSON.stringify(results('aaaa', [prop({ id: 'leaks.cpuid.rules', status: 'fail', reason: 'x' })])));
    writeFileSync(join(dir, 'junk.json'), 'not json');
    const lines: string[] = [];
    const err = vi.spyOn(process.stderr, 'write').mockImplementation((s) => (lines.push(String(s)), true));
    try {
      expect(cmdMerge([join(dir, 'a'), join(dir, 'flaky.json'), '--out', join(dir, 'x.json')])).toBe(2);
      expect(cmdMerge([join(dir, 'junk.json')])).toBe(2);
      expect(cmdMerge([])).toBe(2);
    } finally {
      err.mockRestore();
    }
    expect(lines[0]).toBe(`kvmprop: conflicting results for leaks.cpuid.rules on host aaaa: pass in ${join(dir, 'a', 'results.json')}, fail in ${join(dir, 'flaky.json')}\n`);
    expect(lines[1]).toMatch(/^kvmprop: .*junk\.json is not valid JSON: /);
    expect(lines[2]).toBe('kvmprop: usage: kvmprop merge RESULTS... [--out FILE]\n');
    for (const l of lines) expect(l.trimEnd()).not.toContain('\n');
  });
});
