/**
 * CPUID reference model: from the CPU model QEMU reports (query-cpu-model-expansion) and a
 * calibration table of the in-range leaves, predict the output of any (leaf, subleaf) on any vCPU.
 *
 * Two independent sources, kept apart so a failure says which rule broke:
 *  - `expansionBits`: bits fixed by QEMU's description of the CPU model — vendor and max leaves,
 *    the model-id brand string, family/model/stepping, every feature flag (features.ts), the KVM
 *    signature. These come from QEMU, not from the guest.
 *  - `ruleValue`: the full output, derived by KVM's lookup rules (leaves.ts header) from the
 *    calibration table: ECX ignored for non-indexed leaves, missing subleaves of indexed leaves
 *    read zero, the 0xB/0x1F invalid-subleaf rule, out-of-range leaves redirected to the max basic
 *    leaf (Intel) or zeroed (AMD/Hygon), per-vCPU topology IDs.
 * The table only holds leaves within range and subleaves 0..63 of indexed leaves, gathered once on
 * vCPU 0; everything else a workload asks is predicted from it by the rules.
 *
 * Architectural facts used (Intel SDM Vol. 2A, CPUID):
 *  - "If a value entered for CPUID.EAX is higher than the maximum input value for basic or extended
 *    function for that processor then the data for the highest basic information leaf is returned."
 *    KVM implements this for non-AMD guest vendors; AMD's APM instead returns zeros (APM Vol. 3,
 *    CPUID: "reserved ... functions return 0"), which KVM follows for AMD/Hygon guest vendors.
 *  - "On Intel 64 processors, CPUID clears the high 32 bits of the RAX/RBX/RCX/RDX registers in all
 *    modes." Only RAX..RDX change.
 *  - CPUID.1:ECX.OSXSAVE[bit 27] reflects CR4.OSXSAVE; CPUID.7.0:ECX.OSPKE[bit 4] reflects CR4.PKE;
 *    CPUID.1:EDX.APIC[bit 9] is cleared while the APIC is globally disabled (IA32_APIC_BASE.EN).
 */
import { CPUID_FEATURE_BITS, NOT_QEMU_PROPERTIES, type CpuidReg } from './features.js';
import { cpuidClassBase, isIndexedLeaf, outOfRangeRule, PER_CPU_FIELDS } from './leaves.js';

export const REGS: readonly CpuidReg[] = ['eax', 'ebx', 'ecx', 'edx'];

export type CpuidRegs = Record<CpuidReg, number>;

export const ZERO_REGS: CpuidRegs = Object.freeze({ eax: 0, ebx: 0, ecx: 0, edx: 0 });

/** Highest subleaf the calibration reads for indexed leaves; QEMU passes none above 63. */
export const CALIBRATED_SUBLEAVES = 64;

export interface GuestCpuState {
  /** CR4.OSXSAVE as the guest runs (kvmprop's guest leaves it clear). */
  readonly osxsave: boolean;
  /** CR4.PKE. */
  readonly pke: boolean;
  /** IA32_APIC_BASE.EN (the guest keeps its APIC enabled). */
  readonly apicEnabled: boolean;
}

/** The state kvmprop's guest runs CPUID in (harness/guest/src/main.c: CR4 = PAE|OSFXSR|OSXMMEXCPT). */
export const KVMPROP_GUEST_STATE: GuestCpuState = { osxsave: false, pke: false, apicEnabled: true };

export interface CpuidFacts {
  /** query-cpu-model-expansion 'full' props of the configured CPU model. */
  readonly expansion: Readonly<Record<string, unknown>>;
  /** Calibration: `${leaf}:${subleaf}` → output on vCPU 0, for every in-range leaf (subleaf 0, or 0..63 if indexed). */
  readonly table: ReadonlyMap<string, CpuidRegs>;
  /** APIC ID of each vCPU (QEMU numbers them 0..n-1 for -smp n). */
  readonly apicIds: readonly number[];
  readonly guest: GuestCpuState;
}

export const key = (leaf: number, subleaf: number) => `${leaf >>> 0}:${subleaf >>> 0}`;

function num(v: unknown, what: string): number {
  const n = typeof v === 'number' ? v : typeof v === 'string' ? Number(v) : NaN;
  if (!Number.isFinite(n)) throw new Error(`query-cpu-model-expansion has no numeric '${what}'`);
  return n >>> 0;
}

