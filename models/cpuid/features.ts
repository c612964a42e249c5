/**
 * CPUID feature bits that QEMU 7.2 exposes as -cpu properties, and where each lives.
 *
 * Sources (read, not copied; the tables below are restated as data):
 *  - QEMU `target/i386/cpu.c`, `feature_word_info[]` (the per-word name arrays and their
 *    `.cpuid = { eax, ecx, reg }` locations) and `cpu_x86_cpuid()` (which bits QEMU recomputes).
 *    No exact v7.2.0 copy is in the stored index. What was read:
 *      - a full cpu.c from between v7.2.0 and v8.0.0: FEAT_7_1_EAX has only avx-vnni and
 *        avx512-bf16, FEAT_7_0_EDX ends at ssbd, and there is no FEAT_7_1_EDX. It differs from
 *        7.2 only by the SGX bits sgx-edeccssa (12.0.EAX[11]) and sgx-aex-notify (12.1.EAX[10]),
 *        which are merged for 8.0 and left out here;
 *      - the v8.1/8.2-era `cpu_x86_cpuid()` and `kvm_arch_init_vcpu()`, quoted in full as context
 *        in the qemu-devel patch "[RFC PATCH v2 25/78] target/i386: add fallthrough
 *        pseudo-keyword" (Oct 2023);
 *      - qemu/qemu `target/i386/cpu.c` @ 0048035a870312f2fd0f3dd28115398d26e419bb (current
 *        master) for the surrounding structure.
 *    Feature bit positions never move between QEMU versions. Only names are added.
 *  - Checked on this machine against the real binary: QEMU 7.2.22 (Debian
 *    1:7.2+dfsg-7+deb12u18). `query-cpu-model-expansion type=full model=host` reports every
 *    `name` below as a boolean property (models/cpuid/tables.test.ts checks this). strace of
 *    KVM_SET_CPUID2 confirmed that QEMU sets the HT bit on its own and fills leaf 1 EBX[31:24] per vCPU.
 *  - Linux `arch/x86/kvm/cpuid.c` (torvalds/linux @ d7e0a795bf37, about v5.16; a v6.13-era copy;
 *    and `kvm_cpuid()` of v6.18.38 as quoted from gregkh/linux; this host runs 6.18.44):
 *    `kvm_update_cpuid_runtime()`, `kvm_cpuid()` and `kvm_apply_cpuid_pv_features_quirk()`
 *    give the KVM-side dynamic bits.
 *
 * Naming: QEMU registers each feat_names[] entry as a property and adds aliases ('sse4-2',
 * 'sse4_2' for 'sse4.2'; 'lahf_lm', 'kvm_pv_eoi', 'ds_cpl', 'pclmuldq', 'i64' for 'lm', 'xd' for
 * 'nx', 'ffxsr' for 'fxsr-opt', ...). The full expansion lists canonical names and aliases side
 * by side. This table always uses the canonical feat_names[] spelling, so every name here is a
 * key of the expansion.
 *
 * `subleaf` is 0 for functions KVM does not treat as indexed (see leaves.ts). KVM ignores ECX
 * for them, so any ECX reads the same bit.
 *
 * Two bits have no QEMU property because QEMU computes them and feat_names[] holds NULL there:
 * CPUID.1:ECX[27] OSXSAVE and CPUID.7.0:ECX[4] OSPKE. They are listed with the Linux
 * /proc/cpuinfo names 'osxsave' / 'ospke' and collected in NOT_QEMU_PROPERTIES.
 *
 * One QEMU property covers two bits: 'kvmclock' sets both KVM_FEATURE_CLOCKSOURCE (bit 0) and
 * KVM_FEATURE_CLOCKSOURCE2 (bit 3) of 0x40000001.EAX (both feat_names slots hold "kvmclock").
 * Its name appears twice; see MULTI_BIT_PROPERTIES.
 */

export type CpuidReg = 'eax' | 'ebx' | 'ecx' | 'edx';

export interface CpuidFeatureBit {
  /** QEMU property name as reported by query-cpu-model-expansion, e.g. 'sse4.2'. */
  name: string;
  leaf: number;
  subleaf: number;
  reg: CpuidReg;
  bit: number;
  /** Why the guest may see a different value than the model says, e.g. 'follows CR4.OSXSAVE'. */
  dynamic?: string;
}

/** Names in CPUID_FEATURE_BITS that are not QEMU properties (QEMU computes the bit itself). */
export const NOT_QEMU_PROPERTIES: ReadonlySet<string> = new Set(['osxsave', 'ospke']);

