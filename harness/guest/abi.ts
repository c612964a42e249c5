/**
 * The guest ABI: where things live in guest-physical memory and the layout of the structures the
 * host and the guest share. Like the op table, this is the single definition: the C side gets it
 * through the generated header, the TypeScript side reads structures with `readStruct`.
 *
 * The host reads guest RAM directly: RAM is a shared file (memory-backend-file, share=on) in the
 * VM's private directory, so the file offset of a guest-physical address below 2 GiB is the address
 * itself. Nothing here depends on the machine type.
 */
import { FIELD_BYTES, type Field } from '../../ir/ops.js';

/**
 * 2: the mailbox carries the guest's whole verdict (bail_reason and its arguments, nthreads) and a
 * thread's status says why an op was bad (bad_opcode, bad_reason).
 * 3: the exit handshake (PROGRAM_FLAGS.holdExit, mailbox.exit_ack).
 * 4: steal time (PROGRAM_FLAGS.stealTime, LAYOUT.stealTime) and its reading in each irq log entry.
 * 5: CR0.AM and CR0.TS on request (PROGRAM_FLAGS.alignmentCheck, taskSwitched); RFLAGS.AC cleared after every op.
 * 6: self-checks (ir/checks.ts): prog_header.checks_off/nchecks (was reserved0) point at a table of
 * check_desc after the threads' code; mailbox.checks_failed (was pad0); EXIT_VALUE.checksFailed.
 * 7: LAYOUT.notPresentStack, a stack pointer whose frame pushes fault (svmRun stack bits 3-5, execStack);
 * CR0.NE set on every vCPU (an unmasked x87 exception is #MF).
 * 8: AVX state on request (PROGRAM_FLAGS.avxState: CR4.OSXSAVE and XCR0); dirtyWrite writers 5 (AVX) and 6 (AVX-512).
 * 9: interrupt logs moved to 12 MiB with 256 KiB each (16 316 entries, was 4 031 in 64 KiB at 7 MiB);
 * the program area is 4 MiB.
 */
export const GUEST_ABI_VERSION = 9;

export const LAYOUT = {
  /** Real-mode trampoline the BSP copies for application processors (INIT-SIPI-SIPI vector 0x08). */
  apTrampoline: 0x0000_8000,
  /** Where the ELF is linked; qboot/PVH loads it here. */
  kernelBase: 0x0010_0000,
  /**
   * The guest's page tables, alone in their own 2 MiB page. A shadow-paging hypervisor
   * write-protects page-table pages; sharing a large page with stacks and data made every guest
   * store fault (55 us per op instead of nanoseconds, measured under kvm_pvm).
   */
  pageTables: 0x0040_0000,
  pageTablesBytes: 0x0004_2000,
  /** Guest → host status page (state, heartbeat per vCPU, fatal exception). */
  mailbox: 0x0060_0000,
  /**
   * Per-vCPU kvmclock areas (pvclock_vcpu_time_info, 32 bytes, one every pvclockStride bytes),
   * inside the mailbox's 2 MiB page but far above the mailbox itself; the timer family points
   * MSR_KVM_SYSTEM_TIME_NEW of vCPU i at pvclock + i * pvclockStride.
   */
  pvclock: 0x0068_0000,
  pvclockStride: 64,
  /**
   * Per-vCPU steal time areas (kvm_steal_time, 64 bytes, 64-byte aligned) for programs with
   * PROGRAM_FLAGS.stealTime: MSR_KVM_STEAL_TIME of vCPU i points at stealTime + i * stealTimeStride.
   */
  stealTime: 0x0069_0000,
  stealTimeStride: 64,
  /**
   * Per-vCPU PV EOI flags (4 bytes, 4-byte aligned) where a program enables them (the migration
   * family): MSR_KVM_PV_EOI_EN of vCPU i points at pvEoi + i * pvEoiStride. KVM writes the flag
   * when it injects an interrupt and clears it at the guest's next exit; the guest's own EOI stays
   * the APIC write (msr.rst: a guest that leaves the flag set has done no PV EOI).
   */
  pvEoi: 0x0069_8000,
  pvEoiStride: 64,
  /** Host → guest program (header + per-thread bytecode), loaded with -device loader. */
  program: 0x0080_0000,
  programMax: 0x0040_0000,
  /**
   * Per-vCPU interrupt logs: counts per vector and a ring of (TSC, vector). 256 KiB each: a
   * periodic timer at KVM's 200 us floor on a host that takes longer than that to deliver one
   * starves the guest's loop, and a 2.4 ms wait of seed 763 lasted 2.5 s (about 12 500
   * interrupts); the old 4 031-entry ring overwrote the first ones, and the judge missed them.
   */
  irqLog: 0x00c0_0000,
  irqLogStride: 0x0004_0000,
  /** Observation streams, one region per thread, placed by the host. */
  observations: 0x0100_0000,
  /** Guest RAM must be at least this large (observations need room above 16 MiB). */
  minRamMiB: 32,
  maxCpus: 16,
  /**
   * A canonical address with no translation, 8 bytes above a page boundary: 64 GiB + 4 KiB + 8,
   * PDPT slot 64, which entry.S leaves zero (map_high fills slots 4 and up only for a program whose
   * mapLimit reaches them; the nested family's never do). A stack pointer here makes a delivery's
   * frame push raise #PF: the pushes start at the 16-aligned 64 GiB + 4 KiB, the whole frame lies
   * in the not-present page below it (models/nested/exceptions.ts 'not-present' stacks).
   */
  notPresentStack: 0x10_0000_1008,
} as const;

