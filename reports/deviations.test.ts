/**
 * The CPU and -cpu traits of known deviations. The older traits (kernel, modules, QEMU version, CPU
 * model name) and the file format are tested in reports.test.ts.
 */
import { describe, expect, it } from 'vitest';
import { CPU_FLAGS, type HostFingerprint, type QemuCpuChoice } from '../harness/fingerprint.js';
import { DeviationsError, hostMatches, matchDeviation, parseDeviations, runConfigOf, type HostMatch, type KnownDeviation } from './deviations.js';

/** The AMD EPYC (Zen 3) host of shared/fixtures/amd-epyc-kvm-pvm, run with -cpu host,-arch-capabilities. */
function amdHost(): HostFingerprint {
  return {
    schema: 1,
    collectedAt: '2026-12-01T08:55:30.003Z',
    kernel: { release: '6.18.44-fc-v657', version: 'Linux version 6.18.44-fc-v657' },
    cpu: {
      model: 'AMD EPYC', vendor: 'AuthenticAMD', family: 25, modelNumber: 1, stepping: 1,
      flags: ['x2apic', 'tsc_deadline_timer', 'constant_tsc', 'nonstop_tsc', 'hypervisor', 'pdpe1gb'],
    },
    kvm: {
      device: 'ok',
      apiVersion: 12,
      modules: [{ name: 'kvm', parameters: {} }, { name: 'kvm_pvm', parameters: {} }],
      vendorModules: ['kvm_pvm'],
      caps: {},
      nested: false,
      dirtyRing: true,
      manualDirtyLogProtect: true,
      tscScaling: true,
      x2apic: true,
      tscDeadline: true,
    },
    qemu: { path: '/usr/bin/qemu-system-x86_64', found: true, version: '7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)' },
    qemuCpu: {
      requested: 'host',
      used: 'host,-arch-capabilities',
      fallback: {
        reason: 'KVM refuses MSR 0x10a (IA32_ARCH_CAPABILITIES)',
        qemuMessage: 'qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69',
        commandLine: ['/usr/bin/qemu-system-x86_64', '-cpu', 'host'],
      },
    },
    tools: { gcc: 'gcc 12.2.0', ld: 'GNU ld 2.40' },
  };
}

/** An Intel Sapphire Rapids host with CPUID faulting, run with -cpu host. */
function intelHost(): HostFingerprint {
  const fp = amdHost();
  fp.cpu = {
    model: 'Intel(R) Xeon(R) Platinum 8480+', vendor: 'GenuineIntel', family: 6, modelNumber: 143, stepping: 8,
    flags: ['vmx', 'x2apic', 'tsc_deadline_timer', 'constant_tsc', 'nonstop_tsc', 'hypervisor', 'pdpe1gb', 'cpuid_fault'],
  };
  fp.qemuCpu = { requested: 'host', used: 'host' };
  return fp;
}

const DEVIATION: KnownDeviation = {
  id: 'pvm-cpl3-cpuid-not-intercepted',
  property: 'leaks.cpuid.cpl-invariant',
  host: { vendorModules: ['kvm_pvm'], cpuVendor: 'AuthenticAMD', cpuFlagsAbsent: ['cpuid_fault'] },
  failure: '^CPUID\\(0x1, 0x0\\) at CPL 3 differs',
  evidence: 'the same program reads CPUID.1:ECX=0xfffa3203 at CPL 3 and 0xf7f83203 at CPL 0',
  citation: 'Linux Documentation/virt/kvm/api.rst, KVM_SET_CPUID2',
  recorded: '2026-12-01',
};

const text = (...ds: unknown[]) => JSON.stringify({ version: 1, deviations: ds });
const withHost = (host: unknown) => text({ ...DEVIATION, host });
const parseHost = (host: unknown) => parseDeviations(withHost(host)).deviations[0]!.host;

