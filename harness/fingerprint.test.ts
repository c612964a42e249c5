import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  buildProbe,
  collectFingerprint,
  doctorVerdicts,
  fingerprintId,
  formatFingerprint,
  parseCpuinfo,
  type HostFingerprint,
  type QemuCpuChoice,
  type Verdict,
} from './fingerprint.js';

/** A healthy Intel host with nested on; each test breaks one thing. */
function healthy(): HostFingerprint {
  return {
    schema: 1,
    collectedAt: '2025-01-01T00:00:00.000Z',
    kernel: { release: '6.8.0-test', version: 'Linux version 6.8.0-test' },
    cpu: {
      model: 'Test CPU', vendor: 'GenuineIntel', family: 6, modelNumber: 143, stepping: 8,
      flags: ['vmx', 'x2apic', 'tsc_deadline_timer'],
    },
    kvm: {
      device: 'ok',
      apiVersion: 12,
      modules: [
        { name: 'kvm', parameters: { halt_poll_ns: '200000', ignore_msrs: 'N' } },
        { name: 'kvm_intel', parameters: { nested: 'Y', ept: 'Y' } },
      ],
      vendorModules: ['kvm_intel'],
      caps: { KVM_CAP_NR_VCPUS: 8, KVM_CAP_DIRTY_LOG_RING: 65536 },
      nested: true,
      dirtyRing: true,
      manualDirtyLogProtect: true,
      tscScaling: true,
      x2apic: true,
      tscDeadline: true,
    },
    qemu: { path: '/usr/bin/qemu-system-x86_64', found: true, version: '8.2.2' },
    tools: { gcc: 'gcc 12.2.0', ld: 'GNU ld 2.40' },
  };
}

/** The AMD EPYC (Zen 3) host of shared/fixtures/amd-epyc-kvm-pvm: kvm + kvm_pvm, no CPUID faulting. */
function amdPvm(): HostFingerprint {
  const fp = healthy();
  fp.cpu = {
    model: 'AMD EPYC', vendor: 'AuthenticAMD', family: 25, modelNumber: 1, stepping: 1,
    flags: ['x2apic', 'tsc_deadline_timer', 'constant_tsc', 'nonstop_tsc', 'hypervisor', 'pdpe1gb'],
  };
  fp.kvm = {
    ...fp.kvm,
    nested: false,
    modules: [{ name: 'kvm', parameters: {} }, { name: 'kvm_pvm', parameters: { pvm_native: 'Y' } }],
    vendorModules: ['kvm_pvm'],
  };
  return fp;
}

/** What kvmprop records when -cpu host cannot start on that host. */
const FALLBACK: QemuCpuChoice = {
  requested: 'host',
  used: 'host,-arch-capabilities',
  fallback: {
    reason: 'KVM refuses MSR 0x10a (IA32_ARCH_CAPABILITIES)',
    qemuMessage: 'qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69',
    commandLine: ['/usr/bin/qemu-system-x86_64', '-accel', 'kvm', '-cpu', 'host'],
  },
};

const at = (vs: Verdict[], level: Verdict['level']) => vs.filter((v) => v.level === level);

/** The first two processors of this AMD EPYC host's /proc/cpuinfo, abridged. */
const AMD_CPUINFO = `processor	: 0
vendor_id	: AuthenticAMD
cpu family	: 25
model		: 1
model name	: AMD EPYC
stepping	: 1
microcode	: 0x1000065
flags		: fpu vme pdpe1gb rdtscp lm constant_tsc nonstop_tsc cpuid x2apic tsc_deadline_timer hypervisor lahf_lm ssbd

processor	: 1
vendor_id	: AuthenticAMD
cpu family	: 25
model		: 1
model name	: AMD EPYC
stepping	: 1
flags		: fpu
`;

describe('parseCpuinfo', () => {
  it('reads vendor, family, model number, stepping and the flags of interest from the first processor', () => {
    expect(parseCpuinfo(AMD_CPUINFO)).toEqual({
      model: 'AMD EPYC',
      vendor: 'AuthenticAMD',
      family: 25,
      modelNumber: 1,
      stepping: 1,
      flags: ['x2apic', 'tsc_deadline_timer', 'constant_tsc', 'nonstop_tsc', 'hypervisor', 'pdpe1gb'],
    });
  });

  it('records Intel CPUID faulting and VMX', () => {
    const intel = 'vendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 143\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n' +
      'stepping\t: 8\nflags\t\t: fpu vmx x2apic cpuid_fault arch_capabilities\n';
    expect(parseCpuinfo(intel)).toEqual({
      model: 'Intel(R) Xeon(R) Platinum 8480+', vendor: 'GenuineIntel', family: 6, modelNumber: 143, stepping: 8,
      flags: ['vmx', 'x2apic', 'cpuid_fault'],
    });
  });

  it('gives null for numbers /proc/cpuinfo lacks or does not know', () => {
    expect(parseCpuinfo('')).toEqual({ model: 'unknown', vendor: 'unknown', family: null, modelNumber: null, stepping: null, flags: [] });
    const odd = parseCpuinfo('vendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 1\nstepping\t: unknown\n');
    expect(odd).toMatchObject({ family: 25, modelNumber: 1, stepping: null });
  });
});

