/**
 * CPUID leaks nothing: for leaves from every range and subleaves small, boundary and random, the
 * output is deterministic (on repeat, on every vCPU, in fresh VMs of different RAM sizes), follows
 * the rule model and QEMU's description of the CPU, and never carries the host's leak pattern.
 * Before each CPUID the guest fills every GPR but RSP with a canary.
 */
import fc from 'fast-check';
import { cpuidOp, cpuidOps, cpuidWorkloadArb, expandQueries, type CpuidQuery, type CpuidWorkload } from '../../generators/cpuid.js';
import type { OpRecord } from '../../ir/ops.js';
import { DEFAULT_CANARY } from '../../ir/program.js';
import type { MachineFacts } from '../../harness/facts.js';
import { findHostPattern, valueBytes } from '../../models/hostPattern.js';
import {
  calibrationQueries,
  expansionBits,
  key,
  KVMPROP_GUEST_STATE,
  maxLeaves,
  perCpuMask,
  REGS,
  ruleValue,
  type CpuidFacts,
  type CpuidRegs,
} from '../../models/cpuid/model.js';
import { answererForAccel } from '../../models/cpuid/leaves.js';
import { machineConfig } from '../lib/options.js';
import { defineProperty, PASS, type SuiteEnv, type Verdict } from '../lib/property.js';
import { factsFor, runProgram } from '../lib/run.js';

/** vCPUs of every CPUID VM: enough to see per-vCPU fields and cross-vCPU determinism. */
const VCPUS = 2;
const GPR_NAMES = ['rax', 'rcx', 'rdx', 'rbx', 'rsp', 'rbp', 'rsi', 'rdi', 'r8', 'r9', 'r10', 'r11', 'r12', 'r13', 'r14', 'r15'];

interface CpuidSuiteFacts {
  readonly machine: MachineFacts;
  readonly cpuid: CpuidFacts;
}

const hex = (n: number | bigint) => `0x${n.toString(16)}`;

/** A workload of one query: the witness a failure offers for shrinking. */
function queryWitness(x: CpuidQuery, repeat: number): CpuidWorkload {
  return { sweeps: [{ leaf: x.leaf, leafCount: 1, subleaf: x.subleaf, subleafCount: 1, cpl: x.cpl }], repeat };
}
const q = (x: CpuidQuery) => `CPUID(${hex(x.leaf)}, ${hex(x.subleaf)})${x.cpl === 3 ? ' at CPL 3' : ''}`;

/**
 * The CPLs the properties judge the hypervisor's answers at. CPL 0 always traps to the hypervisor;
 * CPL 3 does only where the host can intercept user-mode CPUID (leaks.cpuid.cpl-invariant checks
 * that it answers both alike), so the rule and determinism properties judge CPL-0 answers and an
 * unrelated CPUID bug still fails them on a host whose CPL-3 CPUID is not intercepted.
 */
const HYPERVISOR_CPL = [0] as const;

/** The 32-bit low halves of a CPUID record. */
function regsOf(r: OpRecord): CpuidRegs {
  return {
    eax: Number((r.fields.rax ?? 0n) & 0xffffffffn),
    ebx: Number((r.fields.rbx ?? 0n) & 0xffffffffn),
    ecx: Number((r.fields.rcx ?? 0n) & 0xffffffffn),
    edx: Number((r.fields.rdx ?? 0n) & 0xffffffffn),
  };
}

function regsHex(r: CpuidRegs): Record<string, string> {
  return Object.fromEntries(REGS.map((k) => [k, hex(r[k])]));
}

const factsCache = new Map<string, Promise<CpuidSuiteFacts>>();

/**
 * Host facts for CPUID: QEMU's expansion of the CPU model, and a calibration table of every
 * in-range leaf read once on vCPU 0 of a VM with the same topology as the property VMs.
 */
function cpuidFacts(env: SuiteEnv): Promise<CpuidSuiteFacts> {
  const cacheKey = JSON.stringify([machineConfig(env.options, { cpus: VCPUS }), env.options.mutant ?? '']);
  const cached = factsCache.get(cacheKey);
  if (cached) return cached;
  const factsPromise = (async () => {
    const machine = await factsFor(env, { cpus: VCPUS });
    // Calibrated at CPL 0: always the hypervisor's answer.
    const queries: CpuidQuery[] = [
      ...calibrationQueries(machine.cpu.props, 0x4000_0010),
      ...Array.from({ length: 0x11 }, (_, i) => ({ leaf: 0x4000_0100 + i, subleaf: 0 })),
    ].map((x) => ({ ...x, cpl: 0 }));
    const outcome = await runProgram(
      env,
      { threads: [queries.map(cpuidOp)], canary: DEFAULT_CANARY },
      { label: 'cpuid-calibration', config: { cpus: VCPUS } },
    );
    if (!outcome.ok) throw new Error(`CPUID calibration run failed: ${outcome.failure.summary}`);
    const table = new Map<string, CpuidRegs>();
    outcome.run.records[0]!.forEach((r, i) => table.set(key(queries[i]!.leaf, queries[i]!.subleaf), regsOf(r)));
    return {
      machine,
      cpuid: {
        expansion: machine.cpu.props,
        table,
        apicIds: Array.from({ length: VCPUS }, (_, i) => i),
        guest: KVMPROP_GUEST_STATE,
        // Under TCG QEMU answers CPUID itself, by its own range rules.
        answerer: answererForAccel(env.options.accel),
        filteredFeatures: machine.filteredFeatures,
      },
    };
  })();
  factsPromise.catch(() => factsCache.delete(cacheKey));
  factsCache.set(cacheKey, factsPromise);
  return factsPromise;
}

