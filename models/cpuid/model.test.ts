import { describe, expect, it } from 'vitest';
import { isIndexedLeaf } from './leaves.js';
import {
  CALIBRATED_SUBLEAVES,
  KVMPROP_GUEST_STATE,
  ZERO_REGS,
  answererOf,
  calibrationQueries,
  effectiveLeaf,
  expansionBits,
  key,
  perCpuMask,
  ruleValue,
  type CpuidAnswerer,
  type CpuidFacts,
  type CpuidRegs,
} from './model.js';

const regs = (eax: number, ebx: number, ecx: number, edx: number): CpuidRegs => ({ eax, ebx, ecx, edx });
const ALL = 0xffffffff;

/** 'Genu' 'ineI' 'ntel' as CPUID returns them (EBX, EDX, ECX), little-endian. */
const GENU = 0x756e6547;
const INEI = 0x49656e69;
const NTEL = 0x6c65746e;
const KVM_SIG = regs(0x40000001, 0x4b4d564b, 0x564b4d56, 0x4d);

const EXPANSION = {
  vendor: 'GenuineIntel',
  level: 0xd,
  xlevel: 0x80000008,
  family: 6,
  model: 0x55,
  stepping: 7,
  'model-id': 'Intel(R) Xeon(R) Platinum 8280 CPU @ 2.70GHz',
  fpu: true,
  'sse4.2': true, // CPUID.1:ECX[20]
  avx: false, // CPUID.1:ECX[28]
  x2apic: true, // CPUID.1:ECX[21]
  monitor: true, // CPUID.1:ECX[3], dynamic: never asserted
  apic: false, // CPUID.1:EDX[9], dynamic: follows the guest state instead
  pku: true, // CPUID.7.0:ECX[3]
  xsaveopt: true, // CPUID.0xD.1:EAX[0]
  lm: true, // CPUID.0x80000001:EDX[29]
};

function table(): Map<string, CpuidRegs> {
  const t = new Map<string, CpuidRegs>();
  t.set(key(0, 0), regs(0xd, GENU, NTEL, INEI));
  t.set(key(1, 0), regs(0x50657, 0x00020800, 0xfffa3203, 0x0f8bfbff));
  t.set(key(6, 0), regs(0x4, 0, 0, 0));
  t.set(key(4, 0), regs(0x121, 0x1c0003f, 0x3f, 0));
  t.set(key(4, 1), regs(0x122, 0x1c0003f, 0x3f, 0));
  t.set(key(4, 2), regs(0x143, 0x3c0003f, 0xfff, 0));
  t.set(key(7, 0), regs(0, 0xd19f4fbb, 0x0000000c, 0xac000400));
  t.set(key(0xb, 0), regs(1, 1, 0x100, 0));
  t.set(key(0xb, 1), regs(1, 2, 0x201, 0));
  t.set(key(0xb, 2), regs(0, 0, 2, 0));
  t.set(key(0xd, 0), regs(0x7, 0x340, 0, 0));
  t.set(key(0xd, 1), regs(0x1, 0, 0, 0));
  t.set(key(0xd, 2), regs(0x100, 0x240, 0, 0));
  t.set(key(0x4000_0000, 0), KVM_SIG);
  t.set(key(0x4000_0001, 0), regs(0x01007afb, 0, 0, 0));
  t.set(key(0x8000_0000, 0), regs(0x80000008, 0, 0, 0));
  t.set(key(0x8000_0001, 0), regs(0, 0, 0x121, 0x2c100800));
  t.set(key(0x8000_0008, 0), regs(0x3030, 0, 0, 0));
  return t;
}

function facts(over: Partial<CpuidFacts> & { expansion?: Record<string, unknown> } = {}): CpuidFacts {
  return { expansion: EXPANSION, table: table(), apicIds: [0, 1], guest: KVMPROP_GUEST_STATE, ...over };
}

const amd = () => {
  const t = table();
  t.set(key(0, 0), regs(0xd, 0x68747541, 0x444d4163, 0x69746e65)); // 'AuthenticAMD'
  return facts({ expansion: { ...EXPANSION, vendor: 'AuthenticAMD' }, table: t });
};

describe('effectiveLeaf', () => {
  const f = facts();

  it('answers an in-range leaf with itself', () => {
    for (const leaf of [0, 6, 0xd, 0x8000_0000, 0x8000_0008, 0x4000_0000, 0x4000_0001]) {
      expect(effectiveLeaf(f, leaf, 0), leaf.toString(16)).toMatchObject({ leaf, redirected: false, zeroed: false });
    }
  });

  it('redirects an out-of-range leaf to the max basic leaf for an Intel guest', () => {
    for (const leaf of [0xe, 0x3fff_ffff, 0x5000_0000, 0x8000_0009, 0xc000_0000, 0xffff_ffff]) {
      expect(effectiveLeaf(f, leaf, 0), leaf.toString(16)).toMatchObject({ leaf: 0xd, redirected: true, zeroed: false });
    }
  });

  it('zeroes an out-of-range leaf for an AuthenticAMD guest', () => {
    expect(effectiveLeaf(amd(), 0xe, 0)).toMatchObject({ leaf: 0xe, redirected: false, zeroed: true });
    expect(effectiveLeaf(amd(), 0x8000_0009, 0)).toMatchObject({ leaf: 0x8000_0009, redirected: false, zeroed: true });
    expect(effectiveLeaf(amd(), 6, 0)).toMatchObject({ leaf: 6, redirected: false, zeroed: false });
  });

  it('treats each 0x100 block of the hypervisor range as its own class', () => {
    // Above the block's max.
    expect(effectiveLeaf(f, 0x4000_0002, 0)).toMatchObject({ leaf: 0xd, redirected: true });
    // A block with no base entry.
    expect(effectiveLeaf(f, 0x4000_0100, 0)).toMatchObject({ leaf: 0xd, redirected: true });
    expect(effectiveLeaf(f, 0x4fff_ff00, 0)).toMatchObject({ leaf: 0xd, redirected: true });
  });

  it('needs a signature in the hypervisor base leaf for the block to exist', () => {
    const t = table();
    t.set(key(0x4000_0000, 0), regs(0x40000001, 0, 0, 0));
    expect(effectiveLeaf(facts({ table: t }), 0x4000_0001, 0)).toMatchObject({ leaf: 0xd, redirected: true });
    expect(effectiveLeaf(facts({ table: t }), 0x4000_0000, 0)).toMatchObject({ leaf: 0xd, redirected: true });
  });
});