describe('doctorVerdicts', () => {
  it('finds nothing wrong with a healthy host', () => {
    const vs = doctorVerdicts(healthy());
    expect(at(vs, 'error')).toEqual([]);
    expect(at(vs, 'warn')).toEqual([]);
    expect(vs.map((v) => v.item)).toEqual(expect.arrayContaining(['kvm', 'qemu', 'toolchain']));
  });

  it('missing /dev/kvm is an error that says how to load KVM', () => {
    const fp = healthy();
    fp.kvm = { ...fp.kvm, device: 'missing', apiVersion: null, modules: [], vendorModules: [], caps: {}, nested: null };
    const errors = at(doctorVerdicts(fp), 'error');
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatchObject({ item: 'kvm' });
    expect(errors[0]!.message).toMatch(/\/dev\/kvm does not exist.*modprobe kvm_intel/);
    // Nothing else about KVM is worth saying until the device is there.
    expect(doctorVerdicts(fp).some((v) => v.item === 'nested')).toBe(false);
  });

  it('unwritable /dev/kvm is an error that says how to get access', () => {
    const fp = healthy();
    fp.kvm.device = 'no-access';
    const errors = at(doctorVerdicts(fp), 'error');
    expect(errors).toHaveLength(1);
    expect(errors[0]!.message).toContain('usermod -aG kvm');
  });

  it('missing QEMU is an error naming the package', () => {
    const fp = healthy();
    fp.qemu = { path: '/opt/nope/qemu-system-x86_64', found: false, version: null };
    const errors = at(doctorVerdicts(fp), 'error');
    expect(errors).toEqual([expect.objectContaining({ item: 'qemu' })]);
    expect(errors[0]!.message).toContain('apt-get install qemu-system-x86');
    expect(errors[0]!.message).toContain('/opt/nope/qemu-system-x86_64');
  });

  it('missing gcc or ld is an error naming the package', () => {
    const fp = healthy();
    fp.tools = { gcc: null, ld: null };
    const errors = at(doctorVerdicts(fp), 'error');
    expect(errors.map((e) => e.item).sort()).toEqual(['gcc', 'ld']);
    expect(errors.find((e) => e.item === 'gcc')!.message).toContain('apt-get install gcc');
    expect(errors.find((e) => e.item === 'ld')!.message).toContain('apt-get install binutils');
  });

  it('nested off is a warning: the nested family falls back to TCG', () => {
    const fp = healthy();
    fp.kvm.nested = false;
    fp.kvm.modules[1]!.parameters['nested'] = 'N';
    const vs = doctorVerdicts(fp);
    expect(at(vs, 'error')).toEqual([]);
    const nested = vs.find((v) => v.item === 'nested')!;
    expect(nested.level).toBe('warn');
    expect(nested.message).toContain('TCG');
    expect(nested.message).toContain('modprobe kvm_intel nested=1');
  });

  it('nested off under a module that cannot nest says so instead of suggesting a fix', () => {
    const fp = healthy();
    fp.kvm = { ...fp.kvm, nested: false, vendorModules: ['kvm_pvm'], modules: [{ name: 'kvm', parameters: {} }, { name: 'kvm_pvm', parameters: {} }] };
    const nested = doctorVerdicts(fp).find((v) => v.item === 'nested')!;
    expect(nested.level).toBe('warn');
    expect(nested.message).toContain('kvm_pvm');
    expect(nested.message).not.toContain('modprobe');
  });

  it('a failed probe is a warning, not a crash', () => {
    const fp = healthy();
    fp.kvm = { ...fp.kvm, apiVersion: null, caps: {}, probeError: 'gcc exploded', dirtyRing: null, tscScaling: null };
    const vs = doctorVerdicts(fp);
    expect(at(vs, 'error')).toEqual([]);
    expect(vs).toContainEqual(expect.objectContaining({ level: 'warn', item: 'kvm', message: expect.stringContaining('gcc exploded') }));
  });

  it('kvm_pvm without cpuid_fault warns that guest user-mode CPUID comes from the physical CPU', () => {
    const vs = doctorVerdicts(amdPvm());
    expect(at(vs, 'error')).toEqual([]);
    const cpl3 = vs.filter((v) => v.item === 'cpl3-cpuid');
    expect(cpl3).toHaveLength(1);
    expect(cpl3[0]!.level).toBe('warn');
    expect(cpl3[0]!.message).toContain('physical CPU');
    expect(cpl3[0]!.message).toContain('cpuid_fault');
    expect(cpl3[0]!.message).toContain('leaks.cpuid.cpl-invariant');
  });

  it('no cpl3-cpuid warning where CPL-3 CPUID can be intercepted or KVM is not kvm_pvm', () => {
    const faulting = amdPvm();
    faulting.cpu.flags.push('cpuid_fault');
    expect(doctorVerdicts(faulting).some((v) => v.item === 'cpl3-cpuid')).toBe(false);
    // kvm_intel/kvm_amd intercept CPUID at every CPL in hardware.
    const amdSvm = amdPvm();
    amdSvm.kvm = { ...amdSvm.kvm, vendorModules: ['kvm_amd'], modules: [{ name: 'kvm', parameters: {} }, { name: 'kvm_amd', parameters: {} }] };
    expect(doctorVerdicts(amdSvm).some((v) => v.item === 'cpl3-cpuid')).toBe(false);
    expect(doctorVerdicts(healthy()).some((v) => v.item === 'cpl3-cpuid')).toBe(false);
    // Nothing about CPUID until /dev/kvm is usable.
    const noKvm = amdPvm();
    noKvm.kvm.device = 'missing';
    expect(doctorVerdicts(noKvm).some((v) => v.item === 'cpl3-cpuid')).toBe(false);
  });
});

