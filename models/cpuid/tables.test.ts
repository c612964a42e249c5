import { accessSync, constants } from 'node:fs';
import { execa, execaSync } from 'execa';
import { describe, expect, it } from 'vitest';
import {
  CPUID_FEATURE_BITS,
  DYNAMIC_FEATURE_NAMES,
  MULTI_BIT_PROPERTIES,
  NOT_QEMU_PROPERTIES,
  featureBitsNamed,
} from './features.js';
import {
  CPUID_CLASSES,
  DYNAMIC_FIELDS,
  INDEXED_LEAVES,
  PER_CPU_FIELDS,
  cpuidClassBase,
  isIndexedLeaf,
  outOfRangeRule,
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