function rangesOf(f: CpuidSuiteFacts) {
  const m = maxLeaves(f.cpuid.expansion);
  const hv = f.cpuid.table.get(key(0x4000_0000, 0))?.eax ?? 0x4000_0000;
  return { maxBasic: m.basic, maxExtended: m.extended, maxHypervisor: hv >= 0x4000_0000 && hv < 0x4000_0100 ? hv : 0x4000_0001 };
}

/** Run the queries `repeat` times on every vCPU; records[t][k] answers queries[k % n] on vCPU t. */
async function runQueries(env: SuiteEnv, w: CpuidWorkload, label: string, ramMiB?: number) {
  const ops = cpuidOps(w);
  const outcome = await runProgram(env, { threads: Array.from({ length: VCPUS }, () => ops), canary: DEFAULT_CANARY }, {
    label,
    config: { cpus: VCPUS, ...(ramMiB ? { ramMiB } : {}) },
  });
  if (outcome.ok) env.metrics.add('cpuidQueries', outcome.run.records.reduce((n, t) => n + t.length, 0));
  return outcome;
}

interface DeterminismCase {
  readonly cpuid: CpuidWorkload;
  /** RAM sizes of the two fresh VMs. */
  readonly ramMiB: readonly [number, number];
}

export const cpuidDeterministic = defineProperty({
  id: 'leaks.cpuid.deterministic',
  suite: 'leaks',
  statement:
    'The same (leaf, subleaf) gives the same CPUID output on repeat, on every vCPU (apart from the per-vCPU topology IDs the model lists) and in fresh VMs with different RAM sizes',
  facts: cpuidFacts,
  arbitrary: (f: CpuidSuiteFacts) =>
    fc.record({
      cpuid: cpuidWorkloadArb(rangesOf(f), { minRepeat: 2, maxRepeat: 3, maxSweeps: 32, cpls: HYPERVISOR_CPL }),
      ramMiB: fc.constantFrom<[number, number]>([64, 96], [96, 64], [48, 128], [128, 48]),
    }),
  async check(c: DeterminismCase, f, env): Promise<Verdict> {
    const queries = expandQueries(c.cpuid);
    const firstByQuery = new Map<string, { regs: CpuidRegs; where: string }>();
    const firstByQueryCpu = new Map<string, { regs: CpuidRegs; where: string }>();
    for (const [vmIndex, ram] of c.ramMiB.entries()) {
      const outcome = await runQueries(env, c.cpuid, `det-${'ab'[vmIndex]}`, ram);
      if (!outcome.ok) return outcome.verdict;
      for (const [t, records] of outcome.run.records.entries()) {
        for (const [k, r] of records.entries()) {
          const query = queries[k % queries.length]!;
          const regs = regsOf(r);
          const where = `vCPU ${t} of VM ${'AB'[vmIndex]} (${ram} MiB), repeat ${Math.floor(k / queries.length) + 1}`;
          const kq = key(query.leaf, query.subleaf);
          const sameCpu = firstByQueryCpu.get(`${kq}/${t}`);
          const anyCpu = firstByQuery.get(kq);
          const perCpu = perCpuMask(f.cpuid, query.leaf, query.subleaf);
          for (const reg of REGS) {
            const ref = sameCpu ?? anyCpu;
            if (!ref) continue;
            const mask = sameCpu ? 0xffffffff : ~perCpu[reg] >>> 0;
            if (((regs[reg] ^ ref.regs[reg]) & mask) !== 0) {
              const m = env.mismatch(
                `${q(query)}.${reg.toUpperCase()} on ${where} is ${hex(regs[reg])}, but ${ref.where} gave ${hex(ref.regs[reg])} (differing bits ${hex(((regs[reg] ^ ref.regs[reg]) & mask) >>> 0)})`,
                { query, at: ref.where, ...regsHex(ref.regs) },
                { query, at: where, ...regsHex(regs) },
                { witness: { cpuid: queryWitness(query, c.cpuid.repeat), ramMiB: c.ramMiB } },
              );
              if (m) return m;
            }
          }
          if (!sameCpu) firstByQueryCpu.set(`${kq}/${t}`, { regs, where });
          if (!anyCpu) firstByQuery.set(kq, { regs, where });
        }
      }
    }
    return PASS;
  },
});

