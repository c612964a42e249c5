import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { HostFingerprint } from '../harness/fingerprint.js';
import {
  COUNTEREXAMPLE_SCHEMA,
  CounterexampleError,
  fromJsonValue,
  readCounterexample,
  toJsonValue,
  writeCounterexample,
  type Counterexample,
} from './counterexample.js';
import {
  DeviationsError,
  hostMatches,
  loadDeviations,
  matchDeviation,
  parseDeviations,
  type KnownDeviation,
} from './deviations.js';
import { RESULTS_SCHEMA, RESULTS_VERSION, sumMetrics, tally, validateResults, type PropertyResult } from './schema.js';

function prop(over: Partial<PropertyResult> = {}): PropertyResult {
  return {
    id: 'leaks.cpuid.rules',
    family: 'leaks',
    statement: 'CPUID follows the rules',
    status: 'pass',
    numRuns: 100,
    seed: 42,
    durationMs: 1234,
    metrics: { cpuidQueries: 10 },
    ...over,
  };
}

const results = (properties: unknown[], over: Record<string, unknown> = {}) => ({
  schema: RESULTS_SCHEMA,
  version: RESULTS_VERSION,
  findings: [],
  properties,
  status: 'pass',
  ...over,
});

describe('validateResults', () => {
  it('accepts a valid minimal file', () => {
    expect(validateResults(results([]))).toEqual([]);
    expect(validateResults(results([prop(), prop({ status: 'skip', reason: 'no KVM' })]))).toEqual([]);
  });

  it('rejects what is not an object', () => {
    expect(validateResults(null)).toEqual(['not a JSON object']);
    expect(validateResults('results')).toEqual(['not a JSON object']);
  });

  it('checks schema, version, properties and status', () => {
    const errs = validateResults({ schema: 'other', version: 9, properties: {}, status: 'ok' });
    expect(errs).toEqual([
      'schema is "other", expected "kvmprop-results"',
      'version is 9, expected 2',
      'properties is not an array',
      'findings is not an array',
      'status must be pass or fail',
    ]);
  });

  it('checks host findings: QEMU words, the command line, a known status', () => {
    const finding = { check: 'host.machine-starts', status: 'fail', summary: 's', qemuMessage: 'q', commandLine: ['qemu'] };
    expect(validateResults(results([], { findings: [finding] }))).toEqual([]);
    expect(validateResults(results([], { findings: [{ ...finding, status: 'pass', commandLine: undefined }] }))).toEqual([
      'findings[0].status "pass" unknown',
      'findings[0].commandLine missing',
    ]);
  });

  it('reports missing property fields', () => {
    const { family: _family, seed: _seed, ...partial } = prop();
    expect(validateResults(results([partial]))).toEqual(['properties[0].family missing', 'properties[0].seed missing']);
    expect(validateResults(results([null]))).toContain('properties[0].id missing');
  });

  it('rejects an unknown status', () => {
    expect(validateResults(results([prop({ status: 'flaky' as never })]))).toEqual(['properties[0].status "flaky" unknown']);
  });

  it('needs a counterexample or a reason for a failure', () => {
    expect(validateResults(results([prop({ status: 'fail' })], { status: 'fail' }))).toEqual([
      'properties[0] failed without a counterexample or reason',
    ]);
    expect(validateResults(results([prop({ status: 'fail', reason: 'boom' })], { status: 'fail' }))).toEqual([]);
    expect(validateResults(results([prop({ status: 'fail', counterexample: 'ce/x.json' })], { status: 'fail' }))).toEqual([]);
  });

  it('needs a reason for a skip', () => {
    expect(validateResults(results([prop(), prop({ status: 'skip' })]))).toEqual(['properties[1] skipped without a reason']);
  });
});

describe('tally and sumMetrics', () => {
  const props = [
    prop({ metrics: { cpuidQueries: 10, vms: 2 } }),
    prop({ status: 'fail', reason: 'x', metrics: { cpuidQueries: 5 } }),
    prop({ status: 'known-deviation', metrics: { deviceReads: 7 } }),
    prop({ status: 'skip', reason: 'y', metrics: {} }),
    prop({ metrics: { vms: 1 } }),
  ];

  it('counts each status, zero included', () => {
    expect(tally(props)).toEqual({ pass: 2, fail: 1, 'known-deviation': 1, skip: 1 });
    expect(tally([])).toEqual({ pass: 0, fail: 0, 'known-deviation': 0, skip: 0 });
  });

  it('sums metrics by name', () => {
    expect(sumMetrics(props)).toEqual({ cpuidQueries: 15, vms: 3, deviceReads: 7 });
    expect(sumMetrics([])).toEqual({});
  });
});

