/**
 * How a guest's CPUID is answered under KVM with QEMU 7.2 as the VMM. The lookup rules, which
 * functions are indexed, and which fields may legitimately vary.
 *
 * ─── Sources ──────────────────────────────────────────────────────────────────────────────────
 *  [K] Linux arch/x86/kvm/cpuid.c: kvm_emulate_cpuid(), kvm_cpuid(), get_out_of_range_cpuid_entry(),
 *      kvm_find_cpuid_entry_index() / cpuid_entry2_find(), kvm_update_cpuid_runtime().
 *      Read: torvalds/linux @ d7e0a795bf37 (about v5.16), a v6.13-era copy, and kvm_cpuid() of
 *      v6.18.38 (gregkh/linux v6.18.38 arch/x86/kvm/cpuid.c L2025-L2093, as quoted). This host
 *      runs 6.18.44. The out-of-range code is the same in all three.
 *  [Q] QEMU target/i386/kvm/kvm.c kvm_arch_init_vcpu(): builds the KVM_SET_CPUID2 table. Read from
 *      the v8.1/8.2-era function quoted whole in the qemu-devel patch "[RFC PATCH v2 25/78]
 *      target/i386: add fallthrough pseudo-keyword" (Oct 2023), plus the two 7.2-stable patches
 *      below, which change it. QEMU target/i386/cpu.c cpu_x86_cpuid(): the values.
 *  [S] Checked on this machine: QEMU 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18) on Linux 6.18.44, by
 *      strace of the KVM_SET_CPUID2 ioctl (`strace -f -v -e trace=ioctl qemu-system-x86_64 -M pc
 *      -accel kvm -cpu host -smp 2 -S ...`). The per-leaf subleaf sets below match it.
 *  [D] /work/shared/reference/kvm-rules-and-peers.md §D.4, which agrees with this file.
 *  [T] Checked on this machine under -accel tcg: QEMU 7.2.22, -M microvm -smp 2, kvmprop's guest
 *      at CPL 3, -cpu EPYC-v3 (AuthenticAMD, level 0xD, xlevel 0x8000001E, xlevel2 0),
 *      Skylake-Client-v3 (GenuineIntel, level 0xD, xlevel 0x80000008), max, and variants with
 *      xlevel2=0xc0000002, tcg-cpuid=off, -apic, vendor=… . [S] runs with ring0 give KVM's answer.
 *  [I] Intel SDM Vol. 2A, CPUID (Table 3-8 and the "INPUT EAX = …" notes); [A] AMD APM Vol. 3,
 *      Appendix E (CPUID). KVM's own comment in get_out_of_range_cpuid_entry() summarises both.
 *
 * ─── What KVM does on a CPUID exit (Linux 6.18: kvm_emulate_cpuid → kvm_cpuid) ─────────────
 *  0. CPUID faulting: if the guest enabled it (MSR_MISC_FEATURES_ENABLES bit 0) and CPL > 0,
 *     the instruction gets #GP(0) and nothing below happens.
 *  1. Dynamic bits (see DYNAMIC_FIELDS) are brought up to date first. 6.18 refreshes them lazily
 *     (cpuid_dynamic_bits_dirty) just before the lookup. Older kernels rewrite them eagerly on
 *     every CR4/XCR0/XSS/APIC_BASE write. The guest sees the same values either way.
 *  2. Let F = EAX and I = ECX, 32 bits each. EXACT LOOKUP: walk the table in the order QEMU
 *     supplied it. The first entry wins if its function == F and either it lacks
 *     KVM_CPUID_FLAG_SIGNIFCANT_INDEX (then ECX is ignored completely) or its index == I (all 32
 *     bits compared). KVM honours only that flag. QEMU's STATEFUL_FUNC flags on leaf 2 have no
 *     effect on the lookup, so leaf 2 behaves like any non-indexed leaf.
 *  3. HIT: return the entry's EAX..EDX, after two fix-ups that depend on F *after* step 4's
 *     redirect:
 *       - F == 7 and I == 0: if EBX has HLE or RTM and the guest's IA32_TSX_CTRL (0x122) has
 *         bit 1 (TSX_CPUID_CLEAR) set, HLE (EBX[4]) and RTM (EBX[11]) are cleared.
 *       - F == 0x80000007: EDX[8] (invariant TSC) is cleared while Hyper-V TSC-invariant
 *         control is exposed and not yet enabled by the guest. It cannot happen with QEMU 7.2,
 *         which has no property for that Hyper-V feature.
 *       - Xen TSC leaves get an extra patch too. QEMU 7.2 has no Xen emulation.
 *  4. MISS → OUT-OF-RANGE CHECK (get_out_of_range_cpuid_entry):
 *       a. No leaf-0 entry → no redirect.
 *       b. Guest vendor (leaf 0 EBX/EDX/ECX) "AuthenticAMD", "AMDisbetter!" or "HygonGenuine" →
 *          no redirect, ever (outOfRangeRule() = 'zero').
 *       c. Class of F (CPUID_CLASSES): 0x40000000–0x4fffffff → its own 0x100-aligned block,
 *          base F & 0xffffff00; F ≥ 0xc0000000 → base 0xc0000000 (the code checks only
 *          "≥ 0xc0000000"; the comment says the class ends at 0xcfffffff); otherwise
 *          base F & 0x80000000, i.e. leaf 0 for 0–0x3fffffff and 0x50000000–0x7fffffff,
 *          0x80000000 for 0x80000000–0xbfffffff.
 *       d. If the class's base entry exists and F ≤ base.EAX, the function is IN RANGE. There is no
 *          redirect, so a missing entry reads as zeros (step 5).
 *       e. Otherwise (class missing, or F above its max) REDIRECT: F := CPUID.0.EAX (max basic
 *          leaf) and look up (F, I) again. The requested ECX is kept, so if the max basic leaf
 *          is indexed the subleaf still selects. A hit returns that entry, with step 3's fix-ups
 *          evaluated for the new F. A miss (e.g. QEMU dropped the all-zero max-basic entry, as
 *          for level 0x20 on this host) gives zeros, and step 5 runs with the new F.
 *  5. ZEROS: EAX=EBX=ECX=EDX=0. Then the 0xB/0x1F rule: if F is 0xB or 0x1F and an entry
 *     (F, index 1) exists (QEMU passes subleaf 1 exactly when it implements the leaf), set
 *     ECX = I & 0xff (ECX[7:0] echoes the subleaf, ECX[15:8] = 0 means invalid level) and
 *     EDX = that entry's EDX (this vCPU's x2APIC ID). Without subleaf 1, everything stays zero.
 *     So a missing subleaf of an indexed function that is in range reads as all zeros, except
 *     for this rule.
 *  6. RAX, RBX, RCX, RDX are written as the 32-bit results zero-extended; bits 63:32 are 0.
 *     RIP moves past CPUID.
 *
 *  Version notes for [K]:
 *   - The class/redirect logic (4c–4e, the hypervisor 0x100 sub-classes, the AMD/Hygon "zero"
 *     rule) comes from Sean Christopherson's March 2020 series "Fix CPUID range checks for
 *     Hypervisor and Centaur classes" / "Refactor out-of-range logic to contain the madness"
 *     (around v5.7). Older kernels redirected differently.
 *   - The 0xB/0x1F rule (step 5) comes from Jim Mattson's 2019 commit 43561123ab37. Before it,
 *     invalid subleaves read all zeros.
 *   - 6.18 applies the TSX fix-up only when EBX has HLE/RTM, and reads the MSR with guest
 *     permissions. Older kernels read it as host-initiated. The guest sees the same result.
 *   - CPUID.0xD.1:EBX counts XCR0 | IA32_XSS from 6.18 on (CET series, 2025); earlier kernels
 *     count XCR0 only.
 *   - KVM clears KVM_FEATURE_PV_UNHALT when HLT exits are disabled. Newer kernels do this once
 *     at KVM_SET_CPUID2 (kvm_apply_cpuid_pv_features_quirk), older ones at each runtime update.
 *     The result is the same.
 *
 * ─── What QEMU 7.2 does under TCG (answerer 'qemu-tcg') ────────────────────────────────────
 *  target/i386/tcg/misc_helper.c helper_cpuid() → target/i386/cpu.c cpu_x86_cpuid(EAX, ECX) on
 *  every CPUID; the 32-bit results are zero-extended into RAX..RDX. No table, so:
 *   a. LIMIT (QEMU_TCG_CLASSES): F >= 0xC0000000 → xlevel2; F >= 0x80000000 → xlevel;
 *      F >= 0x40000000 → the constant 0x40000001; else level. F > limit → F := level, ECX kept,
 *      for EVERY vendor: no AMD zero rule, no per-0x100 hypervisor blocks, no "class exists" test.
 *      With xlevel2 = 0 (every built-in 7.2 model) all of 0xC0000000..0xFFFFFFFF is out of range.
 *      [T] EPYC-v3: CPUID(0xC0000000,1) = CPUID(0x80000023,1) = CPUID(0x40000002,1) = CPUID(0xD,1).
 *   b. The switch computes F; functions it does not list read zeros ("reserved values: zero"),
 *      which matches KVM's "in range but missing reads zero". ECX can matter only for
 *      INDEXED_LEAVES' functions (cases 4, 7, 0xB, 0xD, 0x12, 0x14, 0x1D, 0x1E, 0x1F, 0x8000001D);
 *      each returns zeros for subleaves it does not define, and 0xB/0x1F echo ECX[7:0] with
 *      EDX = APIC ID for undefined subleaves (the same values as KVM's step-5 rule).
 *   c. 0x40000000 = {0x40000001, "TCGT", "CGTC", "GTCG"} while tcg-cpuid=on (default), else zeros;
 *      0x40000001 = zeros. The FEAT_KVM bits and the KVM signature exist only in KVM's table.
 *   d. Dynamic bits are computed at each CPUID from QEMU's own state: OSXSAVE = XSAVE && CR4.OSXSAVE,
 *      OSPKE = PKU && CR4.PKE, APIC = FEAT_1_EDX (cleared by apic_set_base() on disable),
 *      0xD.0:EBX = xsave_area_size(XCR0). See DYNAMIC_FIELDS.qemuTcg.
 *   e. Feature words are those of the REALIZED vCPU: x86_cpu_filter_features() drops what TCG
 *      cannot do, which query-cpu-model-expansion does not show (features.ts FeatureWordInfo).
 *
 * ─── How QEMU 7.2 builds the table (kvm_arch_init_vcpu) ────────────────────────────────────
 *  Order: hypervisor leaves first, then basic 0..level, then extended 0x80000000..xlevel, then
 *  Centaur 0xC0000000..xlevel2 (only if xlevel2 > 0), then 0x40000010 last (if present).
 *  Non-indexed basic and extended leaves whose four registers are all zero are LEFT OUT. They
 *  are in range, so the guest still reads zeros, except the max basic leaf: a redirect to it
 *  then finds nothing and gives zeros too. Centaur leaves are passed even when zero. Indexed
 *  functions are listed in INDEXED_LEAVES.
 *   - 0x40000000 (KVM signature; with kvm=on, the default): EAX = 0x40000001, the highest KVM
 *     leaf; EBX,ECX,EDX = "KVMK","VMKV","M\0\0\0" (0x4b4d564b, 0x564b4d56, 0x0000004d).
 *     0x40000001: EAX = the FEAT_KVM bits (features.ts), EBX = ECX = 0, EDX = FEAT_KVM_HINTS.
 *     With Hyper-V enlightenments, QEMU puts Hyper-V's leaves at 0x40000000.. and the KVM pair
 *     at 0x40000100/0x40000101 (signature EAX = 0x40000101). With kvm=off, there are no KVM
 *     leaves. If vmware-cpuid-freq (default on), KVM leaves at 0x40000000, no Hyper-V, and a
 *     stable, known TSC (invtsc=on or tsc-frequency=…), QEMU also appends 0x40000010 (EAX = TSC
 *     kHz, EBX = APIC bus kHz = 1000000) and raises the signature EAX to 0x40000010 ([S]: with
 *     invtsc=on it saw EAX=0x40000010, 0x40000010 = {0x200b20, 0xf4240, 0, 0}). Neither
 *     cpu_x86_cpuid(0x40000000) nor (0x40000001) is used under KVM; both return zeros there.
 *   - Leaf 0 / 0x80000000: EAX = level / xlevel. The vendor string's 12 bytes go into EBX
 *     (bytes 0–3), EDX (4–7) and ECX (8–11), little-endian; note the EBX, EDX, ECX order. Under
 *     KVM, QEMU replaces a named model's vendor with the HOST vendor unless `vendor=` is given
 *     explicitly (x86_cpu_load_model; [S]: -cpu EPYC on this Intel host reports "GenuineIntel").
 *     So outOfRangeRule() must take the vendor from leaf 0, not from the model name.
 *   - 0x80000002..0x80000004: the 48-byte model-id, NUL-padded, 16 bytes per leaf, split into
 *     EAX, EBX, ECX, EDX, little-endian. A leaf that is all NUL is left out, but reads zero
 *     because it is in range ([S]: "Intel(R) Xeon(R) Processor" has no 0x80000004 entry).
 *   - 0x80000001: EAX = CPUID.1.EAX (version). For a non-Intel vendor with cores*threads > 1,
 *     QEMU also sets ECX[1] (CmpLegacy). For AMD vendors, QEMU copies the aliased CPUID.1:EDX bits
 *     into EDX.
 *
 *  QEMU 7.2-stable versions differ (the machine runs 7.2.22, which has both fixes):
 *   - 7.2.0–7.2.9 treated leaf 7 like SGX leaf 0x12: subleaves 0, 1, 2 (stop at j > 1 with
 *     EAX[3:0] ≠ 1). Fix 0729857c7075 "i386/cpuid: Move leaf 7 to correct group" (backported
 *     in 7.2.10) uses subleaves 0..CPUID.7.0:EAX. Normally only all-zero entries differ, so the
 *     guest sees the same values, but the KVM table is not the same. The exception is a
 *     level-func7=0 override with 7.1 features on, which 7.2.0 would still pass.
 *   - 7.2.0–7.2.9: when it skipped leaf 0x1F (dies < 2), QEMU left an extra all-zero entry
 *     {function 0, index 0, flags 0} after the real leaf 0. KVM's first-match lookup hides it.
 *     Fix 10f92799af8b "i386/cpuid: Decrease cpuid_i when skipping CPUID leaf 1F" (7.2.10).
 */