export const cpuidRules = defineProperty({
  id: 'leaks.cpuid.rules',
  suite: 'leaks',
  statement:
    "Every CPUID output follows the rule model: RAX..RDX[63:32] are zero and no other GPR changes; vendor, max leaves, brand, signature and feature bits agree with QEMU's query-cpu-model-expansion; ECX is ignored by non-indexed leaves; missing subleaves of indexed leaves read zero (0xB/0x1F echo the subleaf and the x2APIC ID); out-of-range leaves follow the vendor's rule",
  facts: cpuidFacts,
  arbitrary: (f: CpuidSuiteFacts) => cpuidWorkloadArb(rangesOf(f), { maxRepeat: 1, cpls: HYPERVISOR_CPL }),
  async check(w: CpuidWorkload, f, env): Promise<Verdict> {
    const queries = expandQueries(w);
    const outcome = await runQueries(env, w, 'rules');
    if (!outcome.ok) return outcome.verdict;
    // The rules judge an observation, so each distinct (query, vCPU, output) is judged once: repeats
    // and identical vCPUs add nothing but time (and would recount the same known deviations).
    const judged = new Set<string>();
    for (const [t, records] of outcome.run.records.entries()) {
      for (const [k, r] of records.entries()) {
        const query = queries[k % queries.length]!;
        const f0 = r.fields;
        const seenKey = `${query.leaf},${query.subleaf},${t},${f0.rax},${f0.rbx},${f0.rcx},${f0.rdx},${f0.clobbered},${r.faultVector}`;
        if (judged.has(seenKey)) continue;
        judged.add(seenKey);
        const where = `${q(query)} on vCPU ${t}`;
        if (r.faultVector !== null) {
          const m = env.mismatch(`${where} raised exception vector ${r.faultVector}`, 'no exception', { vector: r.faultVector, errorCode: r.errorCode }, { witness: queryWitness(query, 1) });
          if (m) return m;
        }
        for (const reg of ['rax', 'rbx', 'rcx', 'rdx'] as const) {
          const v = r.fields[reg] ?? 0n;
          if (v >> 32n !== 0n) {
            const m = env.mismatch(
              `${where}: ${reg.toUpperCase()}[63:32] is ${hex(v >> 32n)} (canary upper half ${hex(DEFAULT_CANARY >> 32n)}); CPUID must clear bits 63:32`,
              { [reg]: '0x00000000????????' },
              { [reg]: hex(v) },
              { witness: queryWitness(query, 1) },
            );
            if (m) return m;
          }
        }
        const clobbered = Number(r.fields.clobbered ?? 0n);
        if (clobbered !== 0) {
          const names = GPR_NAMES.filter((_, i) => clobbered & (1 << i));
          const m = env.mismatch(`${where} changed ${names.join(', ')}: CPUID writes only RAX..RDX`, { clobbered: [] }, { clobbered: names }, { witness: queryWitness(query, 1) });
          if (m) return m;
        }
        const regs = regsOf(r);
        // QEMU's description of the CPU, one fact (one feature bit, the vendor, ...) at a time.
        const qemu = expansionBits(f.cpuid, query.leaf, query.subleaf, t);
        for (const src of qemu.sources) {
          const bad = ((regs[src.reg] ^ qemu.value[src.reg]) & src.mask) >>> 0;
          if (!bad) continue;
          const single = (src.mask & (src.mask - 1)) === 0;
          const bit = single ? 31 - Math.clz32(src.mask) : -1;
          const m = env.mismatch(
            single
              ? `${where}: ${src.reg.toUpperCase()} bit ${bit} is ${(regs[src.reg] >>> bit) & 1}, but ${src.what}`
              : `${where}: ${src.reg.toUpperCase()} is ${hex(regs[src.reg])}, but ${src.what} requires ${hex((qemu.value[src.reg] & src.mask) >>> 0)} under mask ${hex(src.mask)}`,
            { query, [src.reg]: { value: hex((qemu.value[src.reg] & src.mask) >>> 0), mask: hex(src.mask) }, source: src.what },
            { query, vcpu: t, ...regsHex(regs) },
            { witness: queryWitness(query, 1) },
          );
          if (m) return m;
        }
        // KVM's lookup rules over the calibration table; bits QEMU's model already judged are not judged twice.
        const rule = ruleValue(f.cpuid, query.leaf, query.subleaf, t);
        for (const reg of REGS) {
          const bad = ((regs[reg] ^ rule.value[reg]) & rule.mask[reg] & ~qemu.mask[reg]) >>> 0;
          if (bad) {
            const m = env.mismatch(
              `${where}: ${reg.toUpperCase()} is ${hex(regs[reg])}, expected ${hex(rule.value[reg])} (${rule.rule})`,
              { query, rule: rule.rule, ...regsHex(rule.value) },
              { query, vcpu: t, ...regsHex(regs) },
              { witness: queryWitness(query, 1) },
            );
            if (m) return m;
          }
        }
      }
    }
    return PASS;
  },
});

