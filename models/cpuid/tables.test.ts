import { accessSync, constants } from 'node:fs';
import { execa, execaSync } from 'execa';
import { describe, expect, it } from 'vitest';
import {
  CPUID_FEATURE_BITS,
  DYNAMIC_FEATURE_NAMES,
  MULTI_BIT_PROPERTIES,
  NOT_QEMU_PROPERTIES,
  featureBitsNamed,
  filteredBits,
  filteredFeatureNames,
} from './features.js';
import {
  ANSWERERS,
  CPUID_CLASSES,
  DYNAMIC_FIELDS,
  INDEXED_LEAVES,
  OUT_OF_RANGE_RULES,
  PER_CPU_FIELDS,
  QEMU_TCG_CLASSES,
  QEMU_TCG_SIGNATURE,
  TOPOLOGY_FIELDS,
  answererForAccel,
  cpuidClassBase,
  isIndexedLeaf,
  outOfRangeRule,
  perCpuFields,
  qemuTcgLimit,
  vendorClass,
  type CpuidAnswerer,
} from './leaves.js';

const REGS = ['eax', 'ebx', 'ecx', 'edx'];

describe('CPUID_FEATURE_BITS', () => {
  it('has no duplicate (leaf, subleaf, reg, bit)', () => {
    const seen = new Map<string, string>();
    for (const b of CPUID_FEATURE_BITS) {
      const key = `${b.leaf.toString(16)}.${b.subleaf}.${b.reg}[${b.bit}]`;
      expect(seen.get(key), `${key} used by ${seen.get(key)} and ${b.name}`).toBeUndefined();
      seen.set(key, b.name);
    }
  });

  it('uses bits 0..31, valid registers and 32-bit leaves', () => {
    for (const b of CPUID_FEATURE_BITS) {
      expect(Number.isInteger(b.bit) && b.bit >= 0 && b.bit <= 31, b.name).toBe(true);
      expect(REGS).toContain(b.reg);
      expect(b.leaf >>> 0).toBe(b.leaf);
      expect(Number.isInteger(b.subleaf) && b.subleaf >= 0, b.name).toBe(true);
    }
  });

  it('has unique names, except QEMU properties that really cover several bits (kvmclock)', () => {
    const counts = new Map<string, number>();
    for (const b of CPUID_FEATURE_BITS) counts.set(b.name, (counts.get(b.name) ?? 0) + 1);
    for (const [name, n] of counts) expect(n, name).toBe(MULTI_BIT_PROPERTIES.get(name) ?? 1);
    expect(featureBitsNamed('kvmclock').map((b) => b.bit).sort()).toEqual([0, 3]);
  });

  it('uses a subleaf other than 0 only for indexed functions', () => {
    for (const b of CPUID_FEATURE_BITS) if (b.subleaf !== 0) expect(isIndexedLeaf(b.leaf), b.name).toBe(true);
  });

  it('marks the known dynamic bits', () => {
    const byName = (n: string) => featureBitsNamed(n)[0];
    expect(byName('osxsave')).toMatchObject({ leaf: 1, reg: 'ecx', bit: 27 });
    expect(byName('osxsave')?.dynamic).toMatch(/CR4\.OSXSAVE/);
    expect(byName('ospke')).toMatchObject({ leaf: 7, subleaf: 0, reg: 'ecx', bit: 4 });
    expect(byName('ospke')?.dynamic).toMatch(/CR4\.PKE/);
    expect(byName('apic')).toMatchObject({ leaf: 1, reg: 'edx', bit: 9 });
    expect(byName('apic')?.dynamic).toMatch(/APIC_BASE/);
    for (const n of DYNAMIC_FEATURE_NAMES) expect(featureBitsNamed(n).length, n).toBeGreaterThan(0);
    for (const n of NOT_QEMU_PROPERTIES) expect(featureBitsNamed(n).length, n).toBe(1);
  });

  it('covers the requested feature words', () => {
    const words = new Set(CPUID_FEATURE_BITS.map((b) => `${b.leaf.toString(16)}.${b.subleaf}.${b.reg}`));
    for (const w of [
      '1.0.ecx', '1.0.edx', '6.0.eax', '7.0.ebx', '7.0.ecx', '7.0.edx', '7.1.eax', 'd.1.eax', '14.0.ecx',
      '80000001.0.ecx', '80000001.0.edx', '80000007.0.edx', '80000008.0.ebx', '8000000a.0.edx',
      '40000001.0.eax', '40000001.0.edx',
    ]) expect(words, w).toContain(w);
  });
});