import type { CpuidReg } from './features.js';

/** How KVM (with QEMU 7.2 as the VMM) treats ECX for a CPUID function. */
export interface IndexedLeaf {
  leaf: number;
  /** true: QEMU passes this function with KVM_CPUID_FLAG_SIGNIFCANT_INDEX */
  indexed: true;
  /** how QEMU decides which subleaves exist, in words, e.g. 'subleaves 0..N while EAX[4:0] (cache type) != 0' */
  subleavesRule: string;
  citation: string;
}

const Q_INIT = 'QEMU 7.2 target/i386/kvm/kvm.c kvm_arch_init_vcpu() (7.2.10+ stable); checked by strace of KVM_SET_CPUID2 on QEMU 7.2.22';

export const INDEXED_LEAVES: readonly IndexedLeaf[] = Object.freeze([
  {
    leaf: 0x4,
    indexed: true,
    subleavesRule:
      'subleaves 0,1,… up to and including the first whose EAX == 0 (that zero terminator is passed too); ' +
      'with the default legacy cache model: 0..3 (L1d, L1i, L2, L3) plus terminator 4',
    citation: `${Q_INIT}: case 4 loop breaks on c->eax == 0 after the entry was added`,
  },
  {
    leaf: 0x7,
    indexed: true,
    subleavesRule:
      'subleaves 0..CPUID.7.0:EAX (max subleaf; 0, or 1 when any 7.1 feature is on). ' +
      'QEMU 7.2.0–7.2.9 instead passed subleaves 0,1,2',
    citation: `${Q_INIT}: case 7 grouped with 0x14/0x1D/0x1E (fix 0729857c7075 "i386/cpuid: Move leaf 7 to correct group", in 7.2.10)`,
  },
  {
    leaf: 0xb,
    indexed: true,
    subleavesRule:
      'subleaves 0,1,… up to and including the first whose ECX[15:8] (level type) == 0; ' +
      'normally 0 (SMT), 1 (core), 2 (invalid terminator). With cpuid-0xb=off, only an all-zero subleaf 0',
    citation: `${Q_INIT}: case 0xb loop breaks on !(c->ecx & 0xff00) after the entry was added`,
  },
  {
    leaf: 0xd,
    indexed: true,
    subleavesRule:
      'subleaves j in 0..63 whose EAX != 0 (0 and 1 when XSAVE is on, plus one per enabled component). ' +
      'Artifact: one extra all-zero entry at index 63 is always left at the end. ' +
      'If 0xD.1:EAX is 0 (no xsaveopt/xsavec/xgetbv1/xsaves/xfd), subleaf 1 is not passed',
    citation: `${Q_INIT}: case 0xd loop skips (continue) entries with c->eax == 0 and stops at j == 64; [S] saw {0xd, 0x3f, all 0}`,
  },
  {
    leaf: 0x12,
    indexed: true,
    subleavesRule:
      'subleaves 0 and 1 always, then 2,3,… while EAX[3:0] == 1 (valid EPC section); the first invalid one is passed as terminator. ' +
      'Passed (all zero) even when SGX is off, whenever level >= 0x12',
    citation: `${Q_INIT}: case 0x12 loop breaks on j > 1 && (c->eax & 0xf) != 1; [S] saw 0x12.{0,1,2} all zero`,
  },
  {
    leaf: 0x14,
    indexed: true,
    subleavesRule: 'subleaves 0..CPUID.14.0:EAX (Intel PT max subleaf; 1 with intel-pt, else only an all-zero subleaf 0)',
    citation: `${Q_INIT}: case 0x14/0x1d/0x1e: times = c->eax of subleaf 0, then j = 1..times`,
  },
  {
    leaf: 0x1d,
    indexed: true,
    subleavesRule: 'subleaves 0..CPUID.1D.0:EAX (AMX palettes; 1 with amx-tile, else only an all-zero subleaf 0)',
    citation: `${Q_INIT}: case 0x14/0x1d/0x1e: times = c->eax of subleaf 0`,
  },
  {
    leaf: 0x1e,
    indexed: true,
    subleavesRule: 'subleaves 0..CPUID.1E.0:EAX; QEMU 7.2 always reports EAX = 0, so only subleaf 0',
    citation: `${Q_INIT}: case 0x14/0x1d/0x1e: times = c->eax of subleaf 0`,
  },
  {
    leaf: 0x1f,
    indexed: true,
    subleavesRule:
      'passed only when the topology has dies > 1 (otherwise the function is absent, so it reads zero and the 0xB/0x1F ' +
      'echo rule does not apply); then subleaves 0,1,… up to and including the first with ECX[15:8] == 0, at most 64',
    citation: `${Q_INIT}: case 0x1f skipped when env->nr_dies < 2, else shares the 0xb loop; [S] dies=2 gave 0x1f.{0..3}`,
  },
  {
    leaf: 0x8000001d,
    indexed: true,
    subleavesRule:
      'subleaves 0,1,… up to and including the first whose EAX == 0 (AMD cache topology; 0..3 plus terminator 4)',
    citation: `${Q_INIT}: case 0x8000001d loop breaks on c->eax == 0; [S] -cpu EPYC,topoext=on gave 0x8000001d.{0..4}`,
  },
]);

