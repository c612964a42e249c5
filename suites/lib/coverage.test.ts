/**
 * KVM counters as coverage, no VM: per-VM deltas into a property's metrics, claims judged (met,
 * unmet, not driven on a host that cannot, not measured under TCG), the result validating, and the
 * run summary's lines. The real readings are harness/kvmStats.test.ts's; the real runs the README's.
 */
import { describe, expect, it } from 'vitest';
import type { HostFingerprint } from '../../harness/fingerprint.js';
import type { KvmStatsRun } from '../../harness/vm.js';
import { validateResults, type PropertyResult } from '../../reports/schema.js';
import { defineFamily } from './family.js';
import { judgeClaims, kvmReport, kvmSummaryLines, NOT_MEASURED_TCG, recordKvmStats, unmetClaims, type CoverageClaim } from './coverage.js';
import { defineProperty, Metrics } from './property.js';
import { FAMILIES } from '../registry.js';

const host = (vendorModules: string[], flags: string[] = []) => ({ kvm: { vendorModules, modules: [] }, cpu: { flags } }) as unknown as HostFingerprint;
const vmx = host(['kvm_intel'], ['vmx']);
const pvm = host(['kvm_pvm']);

/** One VM's run: `mmio` MMIO exits on vCPU 0, 1 on vCPU 1, and a histogram and a peak. */
const run = (mmio: number, at: KvmStatsRun['at'] = 'finished'): KvmStatsRun => ({
  at,
  delta: {
    vm: { remote_tlb_flush: { type: 'cumulative', value: 2 }, max_mmu_rmap_size: { type: 'peak', value: mmio } },
    vcpus: [
      { exits: { type: 'cumulative', value: 10 }, mmio_exits: { type: 'cumulative', value: mmio }, io_exits: { type: 'cumulative', value: 0 }, halt_wait_hist: { type: 'log2-histogram', buckets: [0, 1] } },
      { exits: { type: 'cumulative', value: 5 }, mmio_exits: { type: 'cumulative', value: 1 }, halt_wait_hist: { type: 'log2-histogram', buckets: [1, 0, 2] } },
    ],
  },
});

describe('recordKvmStats', () => {
  it('adds every cumulative counter (zeros too), keeps per-VM samples of the headline ones, the largest peak and summed histograms', () => {
    const m = new Metrics();
    recordKvmStats(m, run(3), { role: 'workload' });
    recordKvmStats(m, run(7, 'outcome'), { role: 'workload' });
    recordKvmStats(m, null);
    expect(m.counts).toEqual({ 'kvm.vms': 2, 'kvm.vmsReadAtOutcome': 1, 'kvm.vm.remote_tlb_flush': 4, 'kvm.vcpu.exits': 30, 'kvm.vcpu.mmio_exits': 12, 'kvm.vcpu.io_exits': 0 });
    expect(m.samples['kvm.vcpu.mmio_exits']).toEqual([{ value: 4, labels: { role: 'workload' } }, { value: 8, labels: { role: 'workload' } }]);
    expect(m.samples['kvm.vcpu.io_exits']).toEqual([{ value: 0, labels: { role: 'workload' } }, { value: 0, labels: { role: 'workload' } }]);
    expect(m.kvm.levels).toEqual({ 'vm.max_mmu_rmap_size': 7 });
    expect(m.kvm.histograms).toEqual({ 'vcpu.halt_wait_hist': { type: 'log2-histogram', buckets: [2, 2, 4] } });
  });
});

describe('judgeClaims', () => {
  const claims: CoverageClaim[] = [
    { properties: ['p.reads'], anyOf: ['vcpu.io_exits', 'vcpu.mmio_exits'], why: 'reads reach QEMU' },
    { properties: ['p.reads'], anyOf: ['vcpu.io_exits'], why: 'port reads exit', notOn: [{ vendorModule: 'kvm_pvm', reason: 'kvm_pvm does not count io_exits' }] },
    { properties: ['p.cpuid'], anyOf: ['vcpu.exits'], atLeast: ['cpuidQueries'], why: 'CPUID exits', notOn: [{ vendorModule: 'kvm_pvm', lacksCpuFlag: 'cpuid_fault', reason: 'no cpuid_fault' }] },
  ];
  const kvm = { accel: 'kvm' as const };

  it('judges only the claims about the property, against its totals', () => {
    const reads = judgeClaims(claims, 'p.reads', { 'kvm.vms': 2, 'kvm.vcpu.mmio_exits': 5, 'kvm.vcpu.io_exits': 0 }, vmx, kvm);
    expect(reads).toEqual([
      { counters: ['vcpu.io_exits', 'vcpu.mmio_exits'], why: 'reads reach QEMU', status: 'met', total: 5, needed: 1 },
      { counters: ['vcpu.io_exits'], why: 'port reads exit', status: 'unmet', total: 0, needed: 1 },
    ]);
  });

  it('flags a property that never drove its path: a device-read property with no I/O or MMIO exits', () => {
    const [c] = judgeClaims(claims, 'p.reads', { 'kvm.vms': 5, 'kvm.vcpu.exits': 900 }, pvm, kvm);
    expect(c).toMatchObject({ status: 'unmet', total: 0 });
  });

  it('holds a counter to the property’s own metric: fewer exits than CPUID queries is unmet', () => {
    expect(judgeClaims(claims, 'p.cpuid', { 'kvm.vms': 1, 'kvm.vcpu.exits': 99, cpuidQueries: 100 }, vmx, kvm)[0]).toMatchObject({ status: 'unmet', total: 99, needed: 100 });
    expect(judgeClaims(claims, 'p.cpuid', { 'kvm.vms': 1, 'kvm.vcpu.exits': 150, cpuidQueries: 100 }, vmx, kvm)[0]).toMatchObject({ status: 'met' });
  });

  it('reports what this host cannot drive as not driven, with the reason, never unmet', () => {
    const [, io] = judgeClaims(claims, 'p.reads', { 'kvm.vms': 2, 'kvm.vcpu.mmio_exits': 5 }, pvm, kvm);
    expect(io).toEqual({ counters: ['vcpu.io_exits'], why: 'port reads exit', status: 'not-driven', total: 0, needed: 1, reason: 'kvm_pvm does not count io_exits' });
    // Every field of the condition must hold: kvm_pvm with cpuid_fault can intercept CPL-3 CPUID.
    expect(judgeClaims(claims, 'p.cpuid', { 'kvm.vms': 1, 'kvm.vcpu.exits': 1, cpuidQueries: 9 }, pvm, kvm)[0]!.status).toBe('not-driven');
    expect(judgeClaims(claims, 'p.cpuid', { 'kvm.vms': 1, 'kvm.vcpu.exits': 1, cpuidQueries: 9 }, host(['kvm_pvm'], ['cpuid_fault']), kvm)[0]!.status).toBe('unmet');
  });

  it('judges nothing under TCG or without a measured VM: not measured, with the reason', () => {
    const tcg = judgeClaims(claims, 'p.reads', { vms: 3 }, vmx, { accel: 'tcg' });
    expect(tcg.map((c) => [c.status, c.total, c.reason])).toEqual([
      ['not-measured', null, NOT_MEASURED_TCG],
      ['not-measured', null, NOT_MEASURED_TCG],
    ]);
    expect(judgeClaims(claims, 'p.reads', { vms: 3 }, vmx, kvm).every((c) => c.status === 'not-measured' && /no VM/.test(c.reason!))).toBe(true);
  });
});