export const cpuidNoHostPattern = defineProperty({
  id: 'leaks.cpuid.no-host-pattern',
  suite: 'leaks',
  statement: 'No CPUID output, at CPL 0 or CPL 3, in any register half, ever contains the pattern the host filled and freed its memory with',
  facts: cpuidFacts,
  arbitrary: (f: CpuidSuiteFacts) => cpuidWorkloadArb(rangesOf(f), { maxRepeat: 1, cpls: [0, 3] }),
  async check(w: CpuidWorkload, _f, env): Promise<Verdict> {
    const queries = expandQueries(w);
    const outcome = await runQueries(env, w, 'cpuid-pattern');
    if (!outcome.ok) return outcome.verdict;
    for (const [t, records] of outcome.run.records.entries()) {
      for (const [k, r] of records.entries()) {
        // RAX..RDX as they sit side by side (a leak may straddle registers), then all 64-bit values.
        const low = new Uint8Array(16);
        const full = new Uint8Array(32);
        (['rax', 'rbx', 'rcx', 'rdx'] as const).forEach((reg, i) => {
          const v = r.fields[reg] ?? 0n;
          low.set(valueBytes(v, 4), 4 * i);
          full.set(valueBytes(v, 8), 8 * i);
        });
        const seen = [...findHostPattern(low), ...findHostPattern(full)];
        if (seen.length > 0) {
          const m = env.mismatch(`${q(queries[k % queries.length]!)} on vCPU ${t} returned ${seen[0]!.length} bytes of the host leak pattern`, 'no host pattern bytes', {
            query: queries[k % queries.length],
            rax: hex(r.fields.rax ?? 0n),
            rbx: hex(r.fields.rbx ?? 0n),
            rcx: hex(r.fields.rcx ?? 0n),
            rdx: hex(r.fields.rdx ?? 0n),
          }, { witness: queryWitness(queries[k % queries.length]!, 1) });
          if (m) return m;
        }
      }
    }
    return PASS;
  },
});

export const cpuidCplInvariant = defineProperty({
  id: 'leaks.cpuid.cpl-invariant',
  suite: 'leaks',
  statement:
    'CPUID answers identically at CPL 0 and CPL 3: the hypervisor answers both (a host that lets CPL-3 CPUID run natively shows its own CPU to guest user space)',
  facts: cpuidFacts,
  // Each query runs twice on the same vCPU, first at CPL 0 then at CPL 3; the sweep's own CPL is not used.
  arbitrary: (f: CpuidSuiteFacts) => cpuidWorkloadArb(rangesOf(f), { maxRepeat: 1, maxSweeps: 24, cpls: HYPERVISOR_CPL }),
  async check(w: CpuidWorkload, _f, env): Promise<Verdict> {
    const queries = expandQueries(w);
    const ops = queries.flatMap((x) => [cpuidOp({ ...x, cpl: 0 }), cpuidOp({ ...x, cpl: 3 })]);
    const outcome = await runProgram(env, { threads: Array.from({ length: VCPUS }, () => ops), canary: DEFAULT_CANARY }, { label: 'cpl', config: { cpus: VCPUS } });
    if (!outcome.ok) return outcome.verdict;
    env.metrics.add('cpuidQueries', outcome.run.records.reduce((n, t) => n + t.length, 0));
    for (const [t, records] of outcome.run.records.entries()) {
      for (let k = 0; k + 1 < records.length; k += 2) {
        const query = { ...queries[k / 2]!, cpl: 0 as const };
        const at0 = regsOf(records[k]!);
        const at3 = regsOf(records[k + 1]!);
        for (const reg of REGS) {
          if (at0[reg] === at3[reg]) continue;
          const m = env.mismatch(
            `${q(query)}.${reg.toUpperCase()} on vCPU ${t} is ${hex(at0[reg])} at CPL 0 but ${hex(at3[reg])} at CPL 3 (differing bits ${hex((at0[reg] ^ at3[reg]) >>> 0)})`,
            { query, vcpu: t, cpl: 0, ...regsHex(at0) },
            { query, vcpu: t, cpl: 3, ...regsHex(at3) },
            { witness: queryWitness(query, 1) },
          );
          if (m) return m;
        }
      }
    }
    return PASS;
  },
});