const INDEXED_SET: ReadonlySet<number> = new Set(INDEXED_LEAVES.map((l) => l.leaf));

/** True if QEMU 7.2 passes this function with KVM_CPUID_FLAG_SIGNIFCANT_INDEX, i.e. ECX selects the entry. */
export function isIndexedLeaf(leaf: number): boolean {
  return INDEXED_SET.has(leaf >>> 0);
}

/** Fields that legitimately differ between vCPUs of one VM (per-CPU topology IDs), as bit masks per register. */
export interface PerCpuField {
  leaf: number;
  subleaf: number | 'any';
  reg: CpuidReg;
  mask: number;
  what: string;
  citation: string;
  /**
   * Which vendors' manuals define the field (Intel SDM Vol. 2A CPUID; AMD APM Vol. 3 Appendix E).
   * Documentation only: QEMU 7.2 fills every field below for every guest vendor whenever the leaf is
   * in range (cpu_x86_cpuid() has no vendor test in cases 1, 0xB, 0x1F, 0x8000001E), under KVM and
   * under TCG alike, so perCpuFields() selects the same set for both vendors.
   */
  definedBy: readonly ('intel' | 'amd')[];
}

export const PER_CPU_FIELDS: readonly PerCpuField[] = Object.freeze([
  {
    leaf: 0x1,
    subleaf: 'any',
    reg: 'ebx',
    mask: 0xff000000,
    what: 'initial APIC ID (bits 31:24); bits 23:16 (logical CPUs per package) and 15:8 (CLFLUSH size) are the same on all vCPUs',
    citation: 'QEMU 7.2 cpu_x86_cpuid() case 1: EBX = apic_id << 24 | …; [S] vCPU0 0x00020800 vs vCPU1 0x01020800',
    definedBy: ['intel', 'amd'],
  },
  {
    leaf: 0xb,
    subleaf: 'any',
    reg: 'edx',
    mask: 0xffffffff,
    what: 'x2APIC ID, in every subleaf including undefined ones (KVM copies it from subleaf 1)',
    citation:
      'QEMU 7.2 cpu_x86_cpuid() case 0xB: EDX = apic_id; Linux kvm_cpuid() 0xB/0x1F miss path; [S] EDX = 0 vs 1 across vCPUs',
    definedBy: ['intel', 'amd'],
  },
  {
    leaf: 0x1f,
    subleaf: 'any',
    reg: 'edx',
    mask: 0xffffffff,
    what: 'x2APIC ID, in every subleaf including undefined ones, when QEMU exposes 0x1F (dies > 1)',
    citation: 'QEMU 7.2 cpu_x86_cpuid() case 0x1F: EDX = apic_id; Linux kvm_cpuid() 0xB/0x1F miss path; [S] dies=2 run',
    definedBy: ['intel'],
  },
  {
    leaf: 0x8000001e,
    subleaf: 'any',
    reg: 'eax',
    mask: 0xffffffff,
    what: 'extended APIC ID (AMD topology leaf; present only when xlevel >= 0x8000001E)',
    citation:
      'QEMU 7.2 cpu.c encode_topo_cpuid8000001e(): EAX = apic_id (no vendor test in cpu_x86_cpuid() case 0x8000001E); ' +
      '[S] -cpu EPYC,topoext=on vCPU3 EAX = 3; [T] EPYC-v3 vCPU1 EAX = 1; [S] host,vendor=GenuineIntel vCPU1 EAX = 1',
    definedBy: ['amd'],
  },
  {
    leaf: 0x8000001e,
    subleaf: 'any',
    reg: 'ebx',
    mask: 0x000000ff,
    what: 'compute-unit / core ID (bits 7:0); bits 15:8 (threads per core − 1) are the same on all vCPUs',
    citation: 'QEMU 7.2 cpu.c encode_topo_cpuid8000001e(): EBX = (threads_per_core-1) << 8 | core_id; [S] vCPU3 EBX = 0x101',
    definedBy: ['amd'],
  },
  {
    leaf: 0x8000001e,
    subleaf: 'any',
    reg: 'ecx',
    mask: 0x000000ff,
    what: 'node ID (bits 7:0, = APIC ID >> die offset); bits 10:8 (nodes per package − 1) are the same on all vCPUs',
    citation: 'QEMU 7.2 cpu.c encode_topo_cpuid8000001e(): ECX = (dies_per_pkg-1) << 8 | (apic_id >> die_offset) & 0xff',
    definedBy: ['amd'],
  },
]);