describe('ruleValue', () => {
  const f = facts();

  it('ignores ECX for a non-indexed leaf', () => {
    for (const s of [0, 1, 63, 64, 0xffff_ffff]) {
      const r = ruleValue(f, 6, s, 0);
      expect(r.value).toEqual(regs(0x4, 0, 0, 0));
      expect(r.mask).toEqual(regs(ALL, ALL, ALL, ALL));
      expect(r.rule).toMatch(/ignores ECX/);
    }
  });

  it('reads a calibrated subleaf of an indexed leaf, and zeros for a missing one', () => {
    expect(ruleValue(f, 4, 2, 0).value).toEqual(regs(0x143, 0x3c0003f, 0xfff, 0));
    expect(ruleValue(f, 4, 2, 0).rule).toMatch(/subleaf 2 as calibrated/);
    expect(ruleValue(f, 4, 10, 0).value).toEqual(ZERO_REGS);
  });

  it('reads zeros for subleaf >= 64 of an indexed leaf', () => {
    for (const s of [64, 0x100, 0xffff_ffff]) {
      const r = ruleValue(f, 4, s, 0);
      expect(r.value).toEqual(ZERO_REGS);
      expect(r.mask).toEqual(regs(ALL, ALL, ALL, ALL));
      expect(r.rule).toMatch(/has no subleaf/);
    }
  });

  it('applies the 0xB rule to subleaf >= 64: ECX[7:0] echoes the subleaf, EDX is the x2APIC ID', () => {
    expect(ruleValue(f, 0xb, 64, 0).value).toEqual(regs(0, 0, 64, 0));
    expect(ruleValue(f, 0xb, 0x1234, 1).value).toEqual(regs(0, 0, 0x34, 1));
    expect(ruleValue(f, 0xb, 0xffff_ffff, 1).value).toEqual(regs(0, 0, 0xff, 1));
    expect(ruleValue(f, 0xb, 64, 1).rule).toMatch(/invalid subleaf 64/);
  });

  it('gives calibrated 0xB subleaves the vCPU x2APIC ID in EDX', () => {
    expect(ruleValue(f, 0xb, 1, 1).value).toEqual(regs(1, 2, 0x201, 1));
  });

  it('reads zeros for 0xB subleaf >= 64 when subleaf 1 has no level type', () => {
    const t = table();
    t.set(key(0xb, 1), regs(0, 0, 1, 0));
    expect(ruleValue(facts({ table: t }), 0xb, 64, 1).value).toEqual(ZERO_REGS);
  });

  it('puts the vCPU APIC ID in leaf 1 EBX[31:24]', () => {
    expect(ruleValue(f, 1, 0, 0).value.ebx).toBe(0x00020800);
    expect(ruleValue(f, 1, 0, 1).value.ebx).toBe(0x01020800);
    expect(ruleValue(facts({ apicIds: [0, 0x12] }), 1, 0, 1).value.ebx).toBe(0x12020800);
  });

  it('answers an out-of-range leaf with the max basic leaf, keeping the subleaf', () => {
    const r = ruleValue(f, 0x8000_0009, 2, 0);
    expect(r.value).toEqual(regs(0x100, 0x240, 0, 0));
    expect(r.rule).toMatch(/out of range.*max basic leaf 0xd/);
  });

  it('answers an out-of-range leaf with zeros for an AMD guest', () => {
    const r = ruleValue(amd(), 0xe, 0, 0);
    expect(r.value).toEqual(ZERO_REGS);
    expect(r.mask).toEqual(regs(ALL, ALL, ALL, ALL));
  });
});