describe('leaf tables', () => {
  it('isIndexedLeaf', () => {
    for (const l of [4, 7, 0xb, 0xd, 0x1f, 0x8000001d]) expect(isIndexedLeaf(l), l.toString(16)).toBe(true);
    for (const l of [0, 1, 2, 6, 0x80000001, 0x8000001e, 0x40000000, 0x40000001]) {
      expect(isIndexedLeaf(l), l.toString(16)).toBe(false);
    }
  });

  it('INDEXED_LEAVES has one entry per leaf, each with a rule and a citation', () => {
    expect(new Set(INDEXED_LEAVES.map((l) => l.leaf)).size).toBe(INDEXED_LEAVES.length);
    for (const l of INDEXED_LEAVES) {
      expect(l.subleavesRule.length).toBeGreaterThan(10);
      expect(l.citation.length).toBeGreaterThan(10);
    }
  });

  it('per-CPU and dynamic fields have sane masks', () => {
    for (const f of [...PER_CPU_FIELDS, ...DYNAMIC_FIELDS]) {
      expect(REGS).toContain(f.reg);
      expect(f.mask >>> 0, `${f.leaf.toString(16)} ${f.reg}`).toBe(f.mask);
      expect(f.mask).not.toBe(0);
      if (f.subleaf !== 'any') expect(isIndexedLeaf(f.leaf)).toBe(true);
      expect(f.citation.length).toBeGreaterThan(10);
    }
    expect(PER_CPU_FIELDS).toContainEqual(expect.objectContaining({ leaf: 0xb, reg: 'edx', mask: 0xffffffff }));
    expect(PER_CPU_FIELDS).toContainEqual(expect.objectContaining({ leaf: 1, reg: 'ebx', mask: 0xff000000 }));
  });

  it('dynamic fields agree with the dynamic feature bits', () => {
    for (const name of ['osxsave', 'ospke', 'apic', 'hle', 'rtm', 'monitor', 'invtsc']) {
      const b = featureBitsNamed(name)[0];
      expect(b, name).toBeDefined();
      if (!b) continue;
      const hit = DYNAMIC_FIELDS.some(
        (f) => f.leaf === b.leaf && f.reg === b.reg && (f.subleaf === 'any' || f.subleaf === b.subleaf) && ((f.mask >>> b.bit) & 1) === 1,
      );
      expect(hit, name).toBe(true);
    }
  });

  it('CPUID_CLASSES cover the 32-bit space exactly once', () => {
    const sorted = [...CPUID_CLASSES].sort((a, b) => a.from - b.from);
    let next = 0;
    for (const c of sorted) {
      expect(c.from, c.name).toBe(next);
      expect(c.to).toBeGreaterThanOrEqual(c.from);
      next = c.to + 1;
    }
    expect(next).toBe(0x1_0000_0000);
    expect(cpuidClassBase(0x5)).toBe(0);
    expect(cpuidClassBase(0x5000_0001)).toBe(0);
    expect(cpuidClassBase(0x4000_0105)).toBe(0x4000_0100);
    expect(cpuidClassBase(0x8000_0021)).toBe(0x8000_0000);
    expect(cpuidClassBase(0xd000_0000)).toBe(0xc000_0000);
  });

  it('outOfRangeRule', () => {
    expect(outOfRangeRule('GenuineIntel')).toBe('max-basic');
    expect(outOfRangeRule('CentaurHauls')).toBe('max-basic');
    expect(outOfRangeRule('AuthenticAMD')).toBe('zero');
    expect(outOfRangeRule('HygonGenuine')).toBe('zero');
  });

  it('outOfRangeRule by answerer: QEMU TCG clamps for every vendor, KVM zeroes for AMD/Hygon', () => {
    for (const v of ['GenuineIntel', 'AuthenticAMD', 'AMDisbetter!', 'HygonGenuine', 'CentaurHauls', '  Shanghai  ']) {
      expect(outOfRangeRule(v, 'qemu-tcg'), v).toBe('max-basic');
      expect(outOfRangeRule(v, 'kvm'), v).toBe(outOfRangeRule(v));
    }
    expect(outOfRangeRule('AMDisbetter!', 'kvm')).toBe('zero');
  });

  it('vendorClass', () => {
    expect(vendorClass('GenuineIntel')).toBe('intel');
    for (const v of ['AuthenticAMD', 'AMDisbetter!', 'HygonGenuine']) expect(vendorClass(v), v).toBe('amd');
    expect(vendorClass('CentaurHauls')).toBe('other');
  });

  it('OUT_OF_RANGE_RULES: exactly one rule per answerer and vendor class, each cited', () => {
    for (const a of Object.keys(ANSWERERS) as CpuidAnswerer[]) {
      for (const v of ['intel', 'amd', 'other'] as const) {
        expect(OUT_OF_RANGE_RULES.filter((r) => r.answerer === a && r.vendors.includes(v)), `${a} ${v}`).toHaveLength(1);
      }
      expect(ANSWERERS[a].citation.length).toBeGreaterThan(10);
    }
    for (const r of OUT_OF_RANGE_RULES) {
      expect(r.citation).toMatch(r.answerer === 'kvm' ? /get_out_of_range_cpuid_entry/ : /cpu_x86_cpuid/);
      expect(r.outOfRange.length).toBeGreaterThan(20);
    }
    expect(answererForAccel('kvm')).toBe('kvm');
    expect(answererForAccel('tcg')).toBe('qemu-tcg');
  });

  it('QEMU_TCG_CLASSES cover the 32-bit space once and agree with qemuTcgLimit', () => {
    const sorted = [...QEMU_TCG_CLASSES].sort((a, b) => a.from - b.from);
    let next = 0;
    for (const c of sorted) {
      expect(c.from, c.name).toBe(next);
      next = c.to + 1;
    }
    expect(next).toBe(0x1_0000_0000);
    const max = { basic: 0xd, extended: 0x8000001e, centaur: 0 };
    expect(qemuTcgLimit(0x5, max)).toBe(0xd);
    expect(qemuTcgLimit(0x3fff_ffff, max)).toBe(0xd);
    for (const l of [0x4000_0000, 0x4000_0100, 0x4fff_ffff, 0x5000_0000, 0x7fff_ffff]) expect(qemuTcgLimit(l, max), l.toString(16)).toBe(0x4000_0001);
    expect(qemuTcgLimit(0x8000_0021, max)).toBe(0x8000001e);
    expect(qemuTcgLimit(0xc000_0000, max)).toBe(0);
    expect(qemuTcgLimit(0xffff_ffff, { ...max, centaur: 0xc000_0002 })).toBe(0xc000_0002);
  });

  it("QEMU_TCG_SIGNATURE spells 'TCGTCGTCGTCG' in EBX, ECX, EDX", () => {
    const s = [QEMU_TCG_SIGNATURE.ebx, QEMU_TCG_SIGNATURE.ecx, QEMU_TCG_SIGNATURE.edx].map((w) => String.fromCharCode(w & 0xff, (w >> 8) & 0xff, (w >> 16) & 0xff, w >>> 24)).join('');
    expect(s).toBe('TCGTCGTCGTCG');
    expect(QEMU_TCG_SIGNATURE.eax).toBe(0x40000001);
  });

  it('perCpuFields: the same set for every vendor and answerer under QEMU 7.2, each field with its manuals', () => {
    for (const v of ['GenuineIntel', 'AuthenticAMD', 'HygonGenuine']) {
      for (const a of ['kvm', 'qemu-tcg'] as const) expect(perCpuFields(v, a), `${v} ${a}`).toEqual(PER_CPU_FIELDS);
    }
    for (const f of PER_CPU_FIELDS) expect(f.definedBy.length, f.leaf.toString(16)).toBeGreaterThan(0);
    expect(PER_CPU_FIELDS).toContainEqual(expect.objectContaining({ leaf: 0x8000001e, reg: 'eax', mask: 0xffffffff, definedBy: ['amd'] }));
    expect(PER_CPU_FIELDS).toContainEqual(expect.objectContaining({ leaf: 0x1f, reg: 'edx', definedBy: ['intel'] }));
  });

  it('TOPOLOGY_FIELDS are cited, and none of them is per-vCPU', () => {
    for (const t of TOPOLOGY_FIELDS) {
      expect(t.citation.length, t.leaf.toString(16)).toBeGreaterThan(10);
      expect(t.vendors.length).toBeGreaterThan(0);
      for (const p of PER_CPU_FIELDS) if (p.leaf === t.leaf && p.reg === t.reg) expect(p.mask & t.mask, t.leaf.toString(16)).toBe(0);
    }
    expect(TOPOLOGY_FIELDS).toContainEqual(expect.objectContaining({ leaf: 0x80000008, reg: 'ecx', mask: 0xf0ff }));
  });

  it('every dynamic field says what QEMU TCG does with it', () => {
    for (const f of DYNAMIC_FIELDS) expect(f.qemuTcg.length, `${f.leaf.toString(16)} ${f.reg}`).toBeGreaterThan(10);
  });
});