/** Fields whose value depends on guest-controlled state (CR4, XCR0, IA32_XSS, APIC_BASE) rather than being fixed for the VM. */
export interface DynamicField {
  leaf: number;
  subleaf: number | 'any';
  reg: CpuidReg;
  mask: number;
  dependsOn: string;
  citation: string;
  /** What QEMU 7.2 cpu_x86_cpuid() does with the field when it answers itself (-accel tcg). */
  qemuTcg: string;
}

const K_RUNTIME = 'Linux 6.18 arch/x86/kvm/cpuid.c kvm_update_cpuid_runtime()';

export const DYNAMIC_FIELDS: readonly DynamicField[] = Object.freeze([
  {
    leaf: 0x1,
    subleaf: 'any',
    reg: 'ecx',
    mask: 1 << 27,
    dependsOn: 'CR4.OSXSAVE (CR4 bit 18): OSXSAVE = CR4.OSXSAVE',
    citation: `${K_RUNTIME} (X86_FEATURE_OSXSAVE)`,
    qemuTcg: 'case 1: set iff FEAT_1_ECX has XSAVE and env->cr[4] has CR4.OSXSAVE',
  },
  {
    leaf: 0x1,
    subleaf: 'any',
    reg: 'edx',
    mask: 1 << 9,
    dependsOn: 'IA32_APIC_BASE.EN (MSR 0x1B bit 11): APIC = APIC_BASE.EN',
    citation: `${K_RUNTIME} (X86_FEATURE_APIC)`,
    qemuTcg: 'case 1: EDX = FEAT_1_EDX, i.e. the apic property; hw/intel/apic.c apic_set_base() clears it (cpu_clear_apic_feature()) when the guest disables the APIC. [T] -apic: EDX[9] = 0 with the APIC enabled',
  },
  {
    leaf: 0x1,
    subleaf: 'any',
    reg: 'ecx',
    mask: 1 << 3,
    dependsOn:
      'IA32_MISC_ENABLE bit 18 (ENABLE_MONITOR_FSM), but only if the VMM disabled KVM_X86_QUIRK_MISC_ENABLE_NO_MWAIT; ' +
      'QEMU 7.2 does not, so under QEMU 7.2 the bit is fixed',
    citation: `${K_RUNTIME} (X86_FEATURE_MWAIT, quirk-gated)`,
    qemuTcg: 'case 1: FEAT_1_ECX as realized; fixed',
  },
  {
    leaf: 0x7,
    subleaf: 0,
    reg: 'ecx',
    mask: 1 << 4,
    dependsOn: 'CR4.PKE (CR4 bit 22): OSPKE = CR4.PKE',
    citation: `${K_RUNTIME} (X86_FEATURE_OSPKE)`,
    qemuTcg: 'case 7: set iff FEAT_7_0_ECX has PKU and env->cr[4] has CR4.PKE',
  },
  {
    leaf: 0x7,
    subleaf: 0,
    reg: 'ebx',
    mask: (1 << 4) | (1 << 11),
    dependsOn:
      'IA32_TSX_CTRL (MSR 0x122) bit 1 TSX_CPUID_CLEAR: while set, HLE (bit 4) and RTM (bit 11) read 0 ' +
      '(needs tsx-ctrl in ARCH_CAPABILITIES for the guest to be able to write the MSR)',
    citation: 'Linux 6.18 arch/x86/kvm/cpuid.c kvm_cpuid(), function == 7 && index == 0 fix-up',
    qemuTcg: 'case 7: FEAT_7_0_EBX as realized, no IA32_TSX_CTRL test; fixed',
  },
  {
    leaf: 0xd,
    subleaf: 0,
    reg: 'ebx',
    mask: 0xffffffff,
    dependsOn: 'XCR0: size in bytes of the standard-format XSAVE area for the components enabled in XCR0',
    citation: `${K_RUNTIME}: EBX = xstate_required_size(xcr0, false)`,
    qemuTcg: 'case 0xD: EBX = xsave_area_size(env->xcr0, false) (KVM-built tables start with EBX = ECX)',
  },
  {
    leaf: 0xd,
    subleaf: 1,
    reg: 'ebx',
    mask: 0xffffffff,
    dependsOn:
      'XCR0 | IA32_XSS: size of the compacted XSAVE area (Linux ≥ 6.18; XCR0 only in older kernels); only when ' +
      '0xD.1:EAX has XSAVEC or XSAVES and QEMU passed subleaf 1',
    citation: `${K_RUNTIME}: EBX = xstate_required_size(xcr0 | ia32_xss, true)`,
    qemuTcg: 'case 0xD: EBX = xsave_area_size(the model\'s XCR0|XSS components, true); fixed for the VM',
  },
  {
    leaf: 0x80000007,
    subleaf: 'any',
    reg: 'edx',
    mask: 1 << 8,
    dependsOn:
      'HV_X64_MSR_TSC_INVARIANT_CONTROL (0x40000118) bit 0, only when Hyper-V TSC-invariant control is exposed; ' +
      'QEMU 7.2 never exposes it, so the bit is fixed there',
    citation: 'Linux 6.18 arch/x86/kvm/cpuid.c kvm_cpuid(), function == 0x80000007 fix-up (kvm_hv_invtsc_suppressed)',
    qemuTcg: 'case 0x80000007: EDX = FEAT_8000_0007_EDX; fixed',
  },
]);