describe('expansionBits', () => {
  const f = facts();
  const bit = (m: { value: CpuidRegs; mask: CpuidRegs }, reg: keyof CpuidRegs, b: number) => ({
    asserted: ((m.mask[reg] >>> b) & 1) === 1,
    value: (m.value[reg] >>> b) & 1,
  });

  it('fixes the vendor registers and the max basic leaf in leaf 0', () => {
    const m = expansionBits(f, 0, 0, 0);
    expect(m.value).toEqual(regs(0xd, GENU, NTEL, INEI));
    expect(m.mask).toEqual(regs(ALL, ALL, ALL, ALL));
  });

  it('fixes the max extended leaf in 0x80000000 EAX, and the vendor words QEMU repeats there', () => {
    const m = expansionBits(f, 0x8000_0000, 0, 0);
    expect(m.value).toEqual(regs(0x80000008, GENU, NTEL, INEI));
    expect(m.mask).toEqual(regs(ALL, ALL, ALL, ALL));
    expect(m.sources.find((x) => x.reg === 'ebx')?.what).toMatch(/cpu_x86_cpuid\(\) case 0x80000000/);
  });

  it('splits the brand string across 0x80000002..4, little-endian and NUL-padded', () => {
    expect(expansionBits(f, 0x8000_0002, 0, 0).value.eax).toBe(0x65746e49); // 'Inte'
    expect(expansionBits(f, 0x8000_0003, 0, 0).value.eax).toBe(0x616c5020); // ' Pla' (bytes 16..19)
    const last = expansionBits(f, 0x8000_0004, 0, 0);
    expect(last.value.ecx).toBe(0x7a484730); // '0GHz' (bytes 40..43)
    expect(last.value.edx).toBe(0); // the 44-byte string's NUL padding
    expect(last.mask).toEqual(regs(ALL, ALL, ALL, ALL));
  });

  it('encodes family 6 model 0x55 stepping 7 as 0x50657', () => {
    const m = expansionBits(f, 1, 0, 0);
    expect(m.mask.eax).toBe(0x0fff3fff);
    expect(m.value.eax).toBe(0x00050657);
  });

  it('puts families above 0xf in the extended family field', () => {
    const m = expansionBits(facts({ expansion: { ...EXPANSION, family: 0x19, model: 0x21, stepping: 0 } }), 1, 0, 0);
    expect(m.value.eax).toBe(0x00a20f10);
  });

  it('asserts the initial APIC ID of each vCPU in leaf 1 EBX[31:24] only', () => {
    const m = expansionBits(f, 1, 0, 1);
    expect(m.mask.ebx).toBe(0xff000000);
    expect(m.value.ebx).toBe(0x01000000);
  });

  it('asserts feature bits from the expansion: true → 1, false → 0, absent → not asserted', () => {
    const m = expansionBits(f, 1, 0, 0);
    expect(bit(m, 'ecx', 20)).toEqual({ asserted: true, value: 1 }); // sse4.2
    expect(bit(m, 'ecx', 28)).toEqual({ asserted: true, value: 0 }); // avx
    expect(bit(m, 'edx', 0)).toEqual({ asserted: true, value: 1 }); // fpu
    expect(bit(m, 'ecx', 25).asserted).toBe(false); // aes: not in the expansion
    expect(bit(expansionBits(f, 0x8000_0001, 0, 0), 'edx', 29)).toEqual({ asserted: true, value: 1 }); // lm
  });

  it('skips dynamic features', () => {
    expect(bit(expansionBits(f, 1, 0, 0), 'ecx', 3).asserted).toBe(false); // monitor
  });

  it('ignores ECX for feature bits of non-indexed leaves, and selects by subleaf for indexed ones', () => {
    expect(bit(expansionBits(f, 1, 5, 0), 'ecx', 20)).toEqual({ asserted: true, value: 1 });
    expect(bit(expansionBits(f, 7, 0, 0), 'ecx', 3)).toEqual({ asserted: true, value: 1 }); // pku
    expect(bit(expansionBits(f, 7, 1, 0), 'ecx', 3).asserted).toBe(false);
    expect(bit(expansionBits(f, 0xd, 1, 0), 'eax', 0)).toEqual({ asserted: true, value: 1 }); // xsaveopt
    expect(bit(expansionBits(f, 0xd, 0, 0), 'eax', 0).asserted).toBe(false);
  });

  it('makes OSXSAVE, APIC and OSPKE follow the guest state', () => {
    const off = { osxsave: false, pke: false, apicEnabled: false };
    const on = { osxsave: true, pke: true, apicEnabled: true };
    for (const [guest, v] of [[off, 0], [on, 1]] as const) {
      const g = facts({ guest });
      expect(bit(expansionBits(g, 1, 0, 0), 'ecx', 27)).toEqual({ asserted: true, value: v });
      expect(bit(expansionBits(g, 1, 0, 0), 'edx', 9)).toEqual({ asserted: true, value: v });
      expect(bit(expansionBits(g, 7, 0, 0), 'ecx', 4)).toEqual({ asserted: true, value: v });
    }
    // kvmprop's guest: APIC on (despite apic=false in the expansion), OSXSAVE and OSPKE off.
    expect(bit(expansionBits(f, 1, 0, 0), 'edx', 9)).toEqual({ asserted: true, value: 1 });
    expect(bit(expansionBits(f, 1, 0, 0), 'ecx', 27)).toEqual({ asserted: true, value: 0 });
  });

  it('asserts the KVM signature when the hypervisor block exists', () => {
    const m = expansionBits(f, 0x4000_0000, 0, 0);
    expect(m.value).toMatchObject({ ebx: 0x4b4d564b, ecx: 0x564b4d56, edx: 0x4d });
    expect(m.mask).toEqual(regs(0, ALL, ALL, ALL));
    expect(expansionBits(facts({ expansion: { ...EXPANSION, kvm: false } }), 0x4000_0000, 0, 0).mask).toEqual(ZERO_REGS);
  });

  it('describes an out-of-range leaf by the leaf it is redirected to, or as zeros for AMD', () => {
    expect(expansionBits(f, 0xe, 1, 0).value.eax & 1).toBe(1); // 0xD.1 xsaveopt
    const z = expansionBits(amd(), 0xe, 0, 0);
    expect(z.value).toEqual(ZERO_REGS);
    expect(z.mask).toEqual(regs(ALL, ALL, ALL, ALL));
  });

  it('names a source for every asserted bit', () => {
    const m = expansionBits(f, 1, 0, 0);
    for (const r of ['eax', 'ebx', 'ecx', 'edx'] as const) {
      const covered = m.sources.filter((s) => s.reg === r).reduce((a, s) => (a | s.mask) >>> 0, 0);
      expect(covered, r).toBe(m.mask[r]);
    }
  });
});