describe('parseDeviations: CPU and -cpu traits', () => {
  it('accepts every new trait', () => {
    const host: HostMatch = {
      cpuVendor: 'AuthenticAMD',
      cpuFamily: 25,
      cpuModelNumber: 1,
      cpuFlagsPresent: ['x2apic'],
      cpuFlagsAbsent: ['cpuid_fault', 'svm'],
      qemuCpuModel: '^host(,|$)',
    };
    expect(parseHost(host)).toEqual(host);
    expect(parseHost({ cpuFamily: 0 })).toEqual({ cpuFamily: 0 });
    expect(parseHost({ cpuFlagsAbsent: [] })).toEqual({ cpuFlagsAbsent: [] });
  });

  it('rejects misspelled trait names, listing the known ones', () => {
    for (const k of ['cpuvendor', 'cpuModelNum', 'cpuFlags', 'qemuCpu', 'cpuStepping']) {
      expect(() => parseDeviations(withHost({ [k]: 'x' })), k).toThrow(DeviationsError);
      expect(() => parseDeviations(withHost({ [k]: 'x' })), k).toThrow(new RegExp(`host\\.${k} is not a host trait \\(known: .*cpuFlagsAbsent`));
    }
  });

  it('cpuVendor must be a non-empty string', () => {
    for (const v of [1, '', ['AuthenticAMD'], null]) {
      expect(() => parseDeviations(withHost({ cpuVendor: v })), JSON.stringify(v)).toThrow(/host\.cpuVendor must be a vendor string/);
    }
  });

  it('cpuFamily and cpuModelNumber must be non-negative integers', () => {
    for (const k of ['cpuFamily', 'cpuModelNumber']) {
      for (const v of ['25', 25.5, -1, null, '0x19', true]) {
        expect(() => parseDeviations(withHost({ [k]: v })), `${k}=${JSON.stringify(v)}`).toThrow(new RegExp(`host\\.${k} must be a non-negative integer`));
      }
    }
  });

  it('cpuFlagsPresent and cpuFlagsAbsent must be arrays of flags the fingerprint records', () => {
    for (const k of ['cpuFlagsPresent', 'cpuFlagsAbsent']) {
      for (const v of ['cpuid_fault', [1], [''], null]) {
        expect(() => parseDeviations(withHost({ [k]: v })), `${k}=${JSON.stringify(v)}`).toThrow(new RegExp(`host\\.${k} must be an array of CPU flag names`));
      }
      // A flag the fingerprint never records would read absent on every host.
      expect(() => parseDeviations(withHost({ [k]: ['cpuid_faults'] }))).toThrow(
        new RegExp(`host\\.${k}: "cpuid_faults" is not a CPU flag the fingerprint records \\(known: .*cpuid_fault`),
      );
      expect(() => parseDeviations(withHost({ [k]: ['avx2'] }))).toThrow(/"avx2" is not a CPU flag the fingerprint records/);
    }
    for (const f of CPU_FLAGS) expect(parseHost({ cpuFlagsPresent: [f] })).toEqual({ cpuFlagsPresent: [f] });
  });

  it('qemuCpuModel must be a valid regular expression', () => {
    expect(() => parseDeviations(withHost({ qemuCpuModel: 'host,(' }))).toThrow(/invalid regular expression "host,\("/);
    expect(() => parseDeviations(withHost({ qemuCpuModel: 5 }))).toThrow(/host\.qemuCpuModel must be a regular expression/);
    expect(() => parseDeviations(withHost({ qemuCpuModel: '' }))).toThrow(/host\.qemuCpuModel must be a regular expression/);
  });

  it('the older regular-expression traits must be strings too', () => {
    for (const k of ['kernelRelease', 'qemuVersion', 'cpuModel']) {
      expect(() => parseDeviations(withHost({ [k]: 7 })), k).toThrow(new RegExp(`host\\.${k} must be a regular expression`));
    }
  });
});