/** CPUID function classes KVM uses when deciding whether a function is out of range, in words and as data. */
export const CPUID_CLASSES: readonly {
  name: 'basic' | 'hypervisor' | 'extended' | 'centaur';
  from: number;
  to: number;
  maxLeafOf: string;
}[] = Object.freeze([
  { name: 'basic', from: 0x00000000, to: 0x3fffffff, maxLeafOf: 'CPUID.0H:EAX' },
  { name: 'hypervisor', from: 0x40000000, to: 0x4fffffff, maxLeafOf: 'CPUID.(F & 0xFFFFFF00):EAX; each 0x100-aligned block is a separate class that exists only if its base entry exists' },
  { name: 'basic', from: 0x50000000, to: 0x7fffffff, maxLeafOf: 'CPUID.0H:EAX' },
  { name: 'extended', from: 0x80000000, to: 0xbfffffff, maxLeafOf: 'CPUID.80000000H:EAX' },
  { name: 'centaur', from: 0xc0000000, to: 0xffffffff, maxLeafOf: 'CPUID.C0000000H:EAX (the code treats every F ≥ 0xC0000000 as Centaur; the comment says the class ends at 0xCFFFFFFF)' },
]);

/** The base leaf whose EAX bounds the class of `leaf` (KVM get_out_of_range_cpuid_entry). */
export function cpuidClassBase(leaf: number): number {
  const f = leaf >>> 0;
  if (f >= 0x40000000 && f <= 0x4fffffff) return (f & 0xffffff00) >>> 0;
  if (f >= 0xc0000000) return 0xc0000000;
  return (f & 0x80000000) >>> 0;
}