describe('perCpuMask', () => {
  const f = facts();
  it('covers the per-vCPU topology fields of the effective leaf', () => {
    expect(perCpuMask(f, 1, 0)).toEqual(regs(0, 0xff000000, 0, 0));
    expect(perCpuMask(f, 0xb, 7)).toEqual(regs(0, 0, 0, ALL));
    expect(perCpuMask(f, 6, 0)).toEqual(ZERO_REGS);
    expect(perCpuMask(f, 0xe, 0)).toEqual(ZERO_REGS); // redirected to 0xD
  });

  it('follows a redirect to a max basic leaf that has per-vCPU fields', () => {
    const t = table();
    t.set(key(0, 0), regs(0xb, GENU, NTEL, INEI));
    const levelB = facts({ expansion: { ...EXPANSION, level: 0xb }, table: t });
    expect(perCpuMask(levelB, 0xe, 0)).toEqual(regs(0, 0, 0, ALL));
  });
});

describe('calibrationQueries', () => {
  const qs = calibrationQueries(EXPANSION, 0x4000_0001);
  const leaves = (from: number, to: number) => [...new Set(qs.map((q) => q.leaf))].filter((l) => l >= from && l <= to);

  it('covers basic, hypervisor and extended ranges up to their max', () => {
    expect(leaves(0, 0x3fff_ffff)).toEqual(Array.from({ length: 0xe }, (_, i) => i));
    expect(leaves(0x4000_0000, 0x4fff_ffff)).toEqual([0x4000_0000, 0x4000_0001]);
    expect(leaves(0x8000_0000, 0xbfff_ffff)).toEqual(Array.from({ length: 9 }, (_, i) => 0x8000_0000 + i));
    expect(leaves(0xc000_0000, 0xffff_ffff)).toEqual([]);
  });

  it('reads 64 subleaves of indexed leaves and subleaf 0 of the others', () => {
    for (const leaf of new Set(qs.map((q) => q.leaf))) {
      const subs = qs.filter((q) => q.leaf === leaf).map((q) => q.subleaf);
      expect(subs, leaf.toString(16)).toEqual(isIndexedLeaf(leaf) ? Array.from({ length: CALIBRATED_SUBLEAVES }, (_, i) => i) : [0]);
    }
    // 0..0xd has four indexed leaves (4, 7, 0xb, 0xd).
    expect(qs).toHaveLength(4 * 64 + 10 + 2 + 9);
  });

  it('always reads the hypervisor base leaf, and Centaur leaves only with xlevel2', () => {
    const q0 = calibrationQueries(EXPANSION, 0);
    expect(q0.filter((q) => q.leaf >= 0x4000_0000 && q.leaf < 0x5000_0000)).toEqual([{ leaf: 0x4000_0000, subleaf: 0 }]);
    const c = calibrationQueries({ ...EXPANSION, xlevel2: 0xc000_0001 }, 0);
    expect(c.filter((q) => q.leaf >= 0xc000_0000).map((q) => q.leaf)).toEqual([0xc000_0000, 0xc000_0001]);
    const noExt = calibrationQueries({ ...EXPANSION, xlevel: 0 }, 0);
    expect(noExt.some((q) => q.leaf >= 0x8000_0000)).toBe(false);
  });
});

// ─── Vendors × answerers ────────────────────────────────────────────────────────────────────────

/** 'Auth' 'enti' 'cAMD' as CPUID returns them (EBX, EDX, ECX). */
const AUTH = 0x68747541;
const ENTI = 0x69746e65;
const CAMD = 0x444d4163;
const TCG_SIG = regs(0x40000001, 0x54474354, 0x43544743, 0x47435447); // 'TCGTCGTCGTCG'
const ANSWERERS: readonly CpuidAnswerer[] = ['kvm', 'qemu-tcg'];
const VENDORS = ['intel', 'amd'] as const;

/**
 * Facts for a vendor and an answerer, shaped like the calibration really reads them: level 0xD,
 * xlevel 0x8000001E (an EPYC-like model), xlevel2 0 unless given, two vCPUs. Under TCG the
 * hypervisor range holds QEMU's TCG signature; under KVM the KVM signature.
 */
function vf(
  vendor: (typeof VENDORS)[number],
  answerer: CpuidAnswerer,
  over: { xlevel2?: number; expansion?: Record<string, unknown>; guest?: CpuidFacts['guest']; explicit?: boolean; filteredFeatures?: CpuidFacts['filteredFeatures'] } = {},
): CpuidFacts & { table: Map<string, CpuidRegs> } {
  const t = table();
  const v = vendor === 'amd' ? 'AuthenticAMD' : 'GenuineIntel';
  if (vendor === 'amd') t.set(key(0, 0), regs(0xd, AUTH, CAMD, ENTI));
  t.set(key(0x8000_0000, 0), vendor === 'amd' ? regs(0x8000001e, AUTH, CAMD, ENTI) : regs(0x8000001e, GENU, NTEL, INEI));
  t.set(key(0x8000_001e, 0), regs(0, 0, 0, 0)); // vCPU 0 of a 2-core package: APIC ID 0, core 0, node 0
  if (answerer === 'qemu-tcg') {
    t.set(key(0x4000_0000, 0), TCG_SIG);
    t.set(key(0x4000_0001, 0), ZERO_REGS);
  }
  if (over.xlevel2 !== undefined) {
    t.set(key(0xc000_0000, 0), regs(over.xlevel2, 0, 0, 0));
    t.set(key(0xc000_0001, 0), regs(0x50657, 0, 0, 0));
    t.set(key(0xc000_0002, 0), ZERO_REGS);
  }
  const expansion = { ...EXPANSION, vendor: v, xlevel: 0x8000001e, ...(over.xlevel2 !== undefined ? { xlevel2: over.xlevel2 } : { xlevel2: 0 }), ...(over.expansion ?? {}) };
  return {
    expansion,
    table: t,
    apicIds: [0, 1],
    guest: over.guest ?? KVMPROP_GUEST_STATE,
    ...(over.explicit === false ? {} : { answerer }),
    ...(over.filteredFeatures ? { filteredFeatures: over.filteredFeatures } : {}),
  };
}