/** QEMU properties that legitimately appear on more than one bit, with their bit count. */
export const MULTI_BIT_PROPERTIES: ReadonlyMap<string, number> = new Map([['kvmclock', 2]]);

/** One QEMU feature word: a (leaf, subleaf, register) and its named bits. */
interface FeatureWord {
  leaf: number;
  subleaf: number;
  reg: CpuidReg;
  /** Word name in QEMU (FEAT_*), for readers cross-checking against cpu.c. */
  qemuWord: string;
  bits: Readonly<Record<number, string>>;
}

const WORDS: readonly FeatureWord[] = [
  {
    leaf: 0x1, subleaf: 0, reg: 'edx', qemuWord: 'FEAT_1_EDX',
    bits: {
      0: 'fpu', 1: 'vme', 2: 'de', 3: 'pse', 4: 'tsc', 5: 'msr', 6: 'pae', 7: 'mce',
      8: 'cx8', 9: 'apic', 11: 'sep', 12: 'mtrr', 13: 'pge', 14: 'mca', 15: 'cmov',
      16: 'pat', 17: 'pse36', 18: 'pn', 19: 'clflush', 21: 'ds', 22: 'acpi', 23: 'mmx',
      24: 'fxsr', 25: 'sse', 26: 'sse2', 27: 'ss', 28: 'ht', 29: 'tm', 30: 'ia64', 31: 'pbe',
    },
  },
  {
    leaf: 0x1, subleaf: 0, reg: 'ecx', qemuWord: 'FEAT_1_ECX',
    bits: {
      0: 'pni', 1: 'pclmulqdq', 2: 'dtes64', 3: 'monitor', 4: 'ds-cpl', 5: 'vmx', 6: 'smx',
      7: 'est', 8: 'tm2', 9: 'ssse3', 10: 'cid', 12: 'fma', 13: 'cx16', 14: 'xtpr',
      15: 'pdcm', 17: 'pcid', 18: 'dca', 19: 'sse4.1', 20: 'sse4.2', 21: 'x2apic',
      22: 'movbe', 23: 'popcnt', 24: 'tsc-deadline', 25: 'aes', 26: 'xsave',
      27: 'osxsave' /* no QEMU property */, 28: 'avx', 29: 'f16c', 30: 'rdrand', 31: 'hypervisor',
    },
  },
  {
    leaf: 0x6, subleaf: 0, reg: 'eax', qemuWord: 'FEAT_6_EAX',
    bits: { 2: 'arat' },
  },
  {
    leaf: 0x7, subleaf: 0, reg: 'ebx', qemuWord: 'FEAT_7_0_EBX',
    bits: {
      0: 'fsgsbase', 1: 'tsc-adjust', 2: 'sgx', 3: 'bmi1', 4: 'hle', 5: 'avx2', 7: 'smep',
      8: 'bmi2', 9: 'erms', 10: 'invpcid', 11: 'rtm', 14: 'mpx', 16: 'avx512f',
      17: 'avx512dq', 18: 'rdseed', 19: 'adx', 20: 'smap', 21: 'avx512ifma', 22: 'pcommit',
      23: 'clflushopt', 24: 'clwb', 25: 'intel-pt', 26: 'avx512pf', 27: 'avx512er',
      28: 'avx512cd', 29: 'sha-ni', 30: 'avx512bw', 31: 'avx512vl',
    },
  },
  {
    leaf: 0x7, subleaf: 0, reg: 'ecx', qemuWord: 'FEAT_7_0_ECX',
    bits: {
      1: 'avx512vbmi', 2: 'umip', 3: 'pku', 4: 'ospke' /* no QEMU property */, 5: 'waitpkg',
      6: 'avx512vbmi2', 8: 'gfni', 9: 'vaes', 10: 'vpclmulqdq', 11: 'avx512vnni',
      12: 'avx512bitalg', 14: 'avx512-vpopcntdq', 16: 'la57', 22: 'rdpid',
      24: 'bus-lock-detect', 25: 'cldemote', 27: 'movdiri', 28: 'movdir64b', 30: 'sgxlc',
      31: 'pks',
    },
  },
  {
    leaf: 0x7, subleaf: 0, reg: 'edx', qemuWord: 'FEAT_7_0_EDX',
    bits: {
      2: 'avx512-4vnniw', 3: 'avx512-4fmaps', 4: 'fsrm', 8: 'avx512-vp2intersect',
      10: 'md-clear', 14: 'serialize', 16: 'tsx-ldtrk', 19: 'arch-lbr', 22: 'amx-bf16',
      23: 'avx512-fp16', 24: 'amx-tile', 25: 'amx-int8', 26: 'spec-ctrl', 27: 'stibp',
      29: 'arch-capabilities', 30: 'core-capability', 31: 'ssbd',
    },
  },
  {
    // QEMU 7.2 has no FEAT_7_1_EDX / FEAT_7_2_EDX (added in 8.1+).
    leaf: 0x7, subleaf: 1, reg: 'eax', qemuWord: 'FEAT_7_1_EAX',
    bits: { 4: 'avx-vnni', 5: 'avx512-bf16' },
  },
  {
    leaf: 0xd, subleaf: 1, reg: 'eax', qemuWord: 'FEAT_XSAVE',
    bits: { 0: 'xsaveopt', 1: 'xsavec', 2: 'xgetbv1', 3: 'xsaves', 4: 'xfd' },
  },
  {
    leaf: 0x12, subleaf: 0, reg: 'eax', qemuWord: 'FEAT_SGX_12_0_EAX',
    bits: { 0: 'sgx1', 1: 'sgx2' },
  },
  {
    leaf: 0x12, subleaf: 0, reg: 'ebx', qemuWord: 'FEAT_SGX_12_0_EBX',
    bits: { 0: 'sgx-exinfo' },
  },
  {
    leaf: 0x12, subleaf: 1, reg: 'eax', qemuWord: 'FEAT_SGX_12_1_EAX',
    bits: { 1: 'sgx-debug', 2: 'sgx-mode64', 4: 'sgx-provisionkey', 5: 'sgx-tokenkey', 7: 'sgx-kss' },
  },
  {
    leaf: 0x14, subleaf: 0, reg: 'ecx', qemuWord: 'FEAT_14_0_ECX',
    bits: { 31: 'intel-pt-lip' },
  },
  {
    // Names KVM's paravirt features. Bits 0 and 3 are both 'kvmclock' (CLOCKSOURCE, CLOCKSOURCE2).
    leaf: 0x40000001, subleaf: 0, reg: 'eax', qemuWord: 'FEAT_KVM',
    bits: {
      0: 'kvmclock', 1: 'kvm-nopiodelay', 2: 'kvm-mmu', 3: 'kvmclock', 4: 'kvm-asyncpf',
      5: 'kvm-steal-time', 6: 'kvm-pv-eoi', 7: 'kvm-pv-unhalt', 9: 'kvm-pv-tlb-flush',
      11: 'kvm-pv-ipi', 12: 'kvm-poll-control', 13: 'kvm-pv-sched-yield',
      14: 'kvm-asyncpf-int', 15: 'kvm-msi-ext-dest-id', 24: 'kvmclock-stable-bit',
    },
  },
  {
    leaf: 0x40000001, subleaf: 0, reg: 'edx', qemuWord: 'FEAT_KVM_HINTS',
    bits: { 0: 'kvm-hint-dedicated' },
  },
  {
    // Bits that alias CPUID.1:EDX have no name here: QEMU copies them from FEAT_1_EDX when the
    // vendor is AMD (CPUID_EXT2_AMD_ALIASES), so they are not separate properties.
    leaf: 0x80000001, subleaf: 0, reg: 'edx', qemuWord: 'FEAT_8000_0001_EDX',
    bits: {
      11: 'syscall', 20: 'nx', 22: 'mmxext', 25: 'fxsr-opt', 26: 'pdpe1gb', 27: 'rdtscp',
      29: 'lm', 30: '3dnowext', 31: '3dnow',
    },
  },
  {
    leaf: 0x80000001, subleaf: 0, reg: 'ecx', qemuWord: 'FEAT_8000_0001_ECX',
    bits: {
      0: 'lahf-lm', 1: 'cmp-legacy', 2: 'svm', 3: 'extapic', 4: 'cr8legacy', 5: 'abm',
      6: 'sse4a', 7: 'misalignsse', 8: '3dnowprefetch', 9: 'osvw', 10: 'ibs', 11: 'xop',
      12: 'skinit', 13: 'wdt', 15: 'lwp', 16: 'fma4', 17: 'tce', 19: 'nodeid-msr',
      21: 'tbm', 22: 'topoext', 23: 'perfctr-core', 24: 'perfctr-nb',
    },
  },
  {
    leaf: 0x80000007, subleaf: 0, reg: 'edx', qemuWord: 'FEAT_8000_0007_EDX',
    bits: { 8: 'invtsc' },
  },
  {
    // QEMU 7.2 has no 'amd-psfd' / 'stibp-always-on' here yet (added later).
    leaf: 0x80000008, subleaf: 0, reg: 'ebx', qemuWord: 'FEAT_8000_0008_EBX',
    bits: {
      0: 'clzero', 2: 'xsaveerptr', 9: 'wbnoinvd', 12: 'ibpb', 14: 'ibrs', 15: 'amd-stibp',
      24: 'amd-ssbd', 25: 'virt-ssbd', 26: 'amd-no-ssb',
    },
  },
  {
    // QEMU fills CPUID.8000000AH only when 'svm' is on; otherwise the whole leaf is zero.
    leaf: 0x8000000a, subleaf: 0, reg: 'edx', qemuWord: 'FEAT_SVM',
    bits: {
      0: 'npt', 1: 'lbrv', 2: 'svm-lock', 3: 'nrip-save', 4: 'tsc-scale', 5: 'vmcb-clean',
      6: 'flushbyasid', 7: 'decodeassists', 10: 'pause-filter', 12: 'pfthreshold',
      13: 'avic', 15: 'v-vmsave-vmload', 16: 'vgif', 28: 'svme-addr-chk',
    },
  },
  {
    // Centaur/VIA/Zhaoxin. QEMU passes the 0xC0000000 range to KVM only when xlevel2 > 0.
    leaf: 0xc0000001, subleaf: 0, reg: 'edx', qemuWord: 'FEAT_C000_0001_EDX',
    bits: {
      2: 'xstore', 3: 'xstore-en', 6: 'xcrypt', 7: 'xcrypt-en', 8: 'ace2', 9: 'ace2-en',
      10: 'phe', 11: 'phe-en', 12: 'pmm', 13: 'pmm-en',
    },
  },
];