/** Vendor strings (CPUID.0 EBX‖EDX‖ECX) for which KVM never redirects out-of-range leaves. */
const ZERO_RULE_VENDORS: ReadonlySet<string> = new Set(['AuthenticAMD', 'AMDisbetter!', 'HygonGenuine']);

/** The two vendor families KVM's out-of-range rule tells apart, plus the rest. */
export type VendorClass = 'intel' | 'amd' | 'other';

/**
 * 'amd' = the vendors KVM treats with AMD semantics: AuthenticAMD, AMDisbetter! (is_guest_vendor_amd())
 * and HygonGenuine (is_guest_vendor_hygon()), Linux arch/x86/include/asm/kvm_emulate.h. 'intel' =
 * GenuineIntel. 'other' (CentaurHauls, "  Shanghai  ", anything else) gets Intel semantics from KVM.
 */
export function vendorClass(vendor: string): VendorClass {
  if (vendor === 'GenuineIntel') return 'intel';
  return ZERO_RULE_VENDORS.has(vendor) ? 'amd' : 'other';
}

/**
 * Who answers the guest's CPUID instruction.
 *  - 'kvm': Linux arch/x86/kvm/cpuid.c kvm_emulate_cpuid() → kvm_cpuid(), looking the function up in
 *    the table QEMU passed with KVM_SET_CPUID2 (steps 0–6 in the header). QEMU's cpu_x86_cpuid()
 *    only built that table.
 *  - 'qemu-tcg': under -accel tcg QEMU answers by itself. QEMU 7.2 target/i386/tcg/misc_helper.c
 *    helper_cpuid() calls cpu_x86_cpuid(env, (uint32_t)EAX, (uint32_t)ECX, …) for every CPUID and
 *    writes the four 32-bit results into RAX..RDX (bits 63:32 zero). Nothing filters them: no table,
 *    no first-match lookup, no AMD zero rule. target/i386/cpu.c cpu_x86_cpuid() first clamps the
 *    function (QEMU_TCG_CLASSES), then a switch computes the output from QEMU's own state (CPU
 *    model, -smp topology, the vCPU's CR4 and XCR0); a function the switch does not know reads zeros.
 */
export type CpuidAnswerer = 'kvm' | 'qemu-tcg';

export const ANSWERERS: Readonly<Record<CpuidAnswerer, { what: string; citation: string }>> = Object.freeze({
  kvm: {
    what: 'KVM answers from the KVM_SET_CPUID2 table QEMU built (exact lookup, then get_out_of_range_cpuid_entry())',
    citation: 'Linux arch/x86/kvm/cpuid.c kvm_emulate_cpuid(), kvm_cpuid(), get_out_of_range_cpuid_entry() (v5.16 … v6.18)',
  },
  'qemu-tcg': {
    what: 'QEMU answers every CPUID itself with cpu_x86_cpuid(EAX, ECX) (clamp to the class limit, then compute)',
    citation: 'QEMU 7.2 target/i386/tcg/misc_helper.c helper_cpuid(); target/i386/cpu.c cpu_x86_cpuid()',
  },
});