describe('answererOf', () => {
  it('takes CpuidFacts.answerer when given', () => {
    expect(answererOf(vf('amd', 'kvm'))).toBe('kvm');
    expect(answererOf(vf('amd', 'qemu-tcg'))).toBe('qemu-tcg');
  });

  it("infers 'qemu-tcg' from QEMU's TCG signature at 0x40000000, else 'kvm'", () => {
    expect(answererOf(vf('amd', 'qemu-tcg', { explicit: false }))).toBe('qemu-tcg');
    expect(answererOf(vf('intel', 'kvm', { explicit: false }))).toBe('kvm');
    expect(answererOf(facts())).toBe('kvm');
    // tcg-cpuid=off leaves 0x40000000 zero: nothing to infer from, so it stays 'kvm' unless set.
    const t = table();
    t.set(key(0x4000_0000, 0), ZERO_REGS);
    expect(answererOf(facts({ table: t }))).toBe('kvm');
  });
});

describe('out-of-range rules by vendor and answerer', () => {
  // Functions out of range for every model here: above level, in an empty hypervisor block, above
  // the KVM block, above xlevel, 0x5000_0000, the Centaur range with xlevel2 = 0, the top leaf.
  const OUT = [0xe, 0x3fff_ffff, 0x4000_0002, 0x4000_0100, 0x4fff_ff00, 0x5000_0000, 0x8000_0023, 0xbfff_ffff, 0xc000_0000, 0xc000_0001, 0xd000_0000, 0xffff_ffff];

  it('KVM, Intel vendor: the max basic leaf, subleaf kept (get_out_of_range_cpuid_entry)', () => {
    const f = vf('intel', 'kvm');
    for (const leaf of OUT) {
      expect(effectiveLeaf(f, leaf, 1), leaf.toString(16)).toMatchObject({ leaf: 0xd, redirected: true, zeroed: false });
      expect(ruleValue(f, leaf, 1, 0).value, leaf.toString(16)).toEqual(regs(0x1, 0, 0, 0)); // CPUID.(0xD,1)
    }
    expect(ruleValue(f, 0xc000_0000, 1, 0).rule).toMatch(/class base 0xc0000000 does not exist.*max basic leaf 0xd.*get_out_of_range_cpuid_entry/);
  });

  it('KVM, AMD vendor: zeros, including 0xC000_0000.. when QEMU passed no Centaur entry', () => {
    const f = vf('amd', 'kvm');
    for (const leaf of OUT) {
      expect(effectiveLeaf(f, leaf, 1), leaf.toString(16)).toMatchObject({ leaf, redirected: false, zeroed: true });
      expect(ruleValue(f, leaf, 1, 0).value).toEqual(ZERO_REGS);
      expect(expansionBits(f, leaf, 1, 0).mask).toEqual(regs(ALL, ALL, ALL, ALL));
    }
    expect(ruleValue(f, 0xc000_0000, 0, 0).rule).toMatch(/AuthenticAMD: all zeros.*returns NULL for AMD\/Hygon/);
  });

  it('QEMU TCG: the max basic leaf for both vendors (cpu_x86_cpuid clamps to cpuid_level)', () => {
    for (const vendor of VENDORS) {
      const f = vf(vendor, 'qemu-tcg');
      for (const leaf of OUT) {
        expect(effectiveLeaf(f, leaf, 1), `${vendor} ${leaf.toString(16)}`).toMatchObject({ leaf: 0xd, redirected: true, zeroed: false });
        expect(ruleValue(f, leaf, 1, 0).value).toEqual(regs(0x1, 0, 0, 0));
        expect(ruleValue(f, leaf, 1, 0).mask).toEqual(regs(ALL, ALL, ALL, ALL));
      }
      expect(ruleValue(f, 0xc000_0000, 1, 0).rule).toMatch(/above QEMU's limit 0x0\b.*any vendor.*cpu_x86_cpuid/);
    }
  });

  it('the lead\'s TCG failure: CPUID(0xC0000000) on an AuthenticAMD model reads leaf level, not zeros', () => {
    // [T] -cpu EPYC-v3 -accel tcg: CPUID(0xC0000000,0) = CPUID(0xD,0) = {7, 0x240, 0x340, 0}.
    const f = vf('amd', 'qemu-tcg', { explicit: false });
    f.table.set(key(0xd, 0), regs(7, 0x240, 0x340, 0));
    expect(ruleValue(f, 0xc000_0000, 0, 0).value).toEqual(regs(7, 0x240, 0x340, 0));
    expect(expansionBits(f, 0xc000_0000, 0, 0).mask).not.toEqual(regs(ALL, ALL, ALL, ALL));
  });

  it('QEMU TCG: the hypervisor range is 0x40000000..0x40000001 whatever the table holds', () => {
    for (const vendor of VENDORS) {
      const f = vf(vendor, 'qemu-tcg');
      expect(effectiveLeaf(f, 0x4000_0000, 0)).toMatchObject({ leaf: 0x4000_0000, redirected: false });
      expect(effectiveLeaf(f, 0x4000_0001, 0)).toMatchObject({ leaf: 0x4000_0001, redirected: false });
      // A calibrated look-alike of a second block (the redirected data) does not make it a class.
      f.table.set(key(0x4000_0100, 0), regs(0x40000101, 1, 2, 3));
      expect(effectiveLeaf(f, 0x4000_0100, 0)).toMatchObject({ leaf: 0xd, redirected: true });
      // With tcg-cpuid=off, 0x40000000 reads zero but 0x40000001 is still in range.
      const off = vf(vendor, 'qemu-tcg', { expansion: { 'tcg-cpuid': false } });
      off.table.set(key(0x4000_0000, 0), ZERO_REGS);
      expect(effectiveLeaf(off, 0x4000_0001, 0)).toMatchObject({ leaf: 0x4000_0001, redirected: false });
    }
  });

  it('Centaur range with xlevel2: in range up to xlevel2; above it zeros (KVM, AMD) or the max basic leaf', () => {
    for (const answerer of ANSWERERS) {
      for (const vendor of VENDORS) {
        const f = vf(vendor, answerer, { xlevel2: 0xc000_0002 });
        const what = `${answerer} ${vendor}`;
        expect(effectiveLeaf(f, 0xc000_0001, 0), what).toMatchObject({ leaf: 0xc000_0001, redirected: false, zeroed: false });
        expect(effectiveLeaf(f, 0xc000_0002, 0), what).toMatchObject({ leaf: 0xc000_0002, redirected: false, zeroed: false });
        const above = effectiveLeaf(f, 0xc000_0003, 0);
        if (answerer === 'kvm' && vendor === 'amd') expect(above, what).toMatchObject({ zeroed: true });
        else expect(above, what).toMatchObject({ leaf: 0xd, redirected: true });
        expect(expansionBits(f, 0xc000_0000, 0, 0).value.eax, what).toBe(0xc000_0002);
        expect(expansionBits(f, 0xc000_0000, 0, 0).mask.eax, what).toBe(ALL);
      }
    }
  });

  it('in-range leaves are answered as themselves for every vendor and answerer', () => {
    for (const answerer of ANSWERERS) {
      for (const vendor of VENDORS) {
        for (const leaf of [0, 1, 0xd, 0x4000_0000, 0x4000_0001, 0x8000_0000, 0x8000_001e]) {
          expect(effectiveLeaf(vf(vendor, answerer), leaf, 0), `${answerer} ${vendor} ${leaf.toString(16)}`).toMatchObject({ leaf, redirected: false, zeroed: false });
        }
      }
    }
  });
});

describe('hypervisor signature by answerer', () => {
  it("KVM: 'KVMKVMKVM'; QEMU TCG: 'TCGTCGTCGTCG' with EAX = 0x40000001, for both vendors", () => {
    for (const vendor of VENDORS) {
      const k = expansionBits(vf(vendor, 'kvm'), 0x4000_0000, 0, 0);
      expect(k.value).toMatchObject({ ebx: 0x4b4d564b, ecx: 0x564b4d56, edx: 0x4d });
      const t = expansionBits(vf(vendor, 'qemu-tcg'), 0x4000_0000, 0, 0);
      expect(t.value).toEqual(TCG_SIG);
      expect(t.mask).toEqual(regs(ALL, ALL, ALL, ALL));
      expect(t.sources[0]?.what).toMatch(/TCGTCGTCGTCG.*cpu_x86_cpuid\(\) case 0x40000000/);
    }
  });

  it('QEMU TCG with tcg-cpuid=off: 0x40000000 reads zeros', () => {
    const f = vf('amd', 'qemu-tcg', { expansion: { 'tcg-cpuid': false } });
    expect(expansionBits(f, 0x4000_0000, 0, 0).value).toEqual(ZERO_REGS);
    expect(expansionBits(f, 0x4000_0000, 0, 0).mask).toEqual(regs(ALL, ALL, ALL, ALL));
  });

  it('QEMU TCG answers 0x40000001 with zeros even if the expansion has KVM features on', () => {
    const f = vf('intel', 'qemu-tcg', { expansion: { kvmclock: true, 'kvm-pv-eoi': true } });
    expect(expansionBits(f, 0x4000_0001, 0, 0).value).toEqual(ZERO_REGS);
    expect(expansionBits(f, 0x4000_0001, 0, 0).mask).toEqual(regs(ALL, ALL, ALL, ALL));
    // Under KVM the FEAT_KVM bits are asserted from the expansion.
    const k = expansionBits(vf('intel', 'kvm', { expansion: { kvmclock: true } }), 0x4000_0001, 0, 0);
    expect(k.value.eax & 0b1001).toBe(0b1001);
  });
});

describe('vendor words in 0x80000000', () => {
  it('repeats the vendor for both vendors and both answerers (QEMU cpu_x86_cpuid case 0x80000000)', () => {
    for (const answerer of ANSWERERS) {
      expect(expansionBits(vf('amd', answerer), 0x8000_0000, 0, 0).value).toEqual(regs(0x8000001e, AUTH, CAMD, ENTI));
      expect(expansionBits(vf('intel', answerer), 0x8000_0000, 0, 0).value).toEqual(regs(0x8000001e, GENU, NTEL, INEI));
    }
  });
});

describe('OSXSAVE / OSPKE / APIC by answerer', () => {
  const bit = (f: CpuidFacts, leaf: number, sub: number, reg: keyof CpuidRegs, b: number) => {
    const m = expansionBits(f, leaf, sub, 0);
    return { asserted: ((m.mask[reg] >>> b) & 1) === 1, value: (m.value[reg] >>> b) & 1 };
  };
  const on = { osxsave: true, pke: true, apicEnabled: true };
  const off = { osxsave: false, pke: false, apicEnabled: false };

  it('OSXSAVE = CR4.OSXSAVE AND xsave, OSPKE = CR4.PKE AND pku, for both answerers and vendors', () => {
    for (const answerer of ANSWERERS) {
      for (const vendor of VENDORS) {
        const w = `${answerer} ${vendor}`;
        const withFeat = { xsave: true, pku: true };
        expect(bit(vf(vendor, answerer, { guest: on, expansion: withFeat }), 1, 0, 'ecx', 27), w).toEqual({ asserted: true, value: 1 });
        expect(bit(vf(vendor, answerer, { guest: on, expansion: withFeat }), 7, 0, 'ecx', 4), w).toEqual({ asserted: true, value: 1 });
        expect(bit(vf(vendor, answerer, { guest: off, expansion: withFeat }), 1, 0, 'ecx', 27), w).toEqual({ asserted: true, value: 0 });
        expect(bit(vf(vendor, answerer, { guest: off, expansion: withFeat }), 7, 0, 'ecx', 4), w).toEqual({ asserted: true, value: 0 });
        const noFeat = { xsave: false, pku: false };
        expect(bit(vf(vendor, answerer, { guest: on, expansion: noFeat }), 1, 0, 'ecx', 27), w).toEqual({ asserted: true, value: 0 });
        expect(bit(vf(vendor, answerer, { guest: on, expansion: noFeat }), 7, 0, 'ecx', 4), w).toEqual({ asserted: true, value: 0 });
        // kvmprop's guest: CR4.OSXSAVE and CR4.PKE clear.
        expect(bit(vf(vendor, answerer, { expansion: withFeat }), 1, 0, 'ecx', 27), w).toEqual({ asserted: true, value: 0 });
      }
    }
    expect(expansionBits(vf('amd', 'qemu-tcg', { guest: on }), 1, 0, 0).sources.find((x) => x.mask === 1 << 27)?.what).toMatch(/cpu_x86_cpuid\(\) case 1/);
    expect(expansionBits(vf('amd', 'kvm', { guest: on }), 7, 0, 0).sources.find((x) => x.reg === 'ecx' && x.mask === 1 << 4)?.what).toMatch(/kvm_update_cpuid_runtime/);
  });

  it('APIC: KVM follows IA32_APIC_BASE.EN alone; QEMU TCG needs the apic property too', () => {
    for (const vendor of VENDORS) {
      expect(bit(vf(vendor, 'kvm', { guest: on, expansion: { apic: false } }), 1, 0, 'edx', 9)).toEqual({ asserted: true, value: 1 });
      expect(bit(vf(vendor, 'kvm', { guest: off, expansion: { apic: true } }), 1, 0, 'edx', 9)).toEqual({ asserted: true, value: 0 });
      // [T] -cpu EPYC-v3,-apic: EDX[9] = 0 while the guest's APIC is enabled.
      expect(bit(vf(vendor, 'qemu-tcg', { guest: on, expansion: { apic: false } }), 1, 0, 'edx', 9)).toEqual({ asserted: true, value: 0 });
      expect(bit(vf(vendor, 'qemu-tcg', { guest: on, expansion: { apic: true } }), 1, 0, 'edx', 9)).toEqual({ asserted: true, value: 1 });
      expect(bit(vf(vendor, 'qemu-tcg', { guest: off, expansion: { apic: true } }), 1, 0, 'edx', 9)).toEqual({ asserted: true, value: 0 });
    }
  });
});

describe('topology leaves by vendor and answerer', () => {
  it('0xB: calibrated subleaves carry the vCPU x2APIC ID, invalid ones echo ECX[7:0], for all four combinations', () => {
    for (const answerer of ANSWERERS) {
      for (const vendor of VENDORS) {
        const f = vf(vendor, answerer);
        expect(ruleValue(f, 0xb, 1, 1).value).toEqual(regs(1, 2, 0x201, 1));
        expect(ruleValue(f, 0xb, 0x1234, 1).value).toEqual(regs(0, 0, 0x34, 1));
        expect(perCpuMask(f, 0xb, 0)).toEqual(regs(0, 0, 0, ALL));
      }
    }
  });

  it('0x1F: the same rule when QEMU exposes it (dies > 1), else zeros', () => {
    for (const answerer of ANSWERERS) {
      for (const vendor of VENDORS) {
        const f = vf(vendor, answerer, { expansion: { level: 0x1f } });
        f.table.set(key(0, 0), { ...f.table.get(key(0, 0))!, eax: 0x1f });
        expect(ruleValue(f, 0x1f, 70, 1).value).toEqual(ZERO_REGS); // no subleaf 1 calibrated: dies < 2
        f.table.set(key(0x1f, 0), regs(0, 1, 0x100, 0));
        f.table.set(key(0x1f, 1), regs(1, 2, 0x201, 0));
        f.table.set(key(0x1f, 2), regs(2, 4, 0x502, 0));
        const g = { ...f }; // a new facts object: predictions are memoised per object
        expect(ruleValue(g, 0x1f, 70, 1).value).toEqual(regs(0, 0, 70, 1));
        expect(ruleValue(g, 0x1f, 2, 1).value).toEqual(regs(2, 4, 0x502, 1));
      }
    }
  });

  it('0x8000001E: EAX is the vCPU APIC ID; EBX[7:0] and ECX[7:0] are left open on other vCPUs; for both vendors', () => {
    // [T] EPYC-v3 and [S] host,vendor=GenuineIntel: vCPU1 reads {1, 1, 0, 0}; QEMU has no vendor test there.
    for (const answerer of ANSWERERS) {
      for (const vendor of VENDORS) {
        const f = vf(vendor, answerer);
        const r0 = ruleValue(f, 0x8000_001e, 0, 0);
        expect(r0.value).toEqual(ZERO_REGS);
        expect(r0.mask).toEqual(regs(ALL, ALL, ALL, ALL));
        const r1 = ruleValue(f, 0x8000_001e, 0, 1);
        expect(r1.value.eax).toBe(1);
        expect(r1.mask).toEqual(regs(ALL, ~0xff >>> 0, ~0xff >>> 0, ALL));
        expect(perCpuMask(f, 0x8000_001e, 0)).toEqual(regs(ALL, 0xff, 0xff, 0));
      }
    }
  });

  it('0x80000008 ECX (NC, ApicIdSize) is the same on every vCPU', () => {
    for (const answerer of ANSWERERS) {
      for (const vendor of VENDORS) {
        const f = vf(vendor, answerer);
        f.table.set(key(0x8000_0008, 0), regs(0x3028, 0, 0x1001, 0)); // [T] -smp 2
        expect(perCpuMask(f, 0x8000_0008, 0)).toEqual(ZERO_REGS);
        expect(ruleValue(f, 0x8000_0008, 0, 1).value.ecx).toBe(0x1001);
        expect(ruleValue(f, 0x8000_0008, 0, 1).mask.ecx).toBe(ALL);
      }
    }
  });

  it('perCpuMask: nothing is per-vCPU in an AMD zero answer; a TCG redirect carries the max basic leaf\'s fields', () => {
    expect(perCpuMask(vf('amd', 'kvm'), 0xc000_0000, 0)).toEqual(ZERO_REGS);
    const t = vf('amd', 'qemu-tcg', { expansion: { level: 0xb } });
    t.table.set(key(0, 0), regs(0xb, AUTH, CAMD, ENTI));
    expect(perCpuMask(t, 0xc000_0000, 0)).toEqual(regs(0, 0, 0, ALL));
    expect(ruleValue(t, 0xc000_0000, 70, 1).value).toEqual(regs(0, 0, 70, 1)); // CPUID(0xB, 70) on vCPU 1
  });
});

describe('filtered features', () => {
  // [T] -cpu EPYC-v3 -accel tcg: 'filtered-features' has {EBX of 7.0: rdseed|sha-ni|…} and {EAX of 0xD.1: xsavec|xsaves}.
  const filtered = [
    { 'cpuid-input-eax': 7, 'cpuid-input-ecx': 0, 'cpuid-register': 'EBX', features: (1 << 18) | (1 << 29) },
    { 'cpuid-input-eax': 0xd, 'cpuid-input-ecx': 1, 'cpuid-register': 'EAX', features: 0b1010 },
    { 'cpuid-input-eax': 0x8000_0001, 'cpuid-register': 'ECX', features: 1 << 22 },
  ];
  const expansion = { rdseed: true, 'sha-ni': true, avx2: true, xsavec: true, xsaves: true, xsaveopt: true, topoext: true };

  it('asserts a filtered feature as 0 although the expansion says true, with the reason', () => {
    for (const answerer of ANSWERERS) {
      const f = vf('amd', answerer, { expansion, filteredFeatures: filtered });
      const m7 = expansionBits(f, 7, 0, 0);
      expect((m7.mask.ebx >>> 18) & 1).toBe(1);
      expect((m7.value.ebx >>> 18) & 1).toBe(0);
      expect((m7.value.ebx >>> 29) & 1).toBe(0);
      expect((m7.value.ebx >>> 5) & 1).toBe(1); // avx2 not filtered
      expect(m7.sources.find((x) => x.mask === 1 << 18)?.what).toMatch(/filtered it out at realize/);
      const md = expansionBits(f, 0xd, 1, 0);
      expect(md.value.eax & 0b1111).toBe(0b0001); // xsaveopt stays, xsavec/xsaves filtered
      expect(expansionBits(f, 0xd, 0, 0).mask.eax & 0b1010).toBe(0); // subleaf 0 has no such features
      expect((expansionBits(f, 0x8000_0001, 0, 0).value.ecx >>> 22) & 1).toBe(0); // topoext
      // Through a TCG redirect too: CPUID(0xC0000000, 1) is CPUID(0xD, 1).
      if (answerer === 'qemu-tcg') expect(expansionBits(f, 0xc000_0000, 1, 0).value.eax & 0b1111).toBe(0b0001);
    }
  });

  it('without filteredFeatures the expansion is taken as it is', () => {
    const f = vf('amd', 'qemu-tcg', { expansion });
    expect((expansionBits(f, 7, 0, 0).value.ebx >>> 18) & 1).toBe(1);
  });
});
