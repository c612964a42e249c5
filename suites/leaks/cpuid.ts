/**
 * CPUID leaks nothing: for leaves from every range and subleaves small, boundary and random, the
 * output is deterministic (on repeat, on every vCPU, in fresh VMs of different RAM sizes), follows
 * the rule model and QEMU's description of the CPU, is the same at CPL 0 and CPL 3, and never
 * carries the host's leak pattern. Before each CPUID the guest fills every GPR but RSP with a canary.
 */
import fc from 'fast-check';
import { cpuidOp, cpuidOps, cpuidWorkloadArb, expandQueries, type CpuidQuery, type CpuidWorkload } from '../../generators/cpuid.js';
import { recordsOf, type RecordOf } from '../../ir/ops.js';
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
import { maskText, type Check } from '../../ir/checks.js';
import { NO_FAULT } from '../../ir/ops.js';
import { defineProperty, difference, rule, type Difference, type Observation, type PropertyEnv, type ReproPlan } from '../lib/property.js';
import { factsFor, observeProgram, type VmRole } from '../lib/run.js';

/** vCPUs of every CPUID VM: enough to see per-vCPU fields and cross-vCPU determinism. */
const VCPUS = 2;
const GPR_NAMES = ['rax', 'rcx', 'rdx', 'rbx', 'rsp', 'rbp', 'rsi', 'rdi', 'r8', 'r9', 'r10', 'r11', 'r12', 'r13', 'r14', 'r15'];

export interface CpuidPropertyFacts {
  readonly machine: MachineFacts;
  readonly cpuid: CpuidFacts;
}

const hex = (n: number | bigint) => `0x${n.toString(16)}`;
const q = (x: CpuidQuery) => `CPUID(${hex(x.leaf)}, ${hex(x.subleaf)})${x.cpl === 3 ? ' at CPL 3' : ''}`;

/** A case of one query: the witness a difference offers for shrinking. */
function queryWitness(x: CpuidQuery, repeat: number): CpuidWorkload {
  return { sweeps: [{ leaf: x.leaf, leafCount: 1, subleaf: x.subleaf, subleafCount: 1, cpl: x.cpl }], repeat };
}

/**
 * The CPLs the properties judge the hypervisor's answers at. CPL 0 always traps to the hypervisor;
 * CPL 3 does only where the host can intercept user-mode CPUID (leaks.cpuid.cpl-invariant checks
 * that it answers both alike), so the rule and determinism properties judge CPL-0 answers and an
 * unrelated CPUID bug still fails them on a host whose CPL-3 CPUID is not intercepted.
 */
const HYPERVISOR_CPL = [0] as const;

/** One CPUID answer: the query (from the op that produced it), where it ran, and what came back. */
export interface Answer {
  readonly query: CpuidQuery;
  readonly vcpu: number;
  readonly record: RecordOf<'cpuid'>;
  /** The 32-bit low halves of RAX..RDX. */
  readonly regs: CpuidRegs;
}

const low = (v: bigint) => Number(v & 0xffffffffn);

function answersOf(records: readonly (readonly RecordOf<'cpuid'>[])[]): Answer[] {
  return records.flatMap((rs, vcpu) =>
    rs.map((record) => ({
      query: { leaf: record.op.leaf, subleaf: record.op.subleaf, cpl: record.op.cpl as 0 | 3 },
      vcpu,
      record,
      regs: { eax: low(record.fields.rax), ebx: low(record.fields.rbx), ecx: low(record.fields.rcx), edx: low(record.fields.rdx) },
    })),
  );
}

function regsHex(r: CpuidRegs): Record<string, string> {
  return Object.fromEntries(REGS.map((k) => [k, hex(r[k])]));
}

const factsCache = new Map<string, Promise<CpuidPropertyFacts>>();

/**
 * Host facts for CPUID: QEMU's expansion of the CPU model, and a calibration table of every
 * in-range leaf read once at CPL 0 on vCPU 0 of a VM with the same topology as the property VMs.
 */