/** What -accel gives which answerer: kvm → 'kvm', tcg → 'qemu-tcg'. */
export function answererForAccel(accel: 'kvm' | 'tcg'): CpuidAnswerer {
  return accel === 'tcg' ? 'qemu-tcg' : 'kvm';
}

/** How each answerer treats a function outside its class's range, per guest vendor. */
export interface OutOfRangeRuleEntry {
  answerer: CpuidAnswerer;
  vendors: readonly VendorClass[];
  rule: 'max-basic' | 'zero';
  /** When a function is out of range for this answerer. */
  outOfRange: string;
  citation: string;
}

export const OUT_OF_RANGE_RULES: readonly OutOfRangeRuleEntry[] = Object.freeze([
  {
    answerer: 'kvm',
    vendors: ['intel', 'other'],
    rule: 'max-basic',
    outOfRange:
      'no exact entry, and the class (CPUID_CLASSES) has no base entry or F > base.EAX. Each 0x100 block of 0x4000_0000 ' +
      'is its own class; the Centaur class (F >= 0xC000_0000) exists only if QEMU passed 0xC000_0000, i.e. xlevel2 > 0. ' +
      'Answer: the entry (CPUID.0:EAX, ECX as requested), zeros if QEMU left that entry out',
    citation:
      'Linux arch/x86/kvm/cpuid.c get_out_of_range_cpuid_entry(): "Intel CPUID semantics treats any query for an ' +
      'out-of-range leaf as if the highest basic leaf (i.e. CPUID.0H:EAX) were requested ... Centaur/VIA follows Intel ' +
      'semantics"; Intel SDM Vol. 2A CPUID: "the data for the highest basic information leaf is returned"; ' +
      '[S] host,vendor=GenuineIntel,level=13 ring 0: CPUID(0xC0000000,1) = CPUID(0x40000100,0)… = CPUID(0xD,·)',
  },
  {
    answerer: 'kvm',
    vendors: ['amd'],
    rule: 'zero',
    outOfRange:
      'no exact entry: get_out_of_range_cpuid_entry() returns NULL for an AMD/Hygon vendor before it looks at any class, ' +
      'so every missing function reads zeros: above a class max, in a hypervisor block with no base entry, and at ' +
      '0xC000_0000.. when QEMU passed no Centaur entry (xlevel2 = 0)',
    citation:
      'Linux arch/x86/kvm/cpuid.c get_out_of_range_cpuid_entry(): is_guest_vendor_amd() || is_guest_vendor_hygon() → ' +
      'return NULL; "AMD CPUID semantics returns all zeroes for any undefined leaf, whether or not the leaf is in range"; ' +
      '[S] host (AuthenticAMD) ring 0: CPUID(0xC0000000), (0x80000023), (0x40000002), (0x30) all zero',
  },
  {
    answerer: 'qemu-tcg',
    vendors: ['intel', 'amd', 'other'],
    rule: 'max-basic',
    outOfRange:
      'F above its QEMU_TCG_CLASSES limit (level, 0x40000001, xlevel or xlevel2; the table plays no part): ' +
      'F := cpuid_level with ECX kept, for every vendor. With xlevel2 = 0 every F >= 0xC000_0000 is out of range',
    citation:
      'QEMU 7.2 target/i386/cpu.c cpu_x86_cpuid(): "Calculate & apply limits for different index ranges" then ' +
      '"if (index > limit) { /* Intel documentation states that invalid EAX input will return the same information as ' +
      'EAX=cpuid_level */ index = env->cpuid_level; }" (no vendor test); [T] EPYC-v3 (AuthenticAMD): ' +
      'CPUID(0xC0000000,1) = CPUID(0x80000023,1)… = CPUID(0xD,1) = {5, 0x340, 0, 0}',
  },
]);

/**
 * The out-of-range rule for a guest vendor: 'max-basic' (the max basic leaf's output, keeping the
 * requested ECX) or 'zero'. `answerer` defaults to 'kvm', the rule this function had before answerers.
 */
export function outOfRangeRule(vendor: string, answerer: CpuidAnswerer = 'kvm'): 'max-basic' | 'zero' {
  const v = vendorClass(vendor);
  const e = OUT_OF_RANGE_RULES.find((r) => r.answerer === answerer && r.vendors.includes(v));
  if (!e) throw new Error(`no out-of-range rule for answerer ${answerer}, vendor ${vendor}`);
  return e.rule;
}

/** QEMU 7.2 TCG's classes: cpu_x86_cpuid()'s limit for each range of functions. */
export const QEMU_TCG_CLASSES: readonly {
  name: 'basic' | 'hypervisor' | 'extended' | 'centaur';
  from: number;
  to: number;
  limitOf: string;
}[] = Object.freeze([
  { name: 'basic', from: 0x00000000, to: 0x3fffffff, limitOf: "env->cpuid_level (expansion 'level')" },
  {
    name: 'hypervisor',
    from: 0x40000000,
    to: 0x7fffffff,
    limitOf: 'the constant 0x40000001 ("else if (index >= 0x40000000) limit = 0x40000001"); so 0x5000_0000–0x7fff_ffff are out of range too',
  },
  { name: 'extended', from: 0x80000000, to: 0xbfffffff, limitOf: "env->cpuid_xlevel (expansion 'xlevel')" },
  { name: 'centaur', from: 0xc0000000, to: 0xffffffff, limitOf: "env->cpuid_xlevel2 (expansion 'xlevel2'; 0 for every built-in 7.2 model)" },
]);

