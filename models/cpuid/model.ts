/**
 * CPUID reference model: from the CPU model QEMU reports (query-cpu-model-expansion) and a
 * calibration table of the in-range leaves, predict the output of any (leaf, subleaf) on any vCPU.
 *
 * Two independent sources, kept apart so a failure says which rule broke:
 *  - `expansionBits`: bits fixed by QEMU's description of the CPU model — vendor and max leaves,
 *    the model-id brand string, family/model/stepping, every feature flag (features.ts), the KVM
 *    signature. These come from QEMU, not from the guest.
 *  - `ruleValue`: the full output, derived by the answerer's lookup rules (leaves.ts header) from
 *    the calibration table: ECX ignored for non-indexed leaves, missing subleaves of indexed leaves
 *    read zero, the 0xB/0x1F invalid-subleaf rule, out-of-range leaves redirected to the max basic
 *    leaf or zeroed, per-vCPU topology IDs.
 * The table only holds leaves within range and subleaves 0..63 of indexed leaves, gathered once on
 * vCPU 0; everything else a workload asks is predicted from it by the rules.
 *
 * Who answers (CpuidFacts.answerer, leaves.ts ANSWERERS) decides the range rules:
 *  - 'kvm' (Linux arch/x86/kvm/cpuid.c kvm_cpuid()): a function is in range when its class's base
 *    entry exists and F <= base.EAX; each 0x100 hypervisor block and the Centaur range are classes
 *    only when their base entry exists. Out of range: the max basic leaf for Intel and other vendors,
 *    zeros for AMD/Hygon (get_out_of_range_cpuid_entry()).
 *  - 'qemu-tcg' (QEMU 7.2 target/i386/cpu.c cpu_x86_cpuid(), called by helper_cpuid()): fixed
 *    limits level / 0x40000001 / xlevel / xlevel2, and anything above is answered as the max basic
 *    leaf, whatever the vendor (no zero rule). 0x40000000 carries "TCGTCGTCGTCG", not "KVMKVMKVM".
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
 *    (Vol. 2A Table 3-10 "Feature Information Returned in the ECX Register": OSXSAVE "A value of 1
 *    indicates that the OS has set CR4.OSXSAVE[bit 18]"; Table 3-8, leaf 07H ECX bit 04 OSPKE "If 1,
 *    OS has set CR4.PKE to enable protection keys".) A guest can set those CR4 bits only when
 *    XSAVE / PKU is enumerated (SDM Vol. 3A 2.5 "Control Registers"; KVM kvm_is_valid_cr4(), QEMU
 *    TCG cr4 reserved bits), and both answerers compute the bits as feature AND CR4 bit.
 */
import { CPUID_FEATURE_BITS, filteredBits, NOT_QEMU_PROPERTIES, type CpuidReg, type FeatureWordInfo } from './features.js';

export type { FeatureWordInfo } from './features.js';
import {
  cpuidClassBase,
  isIndexedLeaf,
  outOfRangeRule,
  perCpuFields,
  qemuTcgLimit,
  QEMU_TCG_SIGNATURE,
  type CpuidAnswerer,
} from './leaves.js';

export type { CpuidAnswerer } from './leaves.js';

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
  /**
   * Who answers the guest's CPUID (leaves.ts ANSWERERS; answererForAccel() maps -accel to it):
   *  - 'kvm': Linux arch/x86/kvm/cpuid.c kvm_emulate_cpuid() → kvm_cpuid() over the KVM_SET_CPUID2
   *    table that QEMU 7.2 target/i386/kvm/kvm.c kvm_arch_init_vcpu() built (-accel kvm);
   *  - 'qemu-tcg': QEMU 7.2 target/i386/tcg/misc_helper.c helper_cpuid() → target/i386/cpu.c
   *    cpu_x86_cpuid() on every CPUID (-accel tcg): QEMU's own CPUID is the reference there.
   * Optional: when absent, answererOf() infers 'qemu-tcg' from a calibrated 0x40000000 that carries
   * QEMU's TCG signature "TCGTCGTCGTCG" (only cpu_x86_cpuid() under TCG returns it), else 'kvm'.
   * Set it explicitly when running TCG with tcg-cpuid=off.
   */
  readonly answerer?: CpuidAnswerer;
  /**
   * The realized vCPU's QOM 'filtered-features' (features.ts FeatureWordInfo): bits the model asks
   * for that the accelerator cannot give. query-cpu-model-expansion still reports them as true, but
   * the guest reads 0 (QEMU 7.2 x86_cpu_filter_features() runs at realize). Optional; without it a
   * filtered feature is asserted as the expansion says, which fails under TCG for most named models.
   */
  readonly filteredFeatures?: readonly FeatureWordInfo[];
}