describe('fingerprintId', () => {
  it('is 12 hex chars and ignores collection time and ordering', () => {
    const a = healthy();
    const b = healthy();
    b.collectedAt = '2030-06-06T06:06:06.000Z';
    b.kvm.modules.reverse();
    b.kvm.modules[0]!.parameters = { ept: 'Y', nested: 'Y' };
    b.kvm.caps = {};
    expect(fingerprintId(a)).toMatch(/^[0-9a-f]{12}$/);
    expect(fingerprintId(b)).toBe(fingerprintId(a));
  });

  it('changes with kernel, module parameters, QEMU version and CPU model', () => {
    const base = fingerprintId(healthy());
    const variants: ((fp: HostFingerprint) => void)[] = [
      (fp) => (fp.kernel.release = '6.9.0'),
      (fp) => (fp.kvm.modules[1]!.parameters['nested'] = 'N'),
      (fp) => fp.kvm.modules.push({ name: 'kvm_pvm', parameters: {} }),
      (fp) => (fp.qemu.version = '9.0.0'),
      (fp) => (fp.cpu.model = 'Other CPU'),
      (fp) => (fp.cpu.vendor = 'AuthenticAMD'),
      (fp) => (fp.cpu.family = 25),
      (fp) => (fp.cpu.modelNumber = 144),
      (fp) => (fp.cpu.stepping = 9),
      (fp) => (fp.cpu.stepping = null),
    ];
    const ids = new Set([base]);
    for (const change of variants) {
      const fp = healthy();
      change(fp);
      expect(fingerprintId(fp)).not.toBe(base);
      ids.add(fingerprintId(fp));
    }
    expect(ids.size).toBe(variants.length + 1);
  });

  it('does not depend on the -cpu model of the run', () => {
    const base = fingerprintId(healthy());
    const fp = healthy();
    fp.qemuCpu = FALLBACK;
    expect(fingerprintId(fp)).toBe(base);
    fp.qemuCpu = { requested: 'max', used: 'max' };
    expect(fingerprintId(fp)).toBe(base);
  });

  it('reads a fingerprint written before family, model number and stepping were recorded', () => {
    const old = healthy();
    old.cpu = { model: 'Test CPU', vendor: 'GenuineIntel', flags: [] };
    const unknown = healthy();
    unknown.cpu = { model: 'Test CPU', vendor: 'GenuineIntel', family: null, modelNumber: null, stepping: null, flags: [] };
    expect(fingerprintId(old)).toBe(fingerprintId(unknown));
    expect(fingerprintId(old)).toMatch(/^[0-9a-f]{12}$/);
  });
});