export function vendorOf(expansion: Readonly<Record<string, unknown>>): string {
  const v = expansion.vendor;
  if (typeof v !== 'string' || v.length !== 12) throw new Error(`query-cpu-model-expansion has no 12-character 'vendor' (got ${JSON.stringify(v)})`);
  return v;
}

/** Max leaf of each class according to QEMU (level, xlevel, xlevel2). */
export function maxLeaves(expansion: Readonly<Record<string, unknown>>): { basic: number; extended: number; centaur: number } {
  return {
    basic: num(expansion.level, 'level'),
    extended: num(expansion.xlevel, 'xlevel'),
    centaur: expansion.xlevel2 === undefined ? 0 : num(expansion.xlevel2, 'xlevel2'),
  };
}

/** The (leaf, subleaf) pairs the calibration run reads, given the class maxima and the hypervisor max. */
export function calibrationQueries(expansion: Readonly<Record<string, unknown>>, hypervisorMax: number): { leaf: number; subleaf: number }[] {
  const m = maxLeaves(expansion);
  const out: { leaf: number; subleaf: number }[] = [];
  const add = (from: number, to: number) => {
    for (let leaf = from; leaf <= to; leaf++) {
      const n = isIndexedLeaf(leaf) ? CALIBRATED_SUBLEAVES : 1;
      for (let s = 0; s < n; s++) out.push({ leaf, subleaf: s });
    }
  };
  add(0, m.basic);
  add(0x4000_0000, Math.max(0x4000_0000, hypervisorMax));
  if (m.extended >= 0x8000_0000) add(0x8000_0000, m.extended);
  if (m.centaur >= 0xc000_0000) add(0xc000_0000, m.centaur);
  return out;
}

function leU32(s: string, at: number): number {
  let v = 0;
  for (let i = 0; i < 4; i++) v |= (s.charCodeAt(at + i) & 0xff) << (8 * i);
  return v >>> 0;
}

/** What QEMU's CPU model description fixes, per register: value and mask of the asserted bits. */
export interface MaskedRegs {
  readonly value: CpuidRegs;
  readonly mask: CpuidRegs;
  /** For explanations: which fact each asserted bit range came from. */
  readonly sources: readonly { reg: CpuidReg; mask: number; what: string }[];
}

class MaskedBuilder {
  value: CpuidRegs = { ...ZERO_REGS };
  mask: CpuidRegs = { ...ZERO_REGS };
  sources: { reg: CpuidReg; mask: number; what: string }[] = [];
  set(reg: CpuidReg, mask: number, value: number, what: string): void {
    this.value[reg] = ((this.value[reg] & ~mask) | (value & mask)) >>> 0;
    this.mask[reg] = (this.mask[reg] | mask) >>> 0;
    this.sources.push({ reg, mask: mask >>> 0, what });
  }
  done(): MaskedRegs {
    return { value: this.value, mask: this.mask, sources: this.sources };
  }
}

/** The effective (function, subleaf) KVM answers a query with, and whether it was redirected. */
export function effectiveLeaf(facts: CpuidFacts, leaf: number, subleaf: number): { leaf: number; redirected: boolean; zeroed: boolean } {
  leaf >>>= 0;
  const vendor = vendorOf(facts.expansion);
  const base = cpuidClassBase(leaf);
  const baseEntry = facts.table.get(key(base, 0));
  const inRange = baseEntry !== undefined && leaf <= baseEntry.eax && (base !== 0x4000_0000 || hypervisorBlockExists(facts, base));
  if (inRange) return { leaf, redirected: false, zeroed: false };
  if (outOfRangeRule(vendor) === 'zero') return { leaf, redirected: false, zeroed: true };
  return { leaf: maxLeaves(facts.expansion).basic, redirected: true, zeroed: false };
}

function hypervisorBlockExists(facts: CpuidFacts, base: number): boolean {
  // A hypervisor block exists when its base leaf carries a signature (KVM: "KVMKVMKVM").
  const e = facts.table.get(key(base, 0));
  return e !== undefined && (e.ebx | e.ecx | e.edx) !== 0;
}

/** Feature bits by leaf, built once: a workload asks thousands of queries of a handful of leaves. */
const FEATURES_BY_LEAF = new Map<number, (typeof CPUID_FEATURE_BITS)[number][]>();
for (const f of CPUID_FEATURE_BITS) FEATURES_BY_LEAF.set(f.leaf, [...(FEATURES_BY_LEAF.get(f.leaf) ?? []), f]);