export const key = (leaf: number, subleaf: number) => `${leaf >>> 0}:${subleaf >>> 0}`;

/** CpuidFacts.answerer, or what the calibration shows: QEMU's TCG signature at 0x40000000 means 'qemu-tcg'. */
export function answererOf(facts: CpuidFacts): CpuidAnswerer {
  if (facts.answerer) return facts.answerer;
  const h = facts.table.get(key(0x4000_0000, 0));
  const tcg = h !== undefined && h.ebx === QEMU_TCG_SIGNATURE.ebx && h.ecx === QEMU_TCG_SIGNATURE.ecx && h.edx === QEMU_TCG_SIGNATURE.edx;
  return tcg ? 'qemu-tcg' : 'kvm';
}

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

/**
 * The effective function the answerer computes a query with: the function itself (in range), the
 * max basic leaf (`redirected`), or nothing (`zeroed`: all four registers read zero). `rule` says
 * which rule applied, with its source.
 */
export function effectiveLeaf(facts: CpuidFacts, leaf: number, subleaf: number): { leaf: number; redirected: boolean; zeroed: boolean; rule: string } {
  leaf >>>= 0;
  const vendor = vendorOf(facts.expansion);
  const h = (n: number) => `0x${n.toString(16)}`;
  if (answererOf(facts) === 'qemu-tcg') {
    // QEMU 7.2 cpu_x86_cpuid(): limit by range, "if (index > limit) index = env->cpuid_level". No table, no vendor test.
    const max = maxLeaves(facts.expansion);
    const limit = qemuTcgLimit(leaf, max);
    if (leaf <= limit) return { leaf, redirected: false, zeroed: false, rule: `leaf ${h(leaf)} is within QEMU's limit ${h(limit)}` };
    return {
      leaf: max.basic,
      redirected: true,
      zeroed: false,
      rule: `leaf ${h(leaf)} is out of range (above QEMU's limit ${h(limit)}), so QEMU TCG answers with the max basic leaf ${h(max.basic)} for any vendor (QEMU 7.2 cpu_x86_cpuid(): index > limit → index = env->cpuid_level)`,
    };
  }
  const base = cpuidClassBase(leaf);
  const baseEntry = facts.table.get(key(base, 0));
  const inRange = baseEntry !== undefined && leaf <= baseEntry.eax && (base !== 0x4000_0000 || hypervisorBlockExists(facts, base));
  if (inRange) return { leaf, redirected: false, zeroed: false, rule: `leaf ${h(leaf)} is within its class (base ${h(base)})` };
  if (outOfRangeRule(vendor, 'kvm') === 'zero') {
    return {
      leaf,
      redirected: false,
      zeroed: true,
      rule: `leaf ${h(leaf)} is out of range and the guest vendor is ${vendor.trim()}: all zeros (Linux kvm_cpuid(): get_out_of_range_cpuid_entry() returns NULL for AMD/Hygon)`,
    };
  }
  const why = baseEntry === undefined || (base === 0x4000_0000 && !hypervisorBlockExists(facts, base)) ? `its class base ${h(base)} does not exist` : `above the class max ${h(baseEntry.eax)}`;
  const top = maxLeaves(facts.expansion).basic;
  return {
    leaf: top,
    redirected: true,
    zeroed: false,
    rule: `leaf ${h(leaf)} is out of range (${why}), so KVM answers with the max basic leaf ${h(top)} (Linux get_out_of_range_cpuid_entry(), Intel SDM Vol. 2A CPUID)`,
  };
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
    for (const r of REGS) b.set(r, 0xffffffff, 0, `out-of-range leaf reads zero for a ${vendorOf(x).trim()} guest under KVM`);
    return b.done();
  }
  const L = eff.leaf;
  const s = subleaf >>> 0;
  const vendor = vendorOf(x);
  const max = maxLeaves(x);
  const tcg = answererOf(facts) === 'qemu-tcg';
  if (L === 0) {
    b.set('eax', 0xffffffff, max.basic, `max basic leaf = expansion 'level' (${max.basic})`);
    b.set('ebx', 0xffffffff, leU32(vendor, 0), `vendor '${vendor}'`);
    b.set('edx', 0xffffffff, leU32(vendor, 4), `vendor '${vendor}'`);
    b.set('ecx', 0xffffffff, leU32(vendor, 8), `vendor '${vendor}'`);
  }
  if (L === 0x8000_0000) {
    b.set('eax', 0xffffffff, max.extended, `max extended leaf = expansion 'xlevel' (0x${max.extended.toString(16)})`);
    // QEMU 7.2 cpu_x86_cpuid() case 0x80000000 repeats the vendor words for every vendor (an Intel
    // CPU reports zeros there; QEMU does not), and kvm_arch_init_vcpu() passes them to KVM unchanged.
    const what = `vendor '${vendor}' repeated in 0x80000000 (QEMU 7.2 cpu_x86_cpuid() case 0x80000000)`;
    b.set('ebx', 0xffffffff, leU32(vendor, 0), what);
    b.set('edx', 0xffffffff, leU32(vendor, 4), what);
    b.set('ecx', 0xffffffff, leU32(vendor, 8), what);
  }
  if (L === 0xc000_0000 && max.centaur >= 0xc000_0000) {
    // Reached only in range, i.e. xlevel2 >= 0xC0000000 (else 0xC0000000 is out of range for both answerers).
    b.set('eax', 0xffffffff, max.centaur, `max Centaur leaf = expansion 'xlevel2' (0x${max.centaur.toString(16)}; QEMU 7.2 cpu_x86_cpuid() case 0xC0000000)`);
  }
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
    const osxsave = osxsaveBit(facts);
    b.set('ecx', 1 << 27, osxsave.on ? 1 << 27 : 0, osxsave.what);
    const apicBit = apicFeatureBit(facts);
    b.set('edx', 1 << 9, apicBit.on ? 1 << 9 : 0, apicBit.what);
  }
  if (L === 7 && s === 0) {
    const ospke = ospkeBit(facts);
    b.set('ecx', 1 << 4, ospke.on ? 1 << 4 : 0, ospke.what);
  }
  if (L === 0x4000_0000 && tcg) {
    // QEMU 7.2 cpu_x86_cpuid() case 0x40000000: "if (tcg_enabled() && cpu->expose_tcg)" (property
    // tcg-cpuid, default on) EAX = 0x40000001 and "TCGTCGTCGTCG", else zeros.
    const on = x['tcg-cpuid'] !== false;
    const what = on ? "QEMU TCG signature 'TCGTCGTCGTCG', EAX = 0x40000001 (QEMU 7.2 cpu_x86_cpuid() case 0x40000000)" : 'tcg-cpuid=off: 0x40000000 reads zeros (QEMU 7.2 cpu_x86_cpuid() case 0x40000000)';
    for (const r of REGS) b.set(r, 0xffffffff, on ? QEMU_TCG_SIGNATURE[r] : 0, what);
  } else if (L === 0x4000_0000 && hypervisorBlockExists(facts, 0x4000_0000) && x.kvm !== false) {
    b.set('ebx', 0xffffffff, 0x4b4d564b, "KVM signature 'KVMKVMKVM'");
    b.set('ecx', 0xffffffff, 0x564b4d56, "KVM signature 'KVMKVMKVM'");
    b.set('edx', 0xffffffff, 0x0000004d, "KVM signature 'KVMKVMKVM'");
  }
  if (L === 0x4000_0001 && tcg) {
    // QEMU 7.2 cpu_x86_cpuid() case 0x40000001: all zeros (the FEAT_KVM bits reach only KVM's table).
    for (const r of REGS) b.set(r, 0xffffffff, 0, 'QEMU TCG answers 0x40000001 with zeros (QEMU 7.2 cpu_x86_cpuid() case 0x40000001)');
    return b.done();
  }
  const filteredSub = isIndexedLeaf(L) ? s : 0;
  for (const f of FEATURES_BY_LEAF.get(L) ?? []) {
    if (f.dynamic || NOT_QEMU_PROPERTIES.has(f.name)) continue;
    if (isIndexedLeaf(L) && f.subleaf !== s) continue;
    const v = x[f.name];
    if (typeof v !== 'boolean') continue;
    if (v && (filteredBits(facts.filteredFeatures, L, filteredSub, f.reg) >>> f.bit) & 1) {
      b.set(f.reg, 1 << f.bit, 0, `feature '${f.name}' is true in query-cpu-model-expansion but QEMU filtered it out at realize (the vCPU's 'filtered-features'; QEMU 7.2 x86_cpu_filter_features())`);
      continue;
    }
    b.set(f.reg, 1 << f.bit, v ? 1 << f.bit : 0, `feature '${f.name}' = ${v} in query-cpu-model-expansion`);
  }
  return b.done();
}