function fingerprint(over: { release?: string; qemu?: string | null; cpu?: string; modules?: string[] } = {}): HostFingerprint {
  return {
    schema: 1,
    collectedAt: '2025-01-01T00:00:00.000Z',
    kernel: { release: over.release ?? '6.18.44-fc-v657', version: 'Linux version 6.18.44' },
    cpu: { model: over.cpu ?? 'Intel(R) Xeon(R) Platinum 8480+', vendor: 'GenuineIntel', flags: [] },
    kvm: {
      device: 'ok',
      apiVersion: 12,
      modules: [],
      vendorModules: over.modules ?? ['kvm_pvm'],
      caps: {},
      nested: null,
      dirtyRing: null,
      manualDirtyLogProtect: null,
      tscScaling: null,
      x2apic: null,
      tscDeadline: null,
    },
    qemu: { path: '/usr/bin/qemu-system-x86_64', found: true, version: over.qemu === undefined ? '7.2.22' : over.qemu },
    tools: { gcc: null, ld: null },
  };
}

const DEVIATION: KnownDeviation = {
  id: 'pvm-la57',
  property: 'leaks.cpuid.rules',
  host: { vendorModules: ['kvm_pvm'], qemuVersion: '^7\\.2\\.' },
  failure: "^CPUID\\(0x7, 0x0\\) on vCPU \\d+: ECX bit 16 is 0, but feature 'la57' = true",
  evidence: 'seen',
  citation: 'api.rst',
  recorded: '2026-11-26',
};
const deviationsText = (...ds: unknown[]) => JSON.stringify({ version: 1, deviations: ds });
const LA57 = "CPUID(0x7, 0x0) on vCPU 1: ECX bit 16 is 0, but feature 'la57' = true in query-cpu-model-expansion";