describe('hostMatches: CPU and -cpu traits', () => {
  const amd = amdHost();
  const intel = intelHost();

  it('cpuVendor matches the vendor exactly', () => {
    expect(hostMatches({ cpuVendor: 'AuthenticAMD' }, amd)).toBe(true);
    expect(hostMatches({ cpuVendor: 'AuthenticAMD' }, intel)).toBe(false);
    expect(hostMatches({ cpuVendor: 'GenuineIntel' }, intel)).toBe(true);
    // Exact, not a pattern.
    expect(hostMatches({ cpuVendor: 'AMD' }, amd)).toBe(false);
    expect(hostMatches({ cpuVendor: 'authenticamd' }, amd)).toBe(false);
    expect(hostMatches({ cpuVendor: 'Authentic.MD' }, amd)).toBe(false);
  });

  it('cpuFamily and cpuModelNumber match the numbers', () => {
    expect(hostMatches({ cpuFamily: 25 }, amd)).toBe(true);
    expect(hostMatches({ cpuFamily: 25, cpuModelNumber: 1 }, amd)).toBe(true);
    expect(hostMatches({ cpuFamily: 25, cpuModelNumber: 17 }, amd)).toBe(false);
    expect(hostMatches({ cpuFamily: 6 }, amd)).toBe(false);
    expect(hostMatches({ cpuFamily: 6, cpuModelNumber: 143 }, intel)).toBe(true);
    expect(hostMatches({ cpuModelNumber: 1 }, intel)).toBe(false);
  });

  it('an unknown family or model number matches nothing', () => {
    const unknown = amdHost();
    unknown.cpu = { ...unknown.cpu, family: null, modelNumber: null };
    expect(hostMatches({ cpuFamily: 25 }, unknown)).toBe(false);
    expect(hostMatches({ cpuModelNumber: 1 }, unknown)).toBe(false);
    // Fingerprints written before these were recorded.
    const old = amdHost();
    old.cpu = { model: 'AMD EPYC', vendor: 'AuthenticAMD', flags: [] };
    expect(hostMatches({ cpuFamily: 25 }, old)).toBe(false);
    expect(hostMatches({ cpuModelNumber: 0 }, old)).toBe(false);
    expect(hostMatches({ cpuVendor: 'AuthenticAMD' }, old)).toBe(true);
  });

  it('cpuFlagsPresent needs every flag, cpuFlagsAbsent needs none', () => {
    expect(hostMatches({ cpuFlagsPresent: ['x2apic', 'pdpe1gb'] }, amd)).toBe(true);
    expect(hostMatches({ cpuFlagsPresent: ['x2apic', 'cpuid_fault'] }, amd)).toBe(false);
    expect(hostMatches({ cpuFlagsPresent: ['x2apic', 'cpuid_fault'] }, intel)).toBe(true);
    expect(hostMatches({ cpuFlagsAbsent: ['cpuid_fault'] }, amd)).toBe(true);
    expect(hostMatches({ cpuFlagsAbsent: ['cpuid_fault'] }, intel)).toBe(false);
    expect(hostMatches({ cpuFlagsAbsent: ['svm', 'vmx'] }, amd)).toBe(true);
    expect(hostMatches({ cpuFlagsAbsent: ['svm', 'vmx'] }, intel)).toBe(false);
    expect(hostMatches({ cpuFlagsPresent: [], cpuFlagsAbsent: [] }, amd)).toBe(true);
  });

  it('qemuCpuModel matches the -cpu model QEMU ran, not the one requested', () => {
    expect(hostMatches({ qemuCpuModel: '^host,-arch-capabilities$' }, amd)).toBe(true);
    expect(hostMatches({ qemuCpuModel: '^host$' }, amd)).toBe(false);
    expect(hostMatches({ qemuCpuModel: '^host$' }, intel)).toBe(true);
    expect(hostMatches({ qemuCpuModel: '^host(,|$)' }, amd)).toBe(true);
    expect(hostMatches({ qemuCpuModel: '^host(,|$)' }, intel)).toBe(true);
    expect(hostMatches({ qemuCpuModel: 'EPYC' }, amd)).toBe(false);
  });

  it('qemuCpuModel matches nothing when the -cpu model is unknown', () => {
    const noRun = amdHost();
    delete noRun.qemuCpu;
    expect(hostMatches({ qemuCpuModel: '.*' }, noRun)).toBe(false);
    expect(hostMatches({ qemuCpuModel: '^host' }, noRun)).toBe(false);
    const fallback: QemuCpuChoice = { requested: 'max', used: 'max,-arch-capabilities' };
    expect(hostMatches({ qemuCpuModel: '^max' }, { ...noRun, qemuCpu: fallback })).toBe(true);
  });

  it('every named trait must hold', () => {
    const all: HostMatch = {
      vendorModules: ['kvm_pvm'],
      cpuVendor: 'AuthenticAMD',
      cpuFamily: 25,
      cpuModelNumber: 1,
      cpuFlagsPresent: ['x2apic'],
      cpuFlagsAbsent: ['cpuid_fault'],
      qemuCpuModel: '-arch-capabilities',
    };
    expect(hostMatches(all, amd)).toBe(true);
    const breakOne: ((fp: HostFingerprint) => void)[] = [
      (fp) => (fp.kvm.vendorModules = ['kvm_amd']),
      (fp) => (fp.cpu.vendor = 'HygonGenuine'),
      (fp) => (fp.cpu.family = 26),
      (fp) => (fp.cpu.modelNumber = 17),
      (fp) => (fp.cpu.flags = fp.cpu.flags.filter((f) => f !== 'x2apic')),
      (fp) => fp.cpu.flags.push('cpuid_fault'),
      (fp) => (fp.qemuCpu = { requested: 'host', used: 'host' }),
    ];
    for (const change of breakOne) {
      const fp = amdHost();
      change(fp);
      expect(hostMatches(all, fp), change.toString()).toBe(false);
    }
  });
});