/** A feature the expansion does not mention is taken as on: the guest could not have set the CR4 bit otherwise. */
const featureOn = (x: Readonly<Record<string, unknown>>, name: string) => x[name] !== false;

/**
 * CPUID.1:ECX[27] OSXSAVE: XSAVE enumerated AND CR4.OSXSAVE, for both answerers.
 *  - KVM: Linux arch/x86/kvm/cpuid.c kvm_update_cpuid_runtime() sets it to CR4.OSXSAVE (when the host
 *    has XSAVE); kvm_is_valid_cr4() refuses CR4.OSXSAVE unless the guest's CPUID has XSAVE.
 *  - QEMU TCG: QEMU 7.2 cpu_x86_cpuid() case 1: "if ((*ecx & CPUID_EXT_XSAVE) && (env->cr[4] &
 *    CR4_OSXSAVE_MASK)) *ecx |= CPUID_EXT_OSXSAVE".
 */
function osxsaveBit(facts: CpuidFacts): { on: boolean; what: string } {
  const xsave = featureOn(facts.expansion, 'xsave');
  const src = answererOf(facts) === 'qemu-tcg' ? 'QEMU 7.2 cpu_x86_cpuid() case 1' : 'KVM kvm_update_cpuid_runtime()';
  return { on: facts.guest.osxsave && xsave, what: `OSXSAVE = CR4.OSXSAVE (${facts.guest.osxsave ? 1 : 0}) AND xsave (${xsave}) (${src})` };
}