/**
 * Why the bit the guest reads can differ from the QEMU property value. Keys are names from
 * WORDS. For kvmclock, both bits share the entry. "KVM:" means arch/x86/kvm/cpuid.c rewrites the bit.
 * "QEMU:" means cpu_x86_cpuid() computes the bit from something other than the property.
 */
const DYNAMIC: Readonly<Record<string, string>> = {
  osxsave:
    'KVM: follows CR4.OSXSAVE (CR4 bit 18); kvm_update_cpuid_runtime() rewrites CPUID.1:ECX[27] on every CR4 write ' +
    '(QEMU also ORs it in from its own CR4 copy)',
  ospke:
    'KVM: follows CR4.PKE (CR4 bit 22); kvm_update_cpuid_runtime() rewrites CPUID.7.0:ECX[4] on every CR4 write',
  apic:
    'KVM: follows IA32_APIC_BASE.EN (MSR 0x1B bit 11); kvm_update_cpuid_runtime() rewrites CPUID.1:EDX[9] when the ' +
    'guest globally disables/enables its local APIC (the 0x80000001.EDX[9] alias on AMD vendors is not updated)',
  monitor:
    'KVM: follows IA32_MISC_ENABLE[18] (ENABLE_MONITOR_FSM) only if the VMM disables ' +
    'KVM_X86_QUIRK_MISC_ENABLE_NO_MWAIT; QEMU 7.2 leaves the quirk on, so the bit is static under QEMU 7.2',
  hle:
    'KVM: cleared from the CPUID.7.0 output while IA32_TSX_CTRL (MSR 0x122) bit 1 TSX_CPUID_CLEAR is set (kvm_cpuid())',
  rtm:
    'KVM: cleared from the CPUID.7.0 output while IA32_TSX_CTRL (MSR 0x122) bit 1 TSX_CPUID_CLEAR is set (kvm_cpuid())',
  ht:
    'QEMU: set whenever cores*threads per package > 1 (together with CPUID.1:EBX[23:16]), regardless of the ht property',
  'cmp-legacy':
    'QEMU: set for non-Intel vendors whenever cores*threads per package > 1, regardless of the property',
  pdcm: 'QEMU: cleared when the pmu property is off, regardless of the pdcm property',
  'sgx-provisionkey':
    'QEMU: cleared unless KVM allows SGX provisioning for the VM (kvm_enable_sgx_provisioning)',
  invtsc:
    'KVM: hidden from CPUID.80000007H:EDX while Hyper-V TSC-invariant control is exposed (HV_ACCESS_TSC_INVARIANT) and ' +
    'the guest has not set HV_X64_MSR_TSC_INVARIANT_CONTROL bit 0 (kvm_hv_invtsc_suppressed); QEMU 7.2 has no ' +
    'property for that Hyper-V feature, so static under QEMU 7.2',
  'kvm-pv-unhalt':
    'KVM: cleared when HLT exits are disabled for the VM (KVM_CAP_X86_DISABLE_EXITS_HLT, e.g. -overcommit cpu-pm=on); ' +
    'fixed per VM, not guest-controlled',
};