describe('filtered-features', () => {
  const words = [
    { 'cpuid-input-eax': 7, 'cpuid-input-ecx': 0, 'cpuid-register': 'EBX', features: 537133056 }, // [T] EPYC-v3
    { 'cpuid-input-eax': 0x80000008, 'cpuid-register': 'EBX', features: 4101 },
  ];
  it('filteredBits selects by leaf, register and (when the word has one) subleaf', () => {
    expect(filteredBits(words, 7, 0, 'ebx')).toBe(537133056);
    expect(filteredBits(words, 7, 1, 'ebx')).toBe(0);
    expect(filteredBits(words, 7, 0, 'ecx')).toBe(0);
    expect(filteredBits(words, 0x80000008, 0, 'ebx')).toBe(4101);
    expect(filteredBits(undefined, 7, 0, 'ebx')).toBe(0);
  });
  it('filteredFeatureNames names them', () => {
    expect(filteredFeatureNames(words).sort()).toEqual(['clzero', 'ibpb', 'rdseed', 'sha-ni', 'xsaveerptr'].sort());
  });
});

// ── One real check: the names match what this machine's QEMU reports. ───────────────────────────
const QEMU = 'qemu-system-x86_64';
const haveQemu = execaSync(QEMU, ['--version'], { reject: false }).exitCode === 0;
const haveKvm = (() => {
  try {
    accessSync('/dev/kvm', constants.R_OK | constants.W_OK);
    return true;
  } catch {
    return false;
  }
})();