/**
 * CPUID.7.0:ECX[4] OSPKE: PKU enumerated AND CR4.PKE, for both answerers.
 *  - KVM: kvm_update_cpuid_runtime() sets it to CR4.PKE (host has PKU); kvm_is_valid_cr4() refuses CR4.PKE without PKU.
 *  - QEMU TCG: QEMU 7.2 cpu_x86_cpuid() case 7: "if ((*ecx & CPUID_7_0_ECX_PKU) && env->cr[4] & CR4_PKE_MASK) *ecx |= CPUID_7_0_ECX_OSPKE".
 */
function ospkeBit(facts: CpuidFacts): { on: boolean; what: string } {
  const pku = featureOn(facts.expansion, 'pku');
  const src = answererOf(facts) === 'qemu-tcg' ? 'QEMU 7.2 cpu_x86_cpuid() case 7' : 'KVM kvm_update_cpuid_runtime()';
  return { on: facts.guest.pke && pku, what: `OSPKE = CR4.PKE (${facts.guest.pke ? 1 : 0}) AND pku (${pku}) (${src})` };
}

/**
 * CPUID.1:EDX[9] APIC.
 *  - KVM: kvm_update_cpuid_runtime() sets it to IA32_APIC_BASE.EN, whatever QEMU's apic property said.
 *  - QEMU TCG: cpu_x86_cpuid() case 1 returns FEAT_1_EDX (the apic property); hw/intel/apic.c
 *    apic_set_base() clears it (cpu_clear_apic_feature()) when the guest disables the APIC and never
 *    sets it again. [T] EPYC-v3,-apic -smp 2: EDX[9] = 0 with the APIC enabled.
 */