export const PROGRAM_MAGIC = 0x504d564b; // 'KVMP'
export const MAILBOX_MAGIC = 0x424d564b; // 'KVMB'

/** Program header flags. */
export const PROGRAM_FLAGS = {
  /** Switch every vCPU's LAPIC to x2APIC mode before running its thread. */
  x2apic: 1n << 0n,
  /**
   * Run the threads in ring 0 instead of ring 3. Ring 3 is the default: a page-table-based
   * hypervisor (kvm_pvm) runs guest user mode natively but emulates an unmodified guest's
   * supervisor mode instruction by instruction (~0.5 us each, measured), so the interpreter runs
   * in user mode (IOPL 3) and asks ring 0 only for what needs it (RDMSR/WRMSR).
   */
  ring0: 1n << 2n,
  /**
   * Before leaving through isa-debug-exit the guest waits (at most EXIT_HOLD_TSC cycles) for the
   * host to set mailbox.exit_ack: the host reads what only a live QEMU can tell (its threads'
   * scheduler accounting, QEMU's statistics) after the last op and before QEMU is gone.
   */
  holdExit: 1n << 3n,
  /**
   * Each vCPU enables KVM steal time (MSR_KVM_STEAL_TIME, where CPUID 0x4000_0001 EAX bit 5 offers
   * it) before its thread, and its interrupt handler logs the steal so far with each interrupt (the
   * irq log entry's second u32, µs, wrapping): how long the host kept the vCPU runnable but not
   * running, the delay an interrupt may owe to the host rather than to the timer under test.
   */
  stealTime: 1n << 4n,
  /**
   * Set CR0.AM on every vCPU, so that a CPL-3 access to a misaligned address with RFLAGS.AC = 1
   * raises #AC (SDM Interrupt 17). Off by default: then #AC must never arise, whatever RFLAGS.AC
   * says. (Every op runs with RFLAGS.AC clear: the interpreter clears it after each op.)
   */
  alignmentCheck: 1n << 5n,
  /**
   * Set CR0.TS on every vCPU, so that the first x87 or SSE instruction raises #NM (SDM Interrupt
   * 7). The guest's own code never touches that state (-mgeneral-regs-only); only programs whose
   * ops use neither (fillXmm, an exec of SSE code expecting to run) may set it.
   */
  taskSwitched: 1n << 6n,
  /**
   * Where the vCPU's CPUID has XSAVE and AVX: set CR4.OSXSAVE and XCR0 = x87|SSE|AVX on every vCPU,
   * plus opmask|ZMM_Hi256|Hi16_ZMM where CPUID.7.0:EBX has AVX512F and CPUID.0xD.0:EAX allows all
   * three (SDM Vol. 1 13.3). Off by default: CR4.OSXSAVE shows in CPUID.1:ECX[27] and XCR0 in
   * CPUID.0xD.0:EBX, which the CPUID-comparing families read as the plain boot state. Only programs
   * whose ops use AVX (dirtyWrite writers 5 and 6) set it; QEMU's `info registers` then prints
   * YMMnn (ZMMnn with AVX-512) instead of XMMnn.
   */
  avxState: 1n << 7n,
} as const;