/** Predictions are pure in (facts, leaf, subleaf, vcpu); remember them per facts object. */
const memo = new WeakMap<CpuidFacts, Map<string, unknown>>();
function remember<T>(facts: CpuidFacts, k: string, make: () => T): T {
  let m = memo.get(facts);
  if (!m) memo.set(facts, (m = new Map()));
  if (!m.has(k)) m.set(k, make());
  return m.get(k) as T;
}

/** Bits of the output that QEMU's CPU model fixes, for the effective leaf. */
export function expansionBits(facts: CpuidFacts, leaf: number, subleaf: number, vcpu: number): MaskedRegs {
  return remember(facts, `x${leaf >>> 0}:${subleaf >>> 0}:${vcpu}`, () => computeExpansionBits(facts, leaf, subleaf, vcpu));
}

function computeExpansionBits(facts: CpuidFacts, leaf: number, subleaf: number, vcpu: number): MaskedRegs {
  const b = new MaskedBuilder();
  const eff = effectiveLeaf(facts, leaf, subleaf);
  const x = facts.expansion;
  if (eff.zeroed) {
    for (const r of REGS) b.set(r, 0xffffffff, 0, `out-of-range leaf reads zero for a ${vendorOf(x).trim()} guest`);
    return b.done();
  }
  const L = eff.leaf;
  const s = subleaf >>> 0;
  const vendor = vendorOf(x);
  const max = maxLeaves(x);
  if (L === 0) {
    b.set('eax', 0xffffffff, max.basic, `max basic leaf = expansion 'level' (${max.basic})`);
    b.set('ebx', 0xffffffff, leU32(vendor, 0), `vendor '${vendor}'`);
    b.set('edx', 0xffffffff, leU32(vendor, 4), `vendor '${vendor}'`);
    b.set('ecx', 0xffffffff, leU32(vendor, 8), `vendor '${vendor}'`);
  }
  if (L === 0x8000_0000) b.set('eax', 0xffffffff, max.extended, `max extended leaf = expansion 'xlevel' (0x${max.extended.toString(16)})`);
  if (L >= 0x8000_0002 && L <= 0x8000_0004 && typeof x['model-id'] === 'string') {
    const id = (x['model-id'] as string).padEnd(48, '\0').slice(0, 48);
    const at = (L - 0x8000_0002) * 16;
    REGS.forEach((r, i) => b.set(r, 0xffffffff, leU32(id, at + 4 * i), `model-id '${x['model-id'] as string}'`));
  }
  if (L === 1) {
    const family = num(x.family, 'family');
    const model = num(x.model, 'model');
    const stepping = num(x.stepping, 'stepping');
    const sig = (stepping & 0xf) | ((model & 0xf) << 4) | (Math.min(family, 0xf) << 8) | (((model >> 4) & 0xf) << 16) | ((family > 0xf ? family - 0xf : 0) << 20);
    b.set('eax', 0x0fff3fff, sig, `family ${family} model ${model} stepping ${stepping}`);
    const apic = facts.apicIds[vcpu] ?? vcpu;
    b.set('ebx', 0xff000000, apic << 24, `initial APIC ID of vCPU ${vcpu}`);
    b.set('ecx', 1 << 27, facts.guest.osxsave ? 1 << 27 : 0, 'OSXSAVE follows CR4.OSXSAVE');
    b.set('edx', 1 << 9, facts.guest.apicEnabled ? 1 << 9 : 0, 'APIC follows IA32_APIC_BASE.EN');
  }
  if (L === 7 && s === 0) b.set('ecx', 1 << 4, facts.guest.pke ? 1 << 4 : 0, 'OSPKE follows CR4.PKE');
  if (L === 0x4000_0000 && hypervisorBlockExists(facts, 0x4000_0000) && x.kvm !== false) {
    b.set('ebx', 0xffffffff, 0x4b4d564b, "KVM signature 'KVMKVMKVM'");
    b.set('ecx', 0xffffffff, 0x564b4d56, "KVM signature 'KVMKVMKVM'");
    b.set('edx', 0xffffffff, 0x0000004d, "KVM signature 'KVMKVMKVM'");
  }
  for (const f of FEATURES_BY_LEAF.get(L) ?? []) {
    if (f.dynamic || NOT_QEMU_PROPERTIES.has(f.name)) continue;
    if (isIndexedLeaf(L) && f.subleaf !== s) continue;
    const v = x[f.name];
    if (typeof v !== 'boolean') continue;
    b.set(f.reg, 1 << f.bit, v ? 1 << f.bit : 0, `feature '${f.name}' = ${v} in query-cpu-model-expansion`);
  }
  return b.done();
}