function apicFeatureBit(facts: CpuidFacts): { on: boolean; what: string } {
  if (answererOf(facts) === 'qemu-tcg') {
    const prop = facts.expansion.apic !== false;
    return { on: prop && facts.guest.apicEnabled, what: `APIC = apic property (${prop}) AND IA32_APIC_BASE.EN (QEMU 7.2 cpu_x86_cpuid() case 1, apic_set_base())` };
  }
  return { on: facts.guest.apicEnabled, what: 'APIC follows IA32_APIC_BASE.EN (KVM kvm_update_cpuid_runtime())' };
}

/** The full output the answerer's rules derive from the calibration table, with the rule that applied. */
export function ruleValue(facts: CpuidFacts, leaf: number, subleaf: number, vcpu: number): { value: CpuidRegs; mask: CpuidRegs; rule: string } {
  return remember(facts, `r${leaf >>> 0}:${subleaf >>> 0}:${vcpu}`, () => computeRuleValue(facts, leaf, subleaf, vcpu));
}

function computeRuleValue(facts: CpuidFacts, leaf: number, subleaf: number, vcpu: number): { value: CpuidRegs; mask: CpuidRegs; rule: string } {
  leaf >>>= 0;
  const s = subleaf >>> 0;
  const all: CpuidRegs = { eax: 0xffffffff, ebx: 0xffffffff, ecx: 0xffffffff, edx: 0xffffffff };
  const eff = effectiveLeaf(facts, leaf, s);
  if (eff.zeroed) return { value: { ...ZERO_REGS }, mask: all, rule: eff.rule };
  const L = eff.leaf;
  const via = eff.redirected ? `${eff.rule}; ` : '';
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
  for (const f of perCpuFields(vendorOf(facts.expansion), answererOf(facts))) {
    if (f.leaf !== L) continue;
    if (L === 1 && f.reg === 'ebx') value.ebx = ((value.ebx & ~f.mask) | ((apic << 24) & f.mask)) >>> 0;
    else if ((L === 0xb || L === 0x1f) && f.reg === 'edx') {
      if (hasLevels(facts, L)) value.edx = apic >>> 0;
    } else if (L === 0x8000_001e && f.reg === 'eax' && f.mask === 0xffffffff) {
      // Extended APIC ID: QEMU 7.2 cpu_x86_cpuid() case 0x8000001E → encode_topo_cpuid8000001e(): EAX =
      // apic_id, for any vendor and whether or not topoext is on ([T] EPYC-v3, [S] host with topoext=off: vCPU1 EAX = 1).
      value.eax = apic >>> 0;
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
  const eff = effectiveLeaf(facts, leaf, subleaf);
  const m: CpuidRegs = { ...ZERO_REGS };
  if (eff.zeroed) return m;
  for (const f of perCpuFields(vendorOf(facts.expansion), answererOf(facts))) if (f.leaf === eff.leaf) m[f.reg] = (m[f.reg] | f.mask) >>> 0;
  return m;
}