describe('matchDeviation with CPU traits', () => {
  const file = parseDeviations(text(DEVIATION));
  const failure = 'CPUID(0x1, 0x0) at CPL 3 differs from CPL 0: ECX 0xfffa3203 vs 0xf7f83203';

  it('waives the failure on an AMD kvm_pvm host without CPUID faulting only', () => {
    expect(matchDeviation(file, 'leaks.cpuid.cpl-invariant', failure, amdHost())?.id).toBe('pvm-cpl3-cpuid-not-intercepted');
    const intelPvm = intelHost();
    expect(matchDeviation(file, 'leaks.cpuid.cpl-invariant', failure, intelPvm)).toBeUndefined();
    const amdWithFault = amdHost();
    amdWithFault.cpu.flags.push('cpuid_fault');
    expect(matchDeviation(file, 'leaks.cpuid.cpl-invariant', failure, amdWithFault)).toBeUndefined();
  });
});

describe('deviations of one run configuration, and of a family of properties', () => {
  const entry = {
    id: 'qemu-tcg-quirk',
    property: 'leaks.device.*',
    when: { accel: 'tcg' },
    host: { qemuVersion: '^7\\.2\\.' },
    failure: '^QEMU itself died',
    evidence: 'e',
    citation: 'c',
    recorded: '2026-12-01',
  };
  const file = parseDeviations(JSON.stringify({ version: 1, deviations: [entry] }));
  const fp = { ...amdHost(), qemu: { path: 'q', found: true, version: '7.2.22' } };

  it('matches every property of the family, only under the configuration it names', () => {
    expect(matchDeviation(file, 'leaks.device.stable', 'QEMU itself died x', fp, { accel: 'tcg', machine: 'microvm' })?.id).toBe('qemu-tcg-quirk');
    expect(matchDeviation(file, 'leaks.device.unclaimed', 'QEMU itself died x', fp, { accel: 'tcg' })?.id).toBe('qemu-tcg-quirk');
    expect(matchDeviation(file, 'leaks.cpuid.rules', 'QEMU itself died x', fp, { accel: 'tcg' })).toBeUndefined();
    expect(matchDeviation(file, 'leaks.device.stable', 'QEMU itself died x', fp, { accel: 'kvm' })).toBeUndefined();
    expect(matchDeviation(file, 'leaks.device.stable', 'QEMU itself died x', fp)).toBeUndefined();
  });

  it('kernelIrqchip: matches only a run that gave it (never TCG, never the default)', () => {
    const off = parseDeviations(JSON.stringify({ version: 1, deviations: [{ ...entry, property: 'timers.*', when: { kernelIrqchip: 'off' } }] }));
    expect(matchDeviation(off, 'timers.lapic.schedule', 'QEMU itself died x', fp, runConfigOf({ accel: 'kvm', kernelIrqchip: 'off' }))?.id).toBe('qemu-tcg-quirk');
    expect(matchDeviation(off, 'timers.lapic.schedule', 'QEMU itself died x', fp, runConfigOf({ accel: 'kvm', kernelIrqchip: 'split' }))).toBeUndefined();
    expect(matchDeviation(off, 'timers.lapic.schedule', 'QEMU itself died x', fp, runConfigOf({ accel: 'kvm' }))).toBeUndefined();
    expect(matchDeviation(off, 'timers.lapic.schedule', 'QEMU itself died x', fp, runConfigOf({ accel: 'tcg', kernelIrqchip: 'off' }))).toBeUndefined();
    expect(() => parseDeviations(JSON.stringify({ version: 1, deviations: [{ ...entry, when: { kernelIrqchip: 'of' } }] }))).toThrow(/kernelIrqchip must be on, split or off/);
  });

  it('rejects an unknown or empty configuration trait', () => {
    expect(() => parseDeviations(JSON.stringify({ version: 1, deviations: [{ ...entry, when: { acel: 'tcg' } }] }))).toThrow(/when.acel is not a run configuration trait/);
    expect(() => parseDeviations(JSON.stringify({ version: 1, deviations: [{ ...entry, when: {} }] }))).toThrow(/when must name/);
    expect(() => parseDeviations(JSON.stringify({ version: 1, deviations: [{ ...entry, when: { accel: 'hvf' } }] }))).toThrow(/kvm or tcg/);
  });
});