/**
 * What the guest writes to isa-debug-exit (QEMU then exits with (value << 1) | 1): done, every
 * thread ran to its end (and every check passed) → 33; the guest failed (a thread did not finish,
 * it bailed out) → 35; the threads finished but a self-check failed → 37.
 */
export const EXIT_VALUE = { done: 0x10, failed: 0x11, checksFailed: 0x12 } as const;
export const qemuExitStatus = (value: number): number => (value << 1) | 1;

/** check_desc.kind, one per ir/checks.ts Check kind. */
export const CHECK_KIND = { value: 0, diff: 1, same: 2, status: 3 } as const;

/** The longest a holdExit guest waits for mailbox.exit_ack, TSC cycles (~3.5 s at 2.4 GHz). */
export const EXIT_HOLD_TSC = 1n << 33n;

/**
 * The verdict the host judges (harness/workload.ts guestProblems) is the mailbox and the thread
 * statuses; the TAP lines on COM1 say the same for people. Every set below is closed: a value outside
 * it is itself a problem.
 *
 * Mailbox states: `booting` until every vCPU is up; `running` while threads run; `done` when the BSP
 * has seen every thread end (each thread's own state says how); `failed` when the guest gave up
 * (`bail_reason` says why).
 */
export const MAILBOX_STATE = { booting: 0, running: 1, done: 2, failed: 3 } as const;
/**
 * Thread states: `faulted`: an exception outside any op's catch ended the thread (fault_* fields);
 * `overflow`: its observation region was full; `badOp`: an op the guest refuses (bad_opcode,
 * bad_reason).
 */
export const THREAD_STATE = { idle: 0, running: 1, done: 2, faulted: 3, overflow: 4, badOp: 5 } as const;

/** Why the guest gave up (mailbox.bail_reason, with mailbox.state = failed). */
export const BAIL_REASON = {
  none: 0,
  /** No program at LAYOUT.program: bail_arg0 = the magic found, bail_arg1 = the ABI version found. */
  badProgram: 1,
  /** The program was encoded for another op table: bail_arg0 = its OPS_HASH, bail_arg1 = the guest's. */
  opsHash: 2,
  /** nthreads is 0 or above LAYOUT.maxCpus: bail_arg0 = the count. */
  threadCount: 3,
  /** An application processor did not come up: bail_arg0 = its vCPU index, bail_arg1 = the APIC ID sent INIT-SIPI-SIPI. */
  apStart: 4,
  /** An exception outside any thread or op (fatal_cpu, fatal_vector, fatal_error, fatal_rip, fatal_cr2). */
  exception: 5,
} as const;