function expand(words: readonly FeatureWord[]): CpuidFeatureBit[] {
  const out: CpuidFeatureBit[] = [];
  for (const w of words) {
    for (const [bitText, name] of Object.entries(w.bits)) {
      const entry: CpuidFeatureBit = { name, leaf: w.leaf, subleaf: w.subleaf, reg: w.reg, bit: Number(bitText) };
      const why = DYNAMIC[name];
      if (why !== undefined) entry.dynamic = why;
      out.push(entry);
    }
  }
  return out;
}

export const CPUID_FEATURE_BITS: readonly CpuidFeatureBit[] = Object.freeze(expand(WORDS).map((b) => Object.freeze(b)));

/** The names that DYNAMIC annotates (for tests: each must name a real table entry). */
export const DYNAMIC_FEATURE_NAMES: readonly string[] = Object.keys(DYNAMIC);

/** Every table entry carrying the given QEMU property name (two for 'kvmclock', else at most one). */
export function featureBitsNamed(name: string): CpuidFeatureBit[] {
  return CPUID_FEATURE_BITS.filter((b) => b.name === name);
}

/**
 * One entry of an x86 vCPU's QOM property 'filtered-features' (QAPI X86CPUFeatureWordInfo): the
 * bits of one CPUID feature word that the CPU model asked for but QEMU removed when it realized the
 * vCPU, because the accelerator cannot provide them (QEMU 7.2 target/i386/cpu.c
 * x86_cpu_filter_features(): TCG keeps only the TCG_*_FEATURES masks; KVM only what
 * KVM_GET_SUPPORTED_CPUID reports; each removal prints "TCG doesn't support requested feature" /
 * "host doesn't support requested feature"). query-cpu-model-expansion does NOT apply this
 * filtering: it describes the model, not the realized vCPU ([T] -cpu EPYC-v3 under TCG: the
 * expansion says rdseed, sha-ni, xsavec, xsaves, topoext, clzero, ... = true; the guest reads 0, and
 * qom-get of those properties on the realized vCPU says false). Read it with
 * `qom-get {path: <query-cpus-fast qom-path>, property: 'filtered-features'}`.
 */
