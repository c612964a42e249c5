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
  type HostFingerprint,
  type Verdict,
} from './fingerprint.js';

/** A healthy Intel host with nested on; each test breaks one thing. */
function healthy(): HostFingerprint {
  return {
    schema: 1,
    collectedAt: '2025-01-01T00:00:00.000Z',
    kernel: { release: '6.8.0-test', version: 'Linux version 6.8.0-test' },
    cpu: { model: 'Test CPU', vendor: 'GenuineIntel', flags: ['vmx', 'x2apic', 'tsc_deadline_timer'] },
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

const at = (vs: Verdict[], level: Verdict['level']) => vs.filter((v) => v.level === level);

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
    ];
    for (const change of variants) {
      const fp = healthy();
      change(fp);
      expect(fingerprintId(fp)).not.toBe(base);
    }
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

  it('records a missing QEMU instead of throwing', async () => {
    const fp = await collectFingerprint({ qemu: '/nonexistent/qemu-system-x86_64' });
    expect(fp.qemu).toEqual({ path: '/nonexistent/qemu-system-x86_64', found: false, version: null });
  });

  it('reports a compiler error with the compiler output', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'kvmprop-probe-'));
    try {
      const src = join(dir, 'broken.c');
      await writeFile(src, 'int main(void) { return no_such_symbol_here; }\n');
      await expect(buildProbe(src)).rejects.toThrow(/probe failed[\s\S]*no_such_symbol_here/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