/** Why an op was refused (thread_status.bad_reason, with state = badOp and bad_opcode = its code). */
export const BAD_OP_REASON = {
  none: 0,
  /** The byte at pc is no op of this guest's table. */
  unknownOp: 1,
  /** An operand outside the values the op table allows (OpDef.allowed), or refused by the op's guest check. */
  badOperand: 2,
  /** The op's operands run past the end of the thread's code. */
  truncated: 3,
  /** loopBegin nested deeper than 8. */
  loopTooDeep: 4,
  /** loopEnd without a loopBegin. */
  loopUnmatched: 5,
} as const;

/**
 * Local APIC register offsets (xAPIC MMIO offset from 0xfee00000; the x2APIC MSR is 0x800 + reg/16).
 * The guest reaches every one of them through apic_read/apic_write (runtime.h), as do the apicRead
 * and apicWrite ops. SDM Vol. 3A, Table 11-1 and Table 11-6.
 */
export const APIC_REGS = {
  id: 0x20,
  version: 0x30,
  tpr: 0x80,
  ppr: 0xa0,
  eoi: 0xb0,
  ldr: 0xd0,
  svr: 0xf0,
  isr0: 0x100,
  tmr0: 0x180,
  irr0: 0x200,
  esr: 0x280,
  /** Interrupt command: one 64-bit register in x2APIC mode (destination in bits 63:32). */
  icr: 0x300,
  /** xAPIC only: ICR bits 63:32 (destination in bits 63:56); reserved in x2APIC mode (#GP). */
  icr2: 0x310,
  lvtTimer: 0x320,
  lvtThermal: 0x330,
  lvtPerf: 0x340,
  lvtLint0: 0x350,
  lvtLint1: 0x360,
  lvtError: 0x370,
  timerInitialCount: 0x380,
  timerCurrentCount: 0x390,
  timerDivide: 0x3e0,
  /** x2APIC only: self IPI. */
  selfIpi: 0x3f0,
} as const;
export const APIC_MMIO_BASE = 0xfee0_0000;
export const X2APIC_MSR_BASE = 0x800;

export const STRUCTS = {
  prog_header: [
    ['magic', 'u32'],
    ['abi', 'u32'],
    ['ops_hash', 'u32'],
    ['nthreads', 'u32'],
    ['canary', 'u64'],
    ['flags', 'u64'],
    ['map_limit', 'u64'],
    /** Offset of the check_desc table in the image (8-aligned, after the code) and how many. */
    ['checks_off', 'u32'],
    ['nchecks', 'u32'],
    ['reserved1', 'u64'],
    ['reserved2', 'u64'],
  ],
  thread_desc: [
    ['code_off', 'u32'],
    ['code_len', 'u32'],
    ['obs_addr', 'u64'],
    ['obs_len', 'u64'],
  ],
  /**
   * One self-check (ir/checks.ts, encoded by harness/bytecode.ts). Offsets are into the thread's
   * observation region: `rec` where the record starts (its opcode must be `opcode`), `off` the
   * field (`width` bytes); the second field (diff, same) likewise in thread2. Status checks read
   * `off` into the thread's thread_status. The name is a NUL-terminated string at `name_off` in
   * the image. Compared: (a & mask) against expected (value, status), a - b (diff) or b (same);
   * printed as (x & mask) >> shift.
   */
  check_desc: [
    ['kind', 'u8'],
    ['thread', 'u8'],
    ['thread2', 'u8'],
    ['width', 'u8'],
    ['width2', 'u8'],
    ['shift', 'u8'],
    ['opcode', 'u8'],
    ['opcode2', 'u8'],
    ['rec', 'u32'],
    ['off', 'u32'],
    ['rec2', 'u32'],
    ['off2', 'u32'],
    ['name_off', 'u32'],
    ['pad', 'u32'],
    ['expected', 'u64'],
    ['mask', 'u64'],
  ],
  mailbox: [
    ['magic', 'u32'],
    ['abi', 'u32'],
    ['state', 'u32'],
    ['cpus_online', 'u32'],
    ['ops_hash', 'u32'],
    ['fatal_cpu', 'u32'],
    ['fatal_vector', 'u64'],
    ['fatal_error', 'u64'],
    ['fatal_rip', 'u64'],
    ['fatal_cr2', 'u64'],
    ['boot_tsc', 'u64'],
    ['done_tsc', 'u64'],
    /** BAIL_REASON; its arguments below. */
    ['bail_reason', 'u32'],
    /** Threads the guest ran (the program's count, once checked). */
    ['nthreads', 'u32'],
    ['bail_arg0', 'u64'],
    ['bail_arg1', 'u64'],
    /** Set by the host (through the shared RAM file) to let a holdExit guest leave. */
    ['exit_ack', 'u32'],
    /** Self-checks that failed (ir/checks.ts; 0 for a program without any). */
    ['checks_failed', 'u32'],
  ],
  thread_status: [
    ['state', 'u32'],
    ['apic_id', 'u32'],
    ['ops_done', 'u64'],
    ['obs_used', 'u64'],
    ['marker', 'u64'],
    ['pc', 'u64'],
    ['fault_vector', 'u64'],
    ['fault_error', 'u64'],
    ['fault_rip', 'u64'],
    ['fault_cr2', 'u64'],
    ['irq_total', 'u64'],
    /** Bumped inside long-running ops (delays, waits, barriers) so the host can tell slow from stuck. */
    ['heartbeat', 'u64'],
    /** With state badOp: the opcode byte at pc and BAD_OP_REASON. */
    ['bad_opcode', 'u32'],
    ['bad_reason', 'u32'],
    ['pad2', 'u64'],
    ['pad3', 'u64'],
    ['pad4', 'u64'],
    ['pad5', 'u64'],
  ],
  irq_log_head: [
    ['total', 'u64'],
    ['next', 'u64'],
  ],
} as const satisfies Record<string, readonly Field[]>;