function cpuidFacts(env: PropertyEnv): Promise<CpuidPropertyFacts> {
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
    const run = await observeProgram(env, { threads: [queries.map(cpuidOp)], canary: DEFAULT_CANARY }, { role: 'calibration', config: { cpus: VCPUS } });
    if (!run.ok) throw new Error(`CPUID calibration run failed: ${run.difference.summary}`);
    const table = new Map<string, CpuidRegs>();
    for (const a of answersOf([recordsOf(run.value.records[0]!, 'cpuid')])) table.set(key(a.query.leaf, a.query.subleaf), a.regs);
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

function rangesOf(f: CpuidPropertyFacts) {
  const m = maxLeaves(f.cpuid.expansion);
  const hv = f.cpuid.table.get(key(0x4000_0000, 0))?.eax ?? 0x4000_0000;
  return { maxBasic: m.basic, maxExtended: m.extended, maxHypervisor: hv >= 0x4000_0000 && hv < 0x4000_0100 ? hv : 0x4000_0001 };
}

/** Run `ops` on every vCPU of one VM and collect its CPUID answers. */
async function observeAnswers(env: PropertyEnv, ops: ReturnType<typeof cpuidOps>, role: VmRole, ramMiB?: number): Promise<Observation<Answer[]>> {
  const run = await observeProgram(env, { threads: Array.from({ length: VCPUS }, () => ops), canary: DEFAULT_CANARY }, {
    role,
    config: { cpus: VCPUS, ...(ramMiB ? { ramMiB } : {}) },
  });
  if (!run.ok) return run;
  const answers = answersOf(run.value.records.map((rs) => recordsOf(rs, 'cpuid')));
  env.metrics.add('cpuidQueries', answers.length);
  return { ok: true, value: answers };
}

// ---------------------------------------------------------------------------------------------
// Repro (kvmprop repro): the model's values as checks the guest evaluates itself

const RESULT_FIELD = { eax: 'rax', ebx: 'rbx', ecx: 'rcx', edx: 'rdx' } as const;
const qName = (x: CpuidQuery) => `CPUID(${hex(x.leaf)},${hex(x.subleaf)})`;

/** What the record of one answer must show whatever the leaf: no exception, bits 63:32 clear, no other GPR changed. */
function shapeChecks(thread: number, record: number, x: CpuidQuery): Check[] {
  const at = (field: string) => ({ thread, record, field });
  const who = `${qName(x)}${x.cpl === 3 ? ' at CPL 3' : ''} vCPU ${thread}`;
  return [
    { kind: 'value', name: `${who}: no exception`, at: at('faultVector'), expected: BigInt(NO_FAULT), mask: 0xffn },
    ...REGS.map((reg): Check => ({ kind: 'value', name: `${who}: ${RESULT_FIELD[reg].toUpperCase()}[63:32] zero`, at: at(RESULT_FIELD[reg]), expected: 0n, mask: 0xffff_ffff_0000_0000n })),
    { kind: 'value', name: `${who}: only RAX..RDX changed`, at: at('clobbered'), expected: 0n, mask: 0xffff_ffffn },
  ];
}

/** The rules property's model for one answer: QEMU's CPU model fact by fact, then the answerer's lookup rule for the rest. */
function modelChecks(f: CpuidPropertyFacts, thread: number, record: number, x: CpuidQuery): Check[] {
  const at = (reg: (typeof REGS)[number]) => ({ thread, record, field: RESULT_FIELD[reg] });
  const who = (reg: (typeof REGS)[number], mask: number) => `${qName(x)}.${reg.toUpperCase()}${maskText(BigInt(mask >>> 0), 32)} vCPU ${thread}`;
  const qemu = expansionBits(f.cpuid, x.leaf, x.subleaf, thread);
  const r = ruleValue(f.cpuid, x.leaf, x.subleaf, thread);
  const out: Check[] = [];
  for (const src of qemu.sources) {
    out.push({ kind: 'value', name: `${who(src.reg, src.mask)}: ${src.what}`, at: at(src.reg), expected: BigInt((qemu.value[src.reg] & src.mask) >>> 0), mask: BigInt(src.mask >>> 0) });
  }
  for (const reg of REGS) {
    const mask = (r.mask[reg] & ~qemu.mask[reg]) >>> 0;
    if (mask) out.push({ kind: 'value', name: `${who(reg, mask)}: ${r.rule}`, at: at(reg), expected: BigInt((r.value[reg] & mask) >>> 0), mask: BigInt(mask) });
  }
  return out;
}

/** A program of `ops` on every vCPU, with checks. */
const reproProgram = (ops: ReturnType<typeof cpuidOps>, checks: Check[]) => ({ threads: Array.from({ length: VCPUS }, () => ops), canary: DEFAULT_CANARY, checks });

export function cpuidRulesRepro(w: CpuidWorkload, f: CpuidPropertyFacts): ReproPlan {
  const queries = expandQueries(w);
  const checks: Check[] = [];
  for (let t = 0; t < VCPUS; t++) {
    for (let k = 0; k < queries.length * w.repeat; k++) {
      const x = queries[k % queries.length]!;
      checks.push(...shapeChecks(t, k, x), ...modelChecks(f, t, k, x));
    }
  }
  return { vms: [{ role: 'workload', program: reproProgram(cpuidOps(w), checks), config: { cpus: VCPUS } }] };
}

// ---------------------------------------------------------------------------------------------
// leaks.cpuid.rules

/** Each distinct (query, vCPU, output) once: repeats and identical vCPUs add nothing but time. */
function distinct(answers: readonly Answer[]): Answer[] {
  const seen = new Set<string>();
  return answers.filter((a) => {
    const f = a.record.fields;
    const k = `${a.query.leaf},${a.query.subleaf},${a.vcpu},${f.rax},${f.rbx},${f.rcx},${f.rdx},${f.clobbered},${a.record.faultVector}`;
    if (seen.has(k)) return false;
    seen.add(k);
    return true;
  });
}

interface Judged {
  readonly facts: CpuidPropertyFacts;
  readonly answers: readonly Answer[];
}

const where = (a: Answer) => `${q(a.query)} on vCPU ${a.vcpu}`;
const single = (a: Answer) => ({ witness: queryWitness(a.query, 1) });

function* noException({ answers }: Judged): Iterable<Difference> {
  for (const a of answers) {
    if (a.record.faultVector === null) continue;
    yield difference(`${where(a)} raised exception vector ${a.record.faultVector}`, 'no exception', { vector: a.record.faultVector, errorCode: a.record.errorCode }, single(a));
  }
}

function* upperHalvesZero({ answers }: Judged): Iterable<Difference> {
  for (const a of answers) {
    for (const reg of ['rax', 'rbx', 'rcx', 'rdx'] as const) {
      const v = a.record.fields[reg];
      if (v >> 32n === 0n) continue;
      yield difference(
        `${where(a)}: ${reg.toUpperCase()}[63:32] is ${hex(v >> 32n)} (canary upper half ${hex(DEFAULT_CANARY >> 32n)}); CPUID must clear bits 63:32`,
        { [reg]: '0x00000000????????' },
        { [reg]: hex(v) },
        single(a),
      );
    }
  }
}

function* onlyRaxToRdx({ answers }: Judged): Iterable<Difference> {
  for (const a of answers) {
    const clobbered = Number(a.record.fields.clobbered);
    if (clobbered === 0) continue;
    const names = GPR_NAMES.filter((_, i) => clobbered & (1 << i));
    yield difference(`${where(a)} changed ${names.join(', ')}: CPUID writes only RAX..RDX`, { clobbered: [] }, { clobbered: names }, single(a));
  }
}

/** QEMU's description of the CPU, one fact (one feature bit, the vendor, ...) at a time. */
function* qemuCpuModel({ facts, answers }: Judged): Iterable<Difference> {
  for (const a of answers) {
    const qemu = expansionBits(facts.cpuid, a.query.leaf, a.query.subleaf, a.vcpu);
    for (const src of qemu.sources) {
      const bad = ((a.regs[src.reg] ^ qemu.value[src.reg]) & src.mask) >>> 0;
      if (!bad) continue;
      const one = (src.mask & (src.mask - 1)) === 0;
      const bit = one ? 31 - Math.clz32(src.mask) : -1;
      yield difference(
        one
          ? `${where(a)}: ${src.reg.toUpperCase()} bit ${bit} is ${(a.regs[src.reg] >>> bit) & 1}, but ${src.what}`
          : `${where(a)}: ${src.reg.toUpperCase()} is ${hex(a.regs[src.reg])}, but ${src.what} requires ${hex((qemu.value[src.reg] & src.mask) >>> 0)} under mask ${hex(src.mask)}`,
        { query: a.query, [src.reg]: { value: hex((qemu.value[src.reg] & src.mask) >>> 0), mask: hex(src.mask) }, source: src.what },
        { query: a.query, vcpu: a.vcpu, ...regsHex(a.regs) },
        single(a),
      );
    }
  }
}

/** The answerer's lookup rules over the calibration table; bits QEMU's model already judged are not judged twice. */
function* lookupRules({ facts, answers }: Judged): Iterable<Difference> {
  for (const a of answers) {
    const qemu = expansionBits(facts.cpuid, a.query.leaf, a.query.subleaf, a.vcpu);
    const r = ruleValue(facts.cpuid, a.query.leaf, a.query.subleaf, a.vcpu);
    for (const reg of REGS) {
      if (!(((a.regs[reg] ^ r.value[reg]) & r.mask[reg] & ~qemu.mask[reg]) >>> 0)) continue;
      yield difference(
        `${where(a)}: ${reg.toUpperCase()} is ${hex(a.regs[reg])}, expected ${hex(r.value[reg])} (${r.rule})`,
        { query: a.query, rule: r.rule, ...regsHex(r.value) },
        { query: a.query, vcpu: a.vcpu, ...regsHex(a.regs) },
        single(a),
      );
    }
  }
}

export const cpuidRules = defineProperty({
  id: 'leaks.cpuid.rules',
  family: 'leaks',
  statement:
    "Every CPUID output follows the rule model: RAX..RDX[63:32] are zero and no other GPR changes; vendor, max leaves, brand, signature and feature bits agree with QEMU's query-cpu-model-expansion; ECX is ignored by non-indexed leaves; missing subleaves of indexed leaves read zero (0xB/0x1F echo the subleaf and the x2APIC ID); out-of-range leaves follow the vendor's rule",
  machine: { cpus: VCPUS },
  facts: cpuidFacts,
  arbitrary: (f: CpuidPropertyFacts) => cpuidWorkloadArb(rangesOf(f), { maxRepeat: 1, cpls: HYPERVISOR_CPL }),
  observe: async (w: CpuidWorkload, facts, env): Promise<Observation<Judged>> => {
    const o = await observeAnswers(env, cpuidOps(w), 'workload');
    return o.ok ? { ok: true, value: { facts, answers: distinct(o.value) } } : o;
  },
  rules: [
    rule('CPUID raises no exception', noException),
    rule('RAX..RDX[63:32] are zero', upperHalvesZero),
    rule('only RAX..RDX change', onlyRaxToRdx),
    rule("the output agrees with QEMU's CPU model", qemuCpuModel),
    rule("the output follows the answerer's lookup rules", lookupRules),
  ],
  repro: (w: CpuidWorkload, f: CpuidPropertyFacts) => cpuidRulesRepro(w, f),
});

// ---------------------------------------------------------------------------------------------
// leaks.cpuid.deterministic

interface DeterminismCase {
  readonly cpuid: CpuidWorkload;
  /** RAM sizes of the two fresh VMs. */
  readonly ramMiB: readonly [number, number];
}

interface Seen {
  readonly facts: CpuidPropertyFacts;
  readonly c: DeterminismCase;
  /** Answers of VM A then VM B, with the VM each came from and which repeat it was. */
  readonly answers: readonly (Answer & { vm: 'A' | 'B'; ram: number; repeat: number })[];
}

const seenAt = (a: Seen['answers'][number]) => `vCPU ${a.vcpu} of VM ${a.vm} (${a.ram} MiB), repeat ${a.repeat}`;

function compareTo(s: Seen, ref: Seen['answers'][number], a: Seen['answers'][number], mask: (reg: (typeof REGS)[number]) => number): Difference[] {
  const out: Difference[] = [];
  for (const reg of REGS) {
    const bits = ((a.regs[reg] ^ ref.regs[reg]) & mask(reg)) >>> 0;
    if (!bits) continue;
    out.push(
      difference(
        `${q(a.query)}.${reg.toUpperCase()} on ${seenAt(a)} is ${hex(a.regs[reg])}, but ${seenAt(ref)} gave ${hex(ref.regs[reg])} (differing bits ${hex(bits)})`,
        { query: a.query, at: seenAt(ref), ...regsHex(ref.regs) },
        { query: a.query, at: seenAt(a), ...regsHex(a.regs) },
        { witness: { cpuid: queryWitness(a.query, s.c.cpuid.repeat), ramMiB: s.c.ramMiB } },
      ),
    );
  }
  return out;
}

/** On the same vCPU, every repeat in both VMs answers exactly like the first. */
function* sameOnRepeat(s: Seen): Iterable<Difference> {
  const first = new Map<string, Seen['answers'][number]>();
  for (const a of s.answers) {
    const k = `${key(a.query.leaf, a.query.subleaf)}/${a.vcpu}`;
    const ref = first.get(k);
    if (!ref) first.set(k, a);
    else yield* compareTo(s, ref, a, () => 0xffffffff);
  }
}

/** Across vCPUs, the first answers agree apart from the per-vCPU topology fields the model lists. */
function* sameOnEveryVcpu(s: Seen): Iterable<Difference> {
  const first = new Map<string, Seen['answers'][number]>();
  for (const a of s.answers) {
    const k = key(a.query.leaf, a.query.subleaf);
    const ref = first.get(k);
    if (!ref) first.set(k, a);
    else if (ref.vcpu !== a.vcpu) {
      const perCpu = perCpuMask(s.facts.cpuid, a.query.leaf, a.query.subleaf);
      yield* compareTo(s, ref, a, (reg) => ~perCpu[reg] >>> 0);
    }
  }
}

export const cpuidDeterministic = defineProperty({
  id: 'leaks.cpuid.deterministic',
  family: 'leaks',
  statement:
    'The same (leaf, subleaf) gives the same CPUID output on repeat, on every vCPU (apart from the per-vCPU topology IDs the model lists) and in fresh VMs with different RAM sizes',
  machine: { cpus: VCPUS },
  facts: cpuidFacts,
  arbitrary: (f: CpuidPropertyFacts) =>
    fc.record({
      cpuid: cpuidWorkloadArb(rangesOf(f), { minRepeat: 2, maxRepeat: 3, maxSweeps: 32, cpls: HYPERVISOR_CPL }),
      ramMiB: fc.constantFrom<[number, number]>([64, 96], [96, 64], [48, 128], [128, 48]),
    }),
  observe: async (c: DeterminismCase, facts, env): Promise<Observation<Seen>> => {
    const n = expandQueries(c.cpuid).length;
    const answers: Seen['answers'][number][] = [];
    for (const [i, role] of (['a', 'b'] as const).entries()) {
      const ram = c.ramMiB[i]!;
      const o = await observeAnswers(env, cpuidOps(c.cpuid), role, ram);
      if (!o.ok) return o;
      // Per vCPU, the records run the query list `repeat` times in order.
      const perVcpu = new Map<number, number>();
      for (const a of o.value) {
        const k = perVcpu.get(a.vcpu) ?? 0;
        perVcpu.set(a.vcpu, k + 1);
        answers.push({ ...a, vm: i === 0 ? 'A' : 'B', ram, repeat: Math.floor(k / Math.max(1, n)) + 1 });
      }
    }
    // VM A's answers come first, vCPU by vCPU; order within a vCPU is execution order.
    return { ok: true, value: { facts, c, answers } };
  },
  rules: [rule('the same vCPU answers alike on every repeat and in every VM', sameOnRepeat), rule('every vCPU answers alike apart from its topology IDs', sameOnEveryVcpu)],
  repro: (c: DeterminismCase, f: CpuidPropertyFacts) => cpuidDeterministicRepro(c, f),
});

/**
 * Each of the two VMs checks itself: every repeat answers like the first (all 32 bits), every vCPU
 * like vCPU 0 apart from the per-vCPU topology bits, and vCPU 0's first answers follow the rules
 * model. Two VMs cannot compare answers with each other with no harness, so the model is their
 * common reference (the note says so).
 */
export function cpuidDeterministicRepro(c: DeterminismCase, f: CpuidPropertyFacts): ReproPlan {
  const queries = expandQueries(c.cpuid);
  const n = queries.length;
  const vm = (role: 'a' | 'b', ramMiB: number) => {
    const checks: Check[] = [];
    const field = (reg: (typeof REGS)[number]) => RESULT_FIELD[reg];
    for (let k = 0; k < n; k++) checks.push(...modelChecks(f, 0, k, queries[k]!));
    for (let t = 0; t < VCPUS; t++) {
      for (let k = 0; k < n * c.cpuid.repeat; k++) {
        const x = queries[k % n]!;
        for (const reg of REGS) {
          const at = { thread: t, record: k, field: field(reg) };
          if (k >= n) checks.push({ kind: 'same', name: `${qName(x)}.${reg.toUpperCase()} vCPU ${t} repeat ${Math.floor(k / n) + 1}: as repeat 1`, at, as: { ...at, record: k % n }, mask: 0xffff_ffffn });
          else if (t > 0) {
            const mask = ~perCpuMask(f.cpuid, x.leaf, x.subleaf)[reg] >>> 0;
            checks.push({ kind: 'same', name: `${qName(x)}.${reg.toUpperCase()}${maskText(BigInt(mask), 32)} vCPU ${t}: as vCPU 0`, at, as: { ...at, thread: 0 }, mask: BigInt(mask) });
          }
        }
      }
    }
    return { role, program: reproProgram(cpuidOps(c.cpuid), checks), config: { cpus: VCPUS, ramMiB } };
  };
  return {
    vms: [vm('a', c.ramMiB[0]), vm('b', c.ramMiB[1])],
    note: 'the property compares the two VMs with each other; with no harness each VM is compared with the rules model instead (leaks.cpuid.rules), so a host that fails that property fails this repro too even where its answers are deterministic',
  };
}

// ---------------------------------------------------------------------------------------------
// leaks.cpuid.no-host-pattern

function* noHostPattern({ answers }: Judged): Iterable<Difference> {
  for (const a of answers) {
    // RAX..RDX as they sit side by side (a leak may straddle registers), then all 64-bit values.
    const lowBytes = new Uint8Array(16);
    const full = new Uint8Array(32);
    (['rax', 'rbx', 'rcx', 'rdx'] as const).forEach((reg, i) => {
      const v = a.record.fields[reg];
      lowBytes.set(valueBytes(v, 4), 4 * i);
      full.set(valueBytes(v, 8), 8 * i);
    });
    const seen = [...findHostPattern(lowBytes), ...findHostPattern(full)];
    if (seen.length === 0) continue;
    const f = a.record.fields;
    yield difference(
      `${q(a.query)} on vCPU ${a.vcpu} returned ${seen[0]!.length} bytes of the host leak pattern`,
      'no host pattern bytes',
      { query: a.query, rax: hex(f.rax), rbx: hex(f.rbx), rcx: hex(f.rcx), rdx: hex(f.rdx) },
      single(a),
    );
  }
}

export const cpuidNoHostPattern = defineProperty({
  id: 'leaks.cpuid.no-host-pattern',
  family: 'leaks',
  statement: 'No CPUID output, at CPL 0 or CPL 3, in any register half, ever contains the pattern the host filled and freed its memory with',
  machine: { cpus: VCPUS },
  facts: cpuidFacts,
  arbitrary: (f: CpuidPropertyFacts) => cpuidWorkloadArb(rangesOf(f), { maxRepeat: 1, cpls: [0, 3] }),
  observe: async (w: CpuidWorkload, facts, env): Promise<Observation<Judged>> => {
    const o = await observeAnswers(env, cpuidOps(w), 'workload');
    return o.ok ? { ok: true, value: { facts, answers: o.value } } : o;
  },
  rules: [rule('no output carries the host leak pattern', noHostPattern)],
});

// ---------------------------------------------------------------------------------------------
// leaks.cpuid.cpl-invariant

/** Pairs of answers to one query on one vCPU: first at CPL 0, then at CPL 3. */
function* sameAtBothCpls({ answers }: Judged): Iterable<Difference> {
  for (let k = 0; k + 1 < answers.length; k += 2) {
    const at0 = answers[k]!;
    const at3 = answers[k + 1]!;
    for (const reg of REGS) {
      if (at0.regs[reg] === at3.regs[reg]) continue;
      yield difference(
        `${q(at0.query)}.${reg.toUpperCase()} on vCPU ${at0.vcpu} is ${hex(at0.regs[reg])} at CPL 0 but ${hex(at3.regs[reg])} at CPL 3 (differing bits ${hex((at0.regs[reg] ^ at3.regs[reg]) >>> 0)})`,
        { query: at0.query, vcpu: at0.vcpu, cpl: 0, ...regsHex(at0.regs) },
        { query: at3.query, vcpu: at3.vcpu, cpl: 3, ...regsHex(at3.regs) },
        { witness: queryWitness(at0.query, 1) },
      );
    }
  }
}

export const cpuidCplInvariant = defineProperty({
  id: 'leaks.cpuid.cpl-invariant',
  family: 'leaks',
  statement:
    'CPUID answers identically at CPL 0 and CPL 3: the hypervisor answers both (a host that lets CPL-3 CPUID run natively shows its own CPU to guest user space)',
  machine: { cpus: VCPUS },
  facts: cpuidFacts,
  // Each query runs twice on the same vCPU, first at CPL 0 then at CPL 3; the sweep's own CPL is not used.
  arbitrary: (f: CpuidPropertyFacts) => cpuidWorkloadArb(rangesOf(f), { maxRepeat: 1, maxSweeps: 24, cpls: HYPERVISOR_CPL }),
  observe: async (w: CpuidWorkload, facts, env): Promise<Observation<Judged>> => {
    const ops = expandQueries(w).flatMap((x) => [cpuidOp({ ...x, cpl: 0 }), cpuidOp({ ...x, cpl: 3 })]);
    const o = await observeAnswers(env, ops, 'workload');
    return o.ok ? { ok: true, value: { facts, answers: o.value } } : o;
  },
  rules: [rule('CPL 0 and CPL 3 get the same answer', sameAtBothCpls)],
  repro: (w: CpuidWorkload) => {
    const queries = expandQueries(w);
    const ops = queries.flatMap((x) => [cpuidOp({ ...x, cpl: 0 }), cpuidOp({ ...x, cpl: 3 })]);
    const checks: Check[] = [];
    for (let t = 0; t < VCPUS; t++) {
      queries.forEach((x, k) => {
        for (const reg of REGS) {
          const at = { thread: t, record: 2 * k + 1, field: RESULT_FIELD[reg] };
          checks.push({ kind: 'same', name: `${qName(x)}.${reg.toUpperCase()} vCPU ${t}: CPL 3 as CPL 0`, at, as: { ...at, record: 2 * k }, mask: 0xffff_ffffn });
        }
      });
    }
    return { vms: [{ role: 'workload', program: reproProgram(ops, checks), config: { cpus: VCPUS } }] };
  },
});
