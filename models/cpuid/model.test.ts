import { describe, expect, it } from 'vitest';
import { isIndexedLeaf } from './leaves.js';
import {
  CALIBRATED_SUBLEAVES,
  KVMPROP_GUEST_STATE,
  ZERO_REGS,
  calibrationQueries,
  effectiveLeaf,
  expansionBits,
  key,
  perCpuMask,
  ruleValue,
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
      expect(effectiveLeaf(f, leaf, 0), leaf.toString(16)).toEqual({ leaf, redirected: false, zeroed: false });
    }
  });

  it('redirects an out-of-range leaf to the max basic leaf for an Intel guest', () => {
    for (const leaf of [0xe, 0x3fff_ffff, 0x5000_0000, 0x8000_0009, 0xc000_0000, 0xffff_ffff]) {
      expect(effectiveLeaf(f, leaf, 0), leaf.toString(16)).toEqual({ leaf: 0xd, redirected: true, zeroed: false });
    }
  });

  it('zeroes an out-of-range leaf for an AuthenticAMD guest', () => {
    expect(effectiveLeaf(amd(), 0xe, 0)).toEqual({ leaf: 0xe, redirected: false, zeroed: true });
    expect(effectiveLeaf(amd(), 0x8000_0009, 0)).toEqual({ leaf: 0x8000_0009, redirected: false, zeroed: true });
    expect(effectiveLeaf(amd(), 6, 0)).toEqual({ leaf: 6, redirected: false, zeroed: false });
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

  it('fixes the max extended leaf in 0x80000000 EAX', () => {
    const m = expansionBits(f, 0x8000_0000, 0, 0);
    expect(m.value.eax).toBe(0x80000008);
    expect(m.mask).toEqual(regs(ALL, 0, 0, 0));
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