export type StructName = keyof typeof STRUCTS;

export function structBytes(name: StructName): number {
  return STRUCTS[name].reduce((n, [, t]) => n + FIELD_BYTES[t], 0);
}

/** Byte offset of a field in a packed structure. */
export function fieldOffset(name: StructName, field: string): number {
  let at = 0;
  for (const [f, t] of STRUCTS[name]) {
    if (f === field) return at;
    at += FIELD_BYTES[t];
  }
  throw new Error(`no field ${field} in ${name}`);
}

/** The mailbox: header, then thread_status[maxCpus] starting at this offset. */
export const MAILBOX_THREADS_OFFSET = 128;
/** irq log: u32 counts[256], then irq_log_head, then the ring of { u64 tsc; u32 vector; u32 pad }. */
export const IRQ_LOG_COUNTS_BYTES = 256 * 4;
export const IRQ_LOG_ENTRY_BYTES = 16;
/** Offset of the ring in one vCPU's log. */
export const IRQ_LOG_RING_OFFSET = IRQ_LOG_COUNTS_BYTES + 16;
export const IRQ_LOG_RING_ENTRIES =
  (LAYOUT.irqLogStride - IRQ_LOG_COUNTS_BYTES - 16) / IRQ_LOG_ENTRY_BYTES;

/** Read a packed little-endian structure; integers come back as bigint. */
export function readStruct(name: StructName, buf: Uint8Array, offset = 0): Record<string, bigint> {
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const out: Record<string, bigint> = {};
  let at = offset;
  for (const [field, type] of STRUCTS[name]) {
    out[field] = readField(view, at, type);
    at += FIELD_BYTES[type];
  }
  return out;
}

export function readField(view: DataView, at: number, type: keyof typeof FIELD_BYTES): bigint {
  switch (type) {
    case 'u8':
      return BigInt(view.getUint8(at));
    case 'u16':
      return BigInt(view.getUint16(at, true));
    case 'u32':
      return BigInt(view.getUint32(at, true));
    case 'u64':
      return view.getBigUint64(at, true);
  }
}