describe('the result and the summary', () => {
  const result = (id: string, family: string, m: Metrics, claims: ReturnType<typeof judgeClaims>): PropertyResult => {
    const kvm = kvmReport(m, claims);
    return { id, family, statement: 's', status: 'pass', numRuns: 1, seed: 1, durationMs: 1, metrics: m.counts, ...(kvm ? { kvm } : {}) };
  };
  const m = new Metrics();
  recordKvmStats(m, run(0));
  m.counts['kvm.vcpu.mmio_exits'] = 0;
  const claims = judgeClaims([{ anyOf: ['vcpu.mmio_exits'], why: 'reads reach QEMU' }], 'p.reads', m.counts, vmx, { accel: 'kvm' });
  const props = [result('p.reads', 'fam', m, claims), result('p.tcg', 'fam', new Metrics(), [{ counters: ['vcpu.exits'], why: 'w', status: 'not-measured', total: null, reason: NOT_MEASURED_TCG }])];

  it('validates, and the validator catches a malformed claim', () => {
    expect(validateResults({ schema: 'kvmprop-results', version: 2, findings: [], properties: props, status: 'pass' })).toEqual([]);
    const bad = { ...props[0]!, kvm: { measuredVms: 1, claims: [{ counters: [], why: 'w', status: 'maybe', total: null }, { counters: ['x'], why: 'w', status: 'not-driven', total: 0 }, { counters: ['x'], why: 'w', status: 'met', total: null }] } };
    expect(validateResults({ schema: 'kvmprop-results', version: 2, findings: [], properties: [bad], status: 'pass' })).toEqual([
      'properties[0].kvm.claims[0].counters must name counters',
      'properties[0].kvm.claims[0].status "maybe" unknown',
      'properties[0].kvm.claims[1]: not-driven without a reason',
      'properties[0].kvm.claims[2]: a judged claim needs its total',
    ]);
  });

  it('prints what each family made KVM do, and one line per unmet claim', () => {
    const lines = kvmSummaryLines(props);
    expect(lines[0]).toMatch(/^kvm paths \(fam, 1 VMs\): exits 15, io_exits 0, mmio_exits 0, /);
    expect(lines[1]).toBe(`kvm claims (fam): met 0, unmet 1, not driven here 0, not measured 1 (vcpu.exits: ${NOT_MEASURED_TCG})`);
    expect(lines[2]).toBe('UNMET CLAIM     p.reads  vcpu.mmio_exits 0 < 1 over 1 VMs: reads reach QEMU');
    expect(lines).toHaveLength(3);
    expect(unmetClaims(props)).toBe(1);
  });
});

describe('claims in the manifests', () => {
  it('name real properties and counters, and defineFamily refuses ones that do not', () => {
    expect(FAMILIES.flatMap((f) => f.coverage ?? []).length).toBeGreaterThan(0);
    const p = defineProperty({ id: 'f.p', family: 'f', statement: 's', facts: async () => null, arbitrary: () => null as never, observe: async () => ({ ok: true as const, value: 0 }), rules: [] });
    const f = { name: 'f', title: 't', properties: [p], roles: {}, requires: [], metrics: [], mutants: [] };
    expect(() => defineFamily({ ...f, coverage: [{ properties: ['f.q'], anyOf: ['vcpu.exits'], why: 'w' }] })).toThrow(/does not have: f\.q/);
    expect(() => defineFamily({ ...f, coverage: [{ anyOf: ['exits'], why: 'w' }] })).toThrow(/vm\.<name> or vcpu\.<name>/);
    expect(defineFamily({ ...f, coverage: [{ anyOf: ['vcpu.exits'], why: 'w' }] }).coverage).toHaveLength(1);
  });
});