describe('parseDeviations', () => {
  it('parses a valid file', () => {
    expect(parseDeviations(deviationsText(DEVIATION))).toEqual({ version: 1, deviations: [DEVIATION] });
    expect(parseDeviations(deviationsText())).toEqual({ version: 1, deviations: [] });
  });

  it('rejects text that is not JSON, naming the source', () => {
    expect(() => parseDeviations('{', 'kd.json')).toThrow(DeviationsError);
    expect(() => parseDeviations('{', 'kd.json')).toThrow(/^kd\.json: not valid JSON/);
  });

  it('rejects a wrong version or shape', () => {
    expect(() => parseDeviations(JSON.stringify({ version: 2, deviations: [] }))).toThrow(/expected \{"version": 1/);
    expect(() => parseDeviations(JSON.stringify({ version: 1 }))).toThrow(DeviationsError);
    expect(() => parseDeviations('null')).toThrow(DeviationsError);
  });

  it('requires every text field, non-empty', () => {
    for (const k of ['id', 'property', 'failure', 'evidence', 'citation', 'recorded'] as const) {
      const { [k]: _gone, ...rest } = DEVIATION;
      expect(() => parseDeviations(deviationsText(rest)), k).toThrow(new RegExp(`deviations\\[0\\]\\.${k} is required`));
      expect(() => parseDeviations(deviationsText({ ...DEVIATION, [k]: '' })), k).toThrow(/is required/);
    }
    expect(() => parseDeviations(deviationsText(DEVIATION, null))).toThrow(/deviations\[1\]\.id is required/);
  });

  it('requires at least one host trait', () => {
    expect(() => parseDeviations(deviationsText({ ...DEVIATION, host: {} }))).toThrow(/host must name at least one host trait/);
    const { host: _host, ...noHost } = DEVIATION;
    expect(() => parseDeviations(deviationsText(noHost))).toThrow(/host must name at least one host trait/);
  });

  it('rejects invalid regular expressions in the failure or the host', () => {
    expect(() => parseDeviations(deviationsText({ ...DEVIATION, failure: 'CPUID(' }))).toThrow(/invalid regular expression "CPUID\("/);
    expect(() => parseDeviations(deviationsText({ ...DEVIATION, host: { cpuModel: '[Xeon' } }))).toThrow(/invalid regular expression/);
    expect(() => parseDeviations(deviationsText({ ...DEVIATION, host: { kernelRelease: '*6' } }))).toThrow(/invalid regular expression/);
  });
});

describe('hostMatches and matchDeviation', () => {
  const file = parseDeviations(deviationsText(DEVIATION));

  it('needs every named host trait to match', () => {
    expect(hostMatches(DEVIATION.host, fingerprint())).toBe(true);
    expect(hostMatches(DEVIATION.host, fingerprint({ modules: ['kvm_intel'] }))).toBe(false);
    expect(hostMatches(DEVIATION.host, fingerprint({ qemu: '8.2.2' }))).toBe(false);
    expect(hostMatches(DEVIATION.host, fingerprint({ qemu: null }))).toBe(false);
    expect(hostMatches({ kernelRelease: '^6\\.18\\.' }, fingerprint())).toBe(true);
    expect(hostMatches({ kernelRelease: '^6\\.8\\.' }, fingerprint())).toBe(false);
    expect(hostMatches({ cpuModel: 'EPYC' }, fingerprint())).toBe(false);
    expect(hostMatches({ vendorModules: ['kvm_pvm', 'kvm_intel'] }, fingerprint())).toBe(false);
    expect(hostMatches({ vendorModules: ['kvm_pvm', 'kvm_intel'] }, fingerprint({ modules: ['kvm_intel', 'kvm_pvm'] }))).toBe(true);
  });

  it('matches when property, host and failure all match', () => {
    expect(matchDeviation(file, 'leaks.cpuid.rules', LA57, fingerprint())).toEqual(DEVIATION);
  });

  it('does not match another property, another host, or another failure of the same property on the same host', () => {
    expect(matchDeviation(file, 'leaks.cpuid.deterministic', LA57, fingerprint())).toBeUndefined();
    expect(matchDeviation(file, 'leaks.cpuid.rules', LA57, fingerprint({ modules: ['kvm_intel'] }))).toBeUndefined();
    const other = "CPUID(0x7, 0x0) on vCPU 1: ECX bit 3 is 0, but feature 'pku' = true in query-cpu-model-expansion";
    expect(matchDeviation(file, 'leaks.cpuid.rules', other, fingerprint())).toBeUndefined();
  });
});

describe('known-deviations files', () => {
  it('a missing file is a DeviationsError naming ENOENT', () => {
    const missing = join(tmpdir(), 'kvmprop-no-such-dir', 'known-deviations.json');
    expect(() => loadDeviations(missing)).toThrow(DeviationsError);
    expect(() => loadDeviations(missing)).toThrow(/ENOENT/);
  });

  it('the project’s known-deviations.json parses; each entry names a property and has working regexes', async () => {
    // Imported here so that a suite that does not load fails this test only.
    const { propertyById, FAMILIES } = await import('../suites/registry.js');
    const { HOST_CHECKS } = await import('../suites/lib/machine.js');
    const known = (p: string) =>
      Object.values(HOST_CHECKS).includes(p as never) ||
      (p.endsWith('.*') ? FAMILIES.flatMap((f) => f.properties).some((x) => x.id.startsWith(p.slice(0, -1))) : propertyById(p) !== undefined);
    const path = join(import.meta.dirname, 'known-deviations.json');
    const file = loadDeviations(path);
    expect(file.deviations.length).toBeGreaterThan(0);
    const ids = new Set<string>();
    for (const d of file.deviations) {
      expect(ids.has(d.id), `duplicate id ${d.id}`).toBe(false);
      ids.add(d.id);
      expect(known(d.property), `${d.id}: property ${d.property}`).toBe(true);
      for (const re of [d.failure, d.host.kernelRelease, d.host.qemuVersion, d.host.cpuModel]) {
        if (re !== undefined) expect(() => new RegExp(re), `${d.id}: ${re}`).not.toThrow();
      }
    }
    // The la57 entry waives exactly its failure on a kvm_pvm host with QEMU 7.2.
    expect(matchDeviation(file, 'leaks.cpuid.rules', LA57, fingerprint())?.id).toBe('pvm-cpuid-hides-la57');
    expect(matchDeviation(file, 'leaks.cpuid.rules', LA57, fingerprint({ modules: ['kvm_intel'] }))).toBeUndefined();
  });
});

describe('counterexample JSON values', () => {
  it('tags bigint and bytes, nested in arrays and objects, and round-trips them', () => {
    const v = {
      seed: 7,
      name: 'x',
      none: null,
      addr: 0xfee00000n,
      big: (1n << 64n) - 1n,
      records: [{ rax: 0xc3a596e15a7de8b4n, buffer: Uint8Array.from([0, 1, 0xff]) }, [1n, [Uint8Array.from([])]]],
      deep: { a: { b: [0n] } },
    };
    const json = toJsonValue(v);
    expect(json).toEqual({
      seed: 7,
      name: 'x',
      none: null,
      addr: { $bigint: '0xfee00000' },
      big: { $bigint: '0xffffffffffffffff' },
      records: [{ rax: { $bigint: '0xc3a596e15a7de8b4' }, buffer: { $bytes: '0001ff' } }, [{ $bigint: '0x1' }, [{ $bytes: '' }]]],
      deep: { a: { b: [{ $bigint: '0x0' }] } },
    });
    expect(fromJsonValue(JSON.parse(JSON.stringify(json)))).toEqual(v);
  });

  it('drops undefined object fields', () => {
    expect(toJsonValue({ a: 1, b: undefined })).toEqual({ a: 1 });
  });

  it('leaves objects that merely contain a tag key alone', () => {
    const o = { $bigint: '0x1', other: 2 };
    expect(fromJsonValue(o)).toEqual(o);
  });
});

describe('counterexample files', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'kvmprop-ce-'));
  });
  afterAll(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const ce: Counterexample = {
    schema: COUNTEREXAMPLE_SCHEMA,
    version: 1,
    property: 'leaks.device.unclaimed',
    family: 'leaks',
    rule: 'the output agrees with QEMU’s CPU model',
    statement: 'unclaimed reads are all-ones',
    seed: 42,
    path: '3:1:0',
    replay: 'npx kvmprop replay ce.json',
    options: { machine: 'microvm', qemuArgs: [] },
    hostId: 'abc123',
    summary: 'IN AL, 0x300 read 0x00',
    workload: { sweeps: [{ windowStart: 0x300n, width: 1 }] },
    expected: { rax: { value: Uint8Array.from([0xff]), mask: Uint8Array.from([0xff]) } },
    observed: { rax: 0xc3a596e15a7de800n },
    createdAt: '2026-01-01T00:00:00.000Z',
  };

  it('round-trips through writeCounterexample and readCounterexample, creating directories', () => {
    const file = join(dir, 'nested', 'deeper', 'ce.json');
    writeCounterexample(file, ce);
    expect(readFileSync(file, 'utf8')).toMatch(/"\$bigint": "0x300"/);
    expect(readCounterexample(file)).toEqual(ce);
  });

  it('reports a missing file', () => {
    expect(() => readCounterexample(join(dir, 'missing.json'))).toThrow(CounterexampleError);
    expect(() => readCounterexample(join(dir, 'missing.json'))).toThrow(/cannot read .*missing\.json: ENOENT/);
  });

  it('reports a file that is not JSON', () => {
    const file = join(dir, 'bad.json');
    writeFileSync(file, '{"schema":');
    expect(() => readCounterexample(file)).toThrow(/is not valid JSON/);
  });

  it('reports a file of the wrong schema or without a workload', () => {
    const wrong = join(dir, 'wrong.json');
    writeFileSync(wrong, JSON.stringify({ ...toJsonValue(ce) as object, schema: 'kvmprop-results' }));
    expect(() => readCounterexample(wrong)).toThrow(/is not a kvmprop counterexample/);
    writeFileSync(wrong, JSON.stringify({ ...toJsonValue(ce) as object, version: 2 }));
    expect(() => readCounterexample(wrong)).toThrow(/is not a kvmprop counterexample/);
    const { workload: _w, ...noWorkload } = ce;
    writeFileSync(wrong, JSON.stringify(toJsonValue(noWorkload)));
    expect(() => readCounterexample(wrong)).toThrow(/has no property or workload/);
  });
});