/** The limit QEMU 7.2 TCG compares `leaf` with (cpu_x86_cpuid()), given level/xlevel/xlevel2. */
export function qemuTcgLimit(leaf: number, max: { basic: number; extended: number; centaur: number }): number {
  const f = leaf >>> 0;
  if (f >= 0xc0000000) return max.centaur >>> 0;
  if (f >= 0x80000000) return max.extended >>> 0;
  if (f >= 0x40000000) return 0x40000001;
  return max.basic >>> 0;
}

/** QEMU 7.2 cpu_x86_cpuid() case 0x40000000 under TCG with tcg-cpuid=on (the default): EAX = 0x40000001, "TCGTCGTCGTCG". */
export const QEMU_TCG_SIGNATURE = Object.freeze({ eax: 0x40000001, ebx: 0x54474354, ecx: 0x43544743, edx: 0x47435447 });

/**
 * The per-vCPU fields for a guest vendor and answerer. QEMU 7.2 fills all of PER_CPU_FIELDS for every
 * vendor, and both answerers take their values from cpu_x86_cpuid(), so the set is the same for all
 * four combinations; only the leaves' ranges differ (an Intel model's xlevel is normally below
 * 0x8000001E, making that leaf out of range). [T]/[S]: an Intel vendor with xlevel 0x80000022 (host,
 * vendor=GenuineIntel under KVM) shows CPUID.8000001E:EAX = 0 / 1 on vCPU 0 / 1.
 */
export function perCpuFields(vendor: string, answerer: CpuidAnswerer = 'kvm'): readonly PerCpuField[] {
  // A function of (vendor, answerer) so that a VMM or kernel that differs can be told apart here;
  // for QEMU 7.2 under KVM or TCG the answer does not depend on either.
  void vendor;
  void answerer;
  return PER_CPU_FIELDS;
}

/**
 * Topology-derived fields that are the SAME on every vCPU (from -smp, not from the vCPU): the
 * calibration table's vCPU-0 value holds for all vCPUs. `vendors` says for which guest vendors
 * QEMU 7.2 fills the field; `definedBy` which vendors' manuals define it.
 */
export interface TopologyField {
  leaf: number;
  subleaf: number | 'any';
  reg: CpuidReg;
  mask: number;
  what: string;
  vendors: readonly VendorClass[];
  definedBy: readonly ('intel' | 'amd')[];
  citation: string;
}

const Q_CPUID = 'QEMU 7.2 target/i386/cpu.c cpu_x86_cpuid()';

export const TOPOLOGY_FIELDS: readonly TopologyField[] = Object.freeze([
  {
    leaf: 0x1, subleaf: 'any', reg: 'ebx', mask: 0x00ff0000,
    what: 'logical processors per package (cores × threads) when > 1; CPUID.1:EDX[28] (HT) is set with it',
    vendors: ['intel', 'amd', 'other'], definedBy: ['intel', 'amd'],
    citation: `${Q_CPUID} case 1: if (nr_cores * nr_threads > 1) EBX |= … << 16, EDX |= CPUID_HT; [T] -smp 2: EBX[23:16] = 2 for EPYC-v3 and Skylake-Client-v3`,
  },
  {
    leaf: 0xb, subleaf: 'any', reg: 'eax', mask: 0x1f,
    what: 'subleaf 0: APIC-ID shift to the core level (SMT width); subleaf 1: shift to the package level; EBX = logical processors at that level, ECX[15:8] = level type',
    vendors: ['intel', 'amd', 'other'], definedBy: ['intel', 'amd'],
    citation: `${Q_CPUID} case 0xB (no vendor test; cpuid-0xb=off gives zeros): [T] EPYC-v3 and Skylake-Client-v3 -smp 2: 0xB.0 = {0, 1, 0x100}, 0xB.1 = {1, 2, 0x201}`,
  },
  {
    leaf: 0x80000001, subleaf: 'any', reg: 'ecx', mask: 1 << 1,
    what: 'CmpLegacy: set for every non-Intel vendor when cores × threads > 1, whatever the cmp-legacy property says',
    vendors: ['amd', 'other'], definedBy: ['amd'],
    citation: `${Q_CPUID} case 0x80000001: "don't set it here for Intel to make Linux guests happy"`,
  },
  {
    leaf: 0x80000008, subleaf: 'any', reg: 'ecx', mask: 0x0000f0ff,
    what: 'NC (bits 7:0, threads per package − 1) and ApicIdSize (bits 15:12, apicid_pkg_offset) when cores × threads > 1, else 0',
    vendors: ['intel', 'amd', 'other'], definedBy: ['amd'],
    citation:
      `${Q_CPUID} case 0x80000008: ECX = (apicid_pkg_offset << 12) | (nr_cores * nr_threads - 1) (no vendor test; the SDM ` +
      'calls ECX reserved); [T] EPYC-v3 and Skylake-Client-v3 -smp 2: 0x1001; [S] KVM host -smp 2: 0x1001',
  },
  {
    leaf: 0x8000001e, subleaf: 'any', reg: 'ebx', mask: 0x0000ff00,
    what: 'threads per compute unit − 1 (bits 15:8); ECX bits 10:8 likewise carry nodes per package − 1',
    vendors: ['intel', 'amd', 'other'], definedBy: ['amd'],
    citation: 'QEMU 7.2 cpu.c encode_topo_cpuid8000001e(), reached for any vendor whenever xlevel >= 0x8000001E',
  },
]);