describe('formatFingerprint', () => {
  it('shows the id, the host facts and every verdict', () => {
    const fp = healthy();
    fp.kvm.modules[1]!.parameters['secret'] = '<unreadable>';
    fp.qemu = { path: '/nope/qemu', found: false, version: null };
    const vs = doctorVerdicts(fp);
    const text = formatFingerprint(fp, vs);
    expect(text).toContain(fingerprintId(fp));
    expect(text).toContain('6.8.0-test');
    expect(text).toContain('kvm_intel:');
    expect(text).toContain('secret=<unreadable>');
    expect(text).toContain('not found at /nope/qemu');
    for (const v of vs) expect(text).toContain(v.message);
    expect(text).toMatch(/^\[error\]\s+qemu\s/m);
  });

  it('shows vendor, family, model number and stepping on the cpu line', () => {
    const text = formatFingerprint(amdPvm(), []);
    expect(text).toContain('  cpu       AMD EPYC (AuthenticAMD family 25 model 1 stepping 1); flags: x2apic tsc_deadline_timer');
    const old = healthy();
    old.cpu = { model: 'Test CPU', vendor: 'GenuineIntel', flags: [] };
    expect(formatFingerprint(old, [])).toContain('  cpu       Test CPU (GenuineIntel); flags: none of interest');
    const partly = healthy();
    partly.cpu.stepping = null;
    expect(formatFingerprint(partly, [])).toContain('(GenuineIntel family 6 model 143); flags:');
  });

  it('shows the -cpu model QEMU ran, and why when it is not the one requested', () => {
    const lines = (fp: HostFingerprint) => formatFingerprint(fp, []).split('\n');
    const fp = amdPvm();
    expect(lines(fp).some((l) => l.startsWith('  vcpu'))).toBe(false);
    fp.qemuCpu = FALLBACK;
    const vcpu = lines(fp).filter((l) => l.startsWith('  vcpu'));
    expect(vcpu).toEqual(['  vcpu      host,-arch-capabilities (requested host: KVM refuses MSR 0x10a (IA32_ARCH_CAPABILITIES))']);
    // Right under the QEMU it ran on.
    const all = lines(fp);
    expect(all[all.indexOf(vcpu[0]!) - 1]).toMatch(/^ {2}qemu {6}/);
    fp.qemuCpu = { requested: 'host', used: 'host' };
    expect(lines(fp)).toContain('  vcpu      host');
    fp.qemuCpu = { requested: 'host', used: 'EPYC-Milan' };
    expect(lines(fp)).toContain('  vcpu      EPYC-Milan (requested host)');
  });
});

describe('on this host', () => {
  it('collects a fingerprint of the real KVM (kvm_pvm) and QEMU', async () => {
    const fp = await collectFingerprint({ qemu: '/usr/bin/qemu-system-x86_64' });
    expect(fp.kvm.probeError).toBeUndefined();
    expect(fp.kvm.device).toBe('ok');
    expect(fp.kvm.apiVersion).toBe(12);
    expect(fp.kvm.vendorModules).toContain('kvm_pvm');
    expect(fp.kvm.modules.find((m) => m.name === 'kvm')).toBeDefined();
    const caps = Object.values(fp.kvm.caps);
    expect(caps.length).toBeGreaterThan(0);
    for (const c of caps) expect(Number.isInteger(c)).toBe(true);
    expect(fp.kvm.caps['KVM_CAP_NR_VCPUS']).toBeGreaterThan(0);
    expect(fp.qemu.found).toBe(true);
    expect(fp.qemu.version).toMatch(/^\d/);
    expect(fp.tools.gcc).not.toBeNull();

    const again = await collectFingerprint({ qemu: '/usr/bin/qemu-system-x86_64' });
    expect(fingerprintId(fp)).toMatch(/^[0-9a-f]{12}$/);
    expect(fingerprintId(again)).toBe(fingerprintId(fp));
    expect(formatFingerprint(fp, doctorVerdicts(fp))).toContain('kvm_pvm');
  });

  it('records the CPU vendor, family, model number and stepping', async () => {
    const fp = await collectFingerprint({ qemu: '/nonexistent/qemu-system-x86_64' });
    expect(['GenuineIntel', 'AuthenticAMD']).toContain(fp.cpu.vendor);
    for (const n of [fp.cpu.family, fp.cpu.modelNumber, fp.cpu.stepping]) expect(Number.isInteger(n)).toBe(true);
    expect(fp.qemuCpu).toBeUndefined();
    // kvm_pvm here: CPL-3 CPUID is intercepted only with CPUID faulting.
    const cpl3 = doctorVerdicts(fp).some((v) => v.item === 'cpl3-cpuid');
    expect(cpl3).toBe(fp.kvm.vendorModules.includes('kvm_pvm') && !fp.cpu.flags.includes('cpuid_fault'));
  });

  it('records a missing QEMU instead of throwing', async () => {
    const fp = await collectFingerprint({ qemu: '/nonexistent/qemu-system-x86_64' });
    expect(fp.qemu).toEqual({ path: '/nonexistent/qemu-system-x86_64', found: false, version: null });
  });

  it('reports a compiler error with the compiler output', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'kvmprop-probe-'));
    try {
      const src = join(dir, 'broken.c');
      await writeFile(src, 'int main(void) { return no_such_symbol_here; }\n');
      await expect(buildProbe(src)).rejects.toThrow(/probe broken failed[\s\S]*no_such_symbol_here/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