/** The full output KVM's rules derive from the calibration table, with the rule that applied. */
export function ruleValue(facts: CpuidFacts, leaf: number, subleaf: number, vcpu: number): { value: CpuidRegs; mask: CpuidRegs; rule: string } {
  return remember(facts, `r${leaf >>> 0}:${subleaf >>> 0}:${vcpu}`, () => computeRuleValue(facts, leaf, subleaf, vcpu));
}

function computeRuleValue(facts: CpuidFacts, leaf: number, subleaf: number, vcpu: number): { value: CpuidRegs; mask: CpuidRegs; rule: string } {
  leaf >>>= 0;
  const s = subleaf >>> 0;
  const all: CpuidRegs = { eax: 0xffffffff, ebx: 0xffffffff, ecx: 0xffffffff, edx: 0xffffffff };
  const eff = effectiveLeaf(facts, leaf, s);
  if (eff.zeroed) {
    return { value: { ...ZERO_REGS }, mask: all, rule: `leaf 0x${leaf.toString(16)} is out of range and the guest vendor is ${vendorOf(facts.expansion).trim()}: all zeros` };
  }
  const L = eff.leaf;
  const via = eff.redirected ? `leaf 0x${leaf.toString(16)} is out of range, so KVM answers with the max basic leaf 0x${L.toString(16)}; ` : '';
  let value: CpuidRegs;
  let rule: string;
  if (!isIndexedLeaf(L)) {
    value = { ...(facts.table.get(key(L, 0)) ?? ZERO_REGS) };
    rule = `${via}leaf 0x${L.toString(16)} ignores ECX: same as subleaf 0`;
  } else if (s < CALIBRATED_SUBLEAVES) {
    value = { ...(facts.table.get(key(L, s)) ?? ZERO_REGS) };
    rule = `${via}leaf 0x${L.toString(16)} subleaf ${s} as calibrated`;
  } else if ((L === 0xb || L === 0x1f) && hasLevels(facts, L)) {
    value = { eax: 0, ebx: 0, ecx: s & 0xff, edx: 0 };
    rule = `${via}leaf 0x${L.toString(16)} invalid subleaf ${s}: EAX=EBX=0, ECX[7:0] echoes the subleaf, EDX = x2APIC ID`;
  } else {
    value = { ...ZERO_REGS };
    rule = `${via}leaf 0x${L.toString(16)} has no subleaf ${s}: all zeros`;
  }
  // Topology IDs are per vCPU (the table was read on vCPU 0): substitute the ones with a known
  // formula, leave the others unasserted.
  const mask = { ...all };
  const apic = facts.apicIds[vcpu] ?? vcpu;
  for (const f of PER_CPU_FIELDS) {
    if (f.leaf !== L) continue;
    if (L === 1 && f.reg === 'ebx') value.ebx = ((value.ebx & ~f.mask) | ((apic << 24) & f.mask)) >>> 0;
    else if ((L === 0xb || L === 0x1f) && f.reg === 'edx') {
      if (hasLevels(facts, L)) value.edx = apic >>> 0;
    } else if (vcpu !== 0) mask[f.reg] = (mask[f.reg] & ~f.mask) >>> 0;
  }
  return { value, mask, rule };
}

function hasLevels(facts: CpuidFacts, leaf: number): boolean {
  // QEMU implements 0xB/0x1F exactly when subleaf 1 exists; its level type (ECX[15:8]) is non-zero then.
  const e = facts.table.get(key(leaf, 1));
  return e !== undefined && ((e.ecx >> 8) & 0xff) !== 0;
}

/** Masks of the fields that may differ between vCPUs of one VM, for the effective leaf of a query. */
export function perCpuMask(facts: CpuidFacts, leaf: number, subleaf: number): CpuidRegs {
  const L = effectiveLeaf(facts, leaf, subleaf).leaf;
  const m: CpuidRegs = { ...ZERO_REGS };
  for (const f of PER_CPU_FIELDS) if (f.leaf === L) m[f.reg] = (m[f.reg] | f.mask) >>> 0;
  return m;
}