describe.skipIf(!haveQemu || !haveKvm)('names against query-cpu-model-expansion (real QEMU + KVM)', () => {
  it('every table name is a boolean property of the host model expansion', async () => {
    const input = [
      '{"execute":"qmp_capabilities"}',
      '{"execute":"query-cpu-model-expansion","arguments":{"type":"full","model":{"name":"host"}}}',
      '{"execute":"quit"}',
      '',
    ].join('\n');
    const r = await execa(QEMU, ['-M', 'none', '-accel', 'kvm', '-nodefaults', '-no-user-config', '-display', 'none', '-qmp', 'stdio'], {
      input,
      reject: false,
      timeout: 60_000,
    });
    let props: Record<string, unknown> | undefined;
    for (const line of r.stdout.split('\n')) {
      if (!line.includes('"props"')) continue;
      const msg = JSON.parse(line) as { return?: { model?: { props?: Record<string, unknown> } } };
      props = msg.return?.model?.props;
    }
    expect(props, `no expansion in QEMU output:\n${r.stdout}\n${r.stderr}`).toBeDefined();
    if (!props) return;
    const booleans = new Set(Object.entries(props).filter(([, v]) => typeof v === 'boolean').map(([k]) => k));

    const tableNames = new Set(CPUID_FEATURE_BITS.map((b) => b.name));
    const missing = [...tableNames].filter((n) => !NOT_QEMU_PROPERTIES.has(n) && !booleans.has(n));
    expect(missing, 'table names QEMU does not report').toEqual([]);
    for (const n of NOT_QEMU_PROPERTIES) expect(booleans.has(n), `${n} is not expected to be a QEMU property`).toBe(false);

    // The rest are aliases, MSR-based vmx-*/arch-capabilities bits, hv-* and other non-CPUID options.
    const unlisted = [...booleans].filter((n) => !tableNames.has(n));
    expect(booleans.size - unlisted.length).toBeGreaterThan(200);
  });
});