export interface FeatureWordInfo {
  readonly 'cpuid-input-eax': number;
  readonly 'cpuid-input-ecx'?: number;
  readonly 'cpuid-register': string;
  readonly features: number;
}

/** The bits of (leaf, subleaf, reg) that QEMU filtered out ('filtered-features'); subleaf counts only for words that carry one. */
export function filteredBits(words: readonly FeatureWordInfo[] | undefined, leaf: number, subleaf: number, reg: CpuidReg): number {
  let m = 0;
  for (const w of words ?? []) {
    if (w['cpuid-input-eax'] >>> 0 !== leaf >>> 0 || w['cpuid-register'].toLowerCase() !== reg) continue;
    const ecx = w['cpuid-input-ecx'];
    if (ecx !== undefined && ecx >>> 0 !== subleaf >>> 0) continue;
    m |= w.features >>> 0;
  }
  return m >>> 0;
}

/** The table names of the filtered bits (for messages); bits the table does not name are given as leaf.reg[bit]. */
export function filteredFeatureNames(words: readonly FeatureWordInfo[]): string[] {
  const out: string[] = [];
  for (const w of words) {
    for (let bit = 0; bit < 32; bit++) {
      if (!((w.features >>> bit) & 1)) continue;
      const reg = w['cpuid-register'].toLowerCase();
      const hit = CPUID_FEATURE_BITS.find(
        (b) => b.leaf === w['cpuid-input-eax'] >>> 0 && b.reg === reg && b.bit === bit && (w['cpuid-input-ecx'] === undefined || b.subleaf === w['cpuid-input-ecx']),
      );
      out.push(hit ? hit.name : `0x${(w['cpuid-input-eax'] >>> 0).toString(16)}.${reg}[${bit}]`);
    }
  }
  return out;
}