// ── Real QEMU under TCG: what query-cpu-model-expansion says for the models the model was checked on. ──
async function qmpTcg(commands: object[]): Promise<unknown[]> {
  const input = [{ execute: 'qmp_capabilities' }, ...commands, { execute: 'quit' }].map((c) => JSON.stringify(c)).join('\n') + '\n';
  const r = await execa(QEMU, ['-M', 'none', '-accel', 'tcg', '-nodefaults', '-no-user-config', '-display', 'none', '-qmp', 'stdio'], {
    input,
    reject: false,
    timeout: 60_000,
  });
  return r.stdout
    .split('\n')
    .filter((l) => l.includes('"return"'))
    .map((l) => (JSON.parse(l) as { return: unknown }).return)
    .slice(1, 1 + commands.length);
}

describe.skipIf(!haveQemu)('CPU models under TCG (real QEMU, no guest)', () => {
  it('EPYC-v3 and Skylake-Client-v3 report vendor and max leaves; the expansion does not show TCG filtering', async () => {
    const expand = (name: string) => ({ execute: 'query-cpu-model-expansion', arguments: { type: 'full', model: { name } } });
    const [epyc, sky, defs] = (await qmpTcg([expand('EPYC-v3'), expand('Skylake-Client-v3'), { execute: 'query-cpu-definitions' }])) as [
      { model: { props: Record<string, unknown> } },
      { model: { props: Record<string, unknown> } },
      { name: string; 'unavailable-features': string[] }[],
    ];
    expect(epyc.model.props).toMatchObject({ vendor: 'AuthenticAMD', level: 0xd, xlevel: 0x8000001e, xlevel2: 0, 'tcg-cpuid': true });
    expect(sky.model.props).toMatchObject({ vendor: 'GenuineIntel', level: 0xd, xlevel: 0x80000008, xlevel2: 0, 'tcg-cpuid': true });
    // The expansion describes the model: rdseed is on although TCG cannot provide it (QEMU drops it
    // at realize, so the guest reads 0). CpuidFacts.filteredFeatures carries that.
    expect(epyc.model.props.rdseed).toBe(true);
    expect(defs.find((d) => d.name === 'EPYC-v3')?.['unavailable-features']).toContain('rdseed');
  });
});
