/**
 * The workload op table: the one definition of the guest bytecode.
 *
 * The TypeScript encoder (harness/bytecode.ts), the record decoder, the reference models and the C
 * interpreter in the guest (through a header generated from this file, harness/guest/header.ts) all
 * read these definitions, so they cannot drift apart. The guest also checks at run time that the
 * program it was given was encoded against the same table (OPS_HASH in the program header).
 *
 * Encoding: each op is its one-byte code followed by its operands, little-endian, packed.
 * Every op with `record: true` appends one record to its vCPU's observation stream:
 *   an 8-byte header { u8 opcode; u8 faultVector (0xff: none); u16 flags; u32 errorCode }
 *   then its `result` fields (8-byte aligned), then for string ops a buffer of
 *   GUARD + count*width + GUARD bytes rounded up to 8, pre-filled with the canary byte pattern.
 */

export type FieldType = 'u8' | 'u16' | 'u32' | 'u64';
export type Field = readonly [name: string, type: FieldType];

export interface OpDef {
  readonly code: number;
  readonly operands: readonly Field[];
  /** Fields of the record payload; only meaningful when record is true. */
  readonly result: readonly Field[];
  readonly record: boolean;
  /** Has a trailing buffer of count*width bytes with guards on both sides (string I/O). */
  readonly stringBuffer?: boolean;
  readonly doc: string;
  /*
   * How the guest runs the op. Its interpreter's dispatch (decode, operand checks, record, pre-fill,
   * catch) is generated from these (harness/guest/header.ts); interp.c only writes exec_<op>.
   */
  /** Operand values the guest accepts, by operand name; any other value makes the op a bad op. */
  readonly allowed?: Readonly<Record<string, readonly number[]>>;
  /** What the result fields hold before the op runs: 0 (the default) or the program's canary. */
  readonly prefill?: 'zero' | 'canary';
  /**
   * Where an exception raised by the op goes: into its record header, the thread going on (the
   * default for recording ops), or to the thread, which ends faulted (always so for the others).
   */
  readonly faults?: 'record' | 'thread';
  /** What the guest checks beyond `allowed` before it runs the op (interp.c check_<op>); failing is a bad op. */
  readonly guestCheck?: string;
  /** Moves the interpreter itself (end, loops): interp.c decodes it by hand. */
  readonly control?: boolean;
}

function op<const O extends readonly Field[], const R extends readonly Field[] | null>(
  code: number,
  operands: O,
  result: R,
  doc: string,
  extra: Pick<OpDef, 'stringBuffer' | 'allowed' | 'prefill' | 'faults' | 'guestCheck' | 'control'> = {},
): OpDef & { readonly operands: O; readonly result: R extends readonly Field[] ? R : readonly []; readonly record: R extends null ? false : true } {
  return { code, operands, result: (result ?? []) as never, record: (result !== null) as never, doc, ...extra };
}

export const FIELD_BYTES: Record<FieldType, number> = { u8: 1, u16: 2, u32: 4, u64: 8 };

/** Bytes before and after a string op's destination that must keep the canary pattern. */
export const STRING_GUARD_BYTES = 16;
export const RECORD_HEADER_BYTES = 8;
/** faultVector value meaning "no exception while executing this op". */
export const NO_FAULT = 0xff;

export const OPS = {
  end: op(0x00, [], null, 'Stop this vCPU thread (also implied by the end of its code).', { control: true }),

  cpuid: op(
    0x01,
    [['leaf', 'u32'], ['subleaf', 'u32'], ['cpl', 'u8']],
    [['rax', 'u64'], ['rbx', 'u64'], ['rcx', 'u64'], ['rdx', 'u64'], ['clobbered', 'u32'], ['pad', 'u32']],
    'CPUID with every GPR but RSP holding the canary (RAX/RCX: canary upper half, leaf/subleaf lower half). ' +
      'Records RAX..RDX as 64-bit values and a bit mask of the other GPRs (bit i = GPR i, x86 encoding order) ' +
      'that no longer hold the canary. `cpl` (0 or 3) is the privilege level CPUID executes at: a ring-3 thread asks ring 0 ' +
      'for a CPL-0 query through a #UD trap (ud2 at a known address; the handler runs CPUID on the trapped registers); ' +
      'a ring-0 thread takes CPL-3 queries as a bad op.',
    { allowed: { cpl: [0, 3] }, guestCheck: 'a ring-0 thread refuses a CPL-3 query' },
  ),

  pioIn: op(
    0x10,
    [['port', 'u16'], ['width', 'u8']],
    [['rax', 'u64']],
    'IN AL/AX/EAX, DX with RAX pre-filled with the canary; records all of RAX.',
    { allowed: { width: [1, 2, 4] }, prefill: 'canary' },
  ),
  pioIns: op(
    0x11,
    [['port', 'u16'], ['width', 'u8'], ['count', 'u16']],
    [['rcx', 'u64'], ['rdiDelta', 'u64']],
    'REP INSB/W/D into a canary-filled buffer; records RCX and how far RDI moved, then the buffer with its guards.',
    { stringBuffer: true, allowed: { width: [1, 2, 4] } },
  ),
  mmioRead: op(
    0x12,
    [['addr', 'u64'], ['width', 'u8']],
    [['rax', 'u64']],
    'MOV AL/AX/EAX/RAX, [addr] with RAX pre-filled with the canary; records all of RAX.',
    { allowed: { width: [1, 2, 4, 8] }, prefill: 'canary' },
  ),
  mmioMovs: op(
    0x13,
    [['addr', 'u64'], ['width', 'u8'], ['count', 'u16']],
    [['rcx', 'u64'], ['rsiDelta', 'u64'], ['rdiDelta', 'u64']],
    'REP MOVSB/W/D/Q from [addr] into a canary-filled buffer; records RCX, the RSI and RDI moves, then the buffer.',
    { stringBuffer: true, allowed: { width: [1, 2, 4, 8] } },
  ),
  pioOut: op(0x14, [['port', 'u16'], ['width', 'u8'], ['value', 'u32']], null, 'OUT DX, AL/AX/EAX.', { allowed: { width: [1, 2, 4] } }),
  mmioWrite: op(0x15, [['addr', 'u64'], ['width', 'u8'], ['value', 'u64']], null, 'MOV [addr], AL/AX/EAX/RAX.', { allowed: { width: [1, 2, 4, 8] } }),

  rdmsr: op(0x20, [['msr', 'u32']], [['value', 'u64']], 'RDMSR; a #GP is caught and recorded in the record header.'),
  wrmsr: op(0x21, [['msr', 'u32'], ['value', 'u64']], [], 'WRMSR; a #GP is caught and recorded. A write to IA32_APIC_BASE (0x1b) that succeeds sets the mode (bit 10, x2APIC) every later APIC access of the guest uses: EOIs, apicRead, apicWrite.'),
  rdtsc: op(0x22, [], [['tsc', 'u64']], 'RDTSC (serialised with LFENCE).', { faults: 'thread' }),
  delayTsc: op(0x23, [['cycles', 'u64']], null, 'Busy-wait until the TSC has advanced by cycles.'),
  sti: op(0x24, [], null, 'Enable interrupts.'),
  cli: op(0x25, [], null, 'Disable interrupts.'),
  waitIrq: op(
    0x26,
    [['vector', 'u8'], ['count', 'u32'], ['timeoutCycles', 'u64']],
    [['seen', 'u32'], ['pad', 'u32'], ['tscStart', 'u64'], ['tscEnd', 'u64']],
    'With interrupts enabled, wait until this vCPU has taken count more interrupts of vector (HLT between them) ' +
      'or the TSC timeout passes. Interrupt timestamps land in the per-vCPU interrupt log.',
    { faults: 'thread' },
  ),
  irqCounts: op(0x27, [], [['total', 'u64'], ['logged', 'u64']], 'Snapshot of this vCPU interrupt totals (the per-vector counts live in the interrupt log area).', { faults: 'thread' }),

  exec: op(
    0x28,
    [['lo', 'u64'], ['hi', 'u64']],
    [['rax', 'u64'], ['rdx', 'u64'], ['rflags', 'u64'], ['codeBase', 'u64'], ['faultRip', 'u64'], ['cr2', 'u64'], ['exceptionsBefore', 'u64'], ['exceptionsAfter', 'u64']],
    'Call 16 bytes of x86-64 code (lo then hi, little-endian; pad with NOPs), followed by RET, under a catch. ' +
      'RAX and RDX start as the canary; the code may change RAX, RCX, RDX, RSI, RDI, R8-R11 and flags. ' +
      'Records RAX, RDX and RFLAGS afterwards (in ring 3 under a hypervisor that runs user mode natively, ' +
      'RFLAGS.IF/IOPL are what the host CPU holds, not the guest view); where the 16 bytes lay (codeBase); ' +
      'after a fault, the RIP in its frame (faultRip) and CR2 as the handler read them (0 when nothing faulted); ' +
      "and the vCPU's count of exceptions its handlers caught before and after the op (a fault resumes with RFLAGS.TF clear).",
  ),

  execStack: op(
    0x29,
    [['lo', 'u64'], ['hi', 'u64'], ['stack', 'u8']],
    [['rax', 'u64'], ['rdx', 'u64'], ['rflags', 'u64'], ['codeBase', 'u64'], ['faultRip', 'u64'], ['cr2', 'u64'], ['exceptionsBefore', 'u64'], ['exceptionsAfter', 'u64']],
    'exec (the same code, records and catch) with a stack set-up for its duration: stack bit 0, RSP0 of this vCPU\'s ' +
      'TSS = LAYOUT.notPresentStack (canonical, not mapped), so a delivery from CPL 3 raises #PF pushing its frame; ' +
      'bit 1, the #PF gate (vector 14) on IST 1 (the good stack #DF, NMI and #MC use), so that #PF enters its handler. ' +
      'Both are undone when the code returns or a fault resumes the op. One thread at a time (the IDT is shared).',
    { allowed: { stack: [0, 1, 2, 3] } },
  ),

  apicRead: op(
    0x30,
    [['reg', 'u16']],
    [['value', 'u64']],
    'Read local APIC register reg (an xAPIC offset: 0x20 ID, 0x30 version, 0x390 timer current count, ...) in the mode ' +
      "the vCPU's APIC is in: xAPIC, a 32-bit MMIO read at 0xfee00000+reg (reg 0x300, the ICR, also reads 0x310 into bits 63:32); " +
      'x2APIC, RDMSR 0x800+reg/16 (the whole 64-bit ICR). A #GP (a register x2APIC does not have) is recorded in the header, value 0.',
    { guestCheck: 'reg is 16-byte aligned and below 0x1000' },
  ),
  apicWrite: op(
    0x31,
    [['reg', 'u16'], ['value', 'u64']],
    [['tscBefore', 'u64'], ['tscAfter', 'u64']],
    'Write local APIC register reg in the current mode: xAPIC, a 32-bit MMIO write of the low half (for the ICR, 0x310 ' +
      'gets bits 63:32 first, then 0x300 the low half, which sends); x2APIC, WRMSR 0x800+reg/16 with all 64 bits (a #GP ' +
      'for reserved registers or bits is recorded). Records the TSC just before and just after the write (LFENCE-serialised; ' +
      'tscAfter stays 0 when the write faulted), so timer properties can bound when a count started.',
    { guestCheck: 'reg is 16-byte aligned and below 0x1000' },
  ),

  wrmsrAt: op(
    0x32,
    [['msr', 'u32'], ['relative', 'u8'], ['value', 'u64']],
    [['tscBefore', 'u64'], ['written', 'u64'], ['tscAfter', 'u64']],
    'WRMSR msr with value or, relative 1, with the TSC read just before it plus value (mod 2^64: a negative offset is ' +
      'its two\'s complement), so a TSC deadline can be written in the past, at now or ahead of it. Records the TSC ' +
      'before, the value written and the TSC after (LFENCE-serialised; tscAfter 0 when the write raised #GP, which is ' +
      'recorded in the header).',
    { allowed: { relative: [0, 1] } },
  ),
  isrAction: op(
    0x33,
    [['vector', 'u8'], ['action', 'u8']],
    null,
    "What this vCPU's interrupt handler does for vector besides logging it and EOI: action 0 nothing more, 1 read RTC " +
      'register C (OUT 0x70 0x0C, IN 0x71) before the EOI, which acknowledges the RTC and lowers IRQ8.',
    { allowed: { action: [0, 1] } },
  ),
  kvmclockRead: op(
    0x34,
    [['addr', 'u64']],
    [
      ['tsc', 'u64'], ['ns', 'u64'], ['tscTimestamp', 'u64'], ['systemTime', 'u64'],
      ['mul', 'u32'], ['version', 'u32'], ['versionAfter', 'u32'], ['shiftFlags', 'u32'],
    ],
    'Read the pvclock_vcpu_time_info at addr the way Linux does (msr.rst): version, the fields, RDTSC, version again; ' +
      'retry (at most 1000 times) while the version is odd or changed. Records the TSC used, the time the ABI formula ' +
      'gives (u64 arithmetic, 96-bit product), the fields as read, both versions, and tsc_shift (bits 7:0) and flags ' +
      '(bits 15:8).',
    { faults: 'thread' },
  ),
  rtcSecondsEdge: op(
    0x37,
    [['timeoutCycles', 'u64']],
    [['tscBefore', 'u64'], ['tscAfter', 'u64'], ['seconds', 'u32'], ['minutes', 'u32'], ['hours', 'u32'], ['regB', 'u32'], ['polls', 'u32'], ['timedOut', 'u32']],
    'Poll the RTC seconds register (CMOS index 0; each OUT 0x70 / IN 0x71 pair with interrupts off, as the ISR may select ' +
      'register C) until it changes, at most timeoutCycles of TSC. The change happened after tscBefore (the TSC before the ' +
      'last read that still showed the old value) and before tscAfter (the TSC after the first read showing the new one). ' +
      'Records both, the new seconds, the minutes, hours and register B read just after, and the reads made. When it did ' +
      'not change for timeoutCycles from the first read: timedOut 1, and tscBefore..tscAfter is a span it held ' +
      '(after the first read, before the last).',
  ),

  loopBegin: op(0x40, [['count', 'u32']], null, 'Repeat the ops up to the matching loopEnd count times (0: forever). Nests up to 8 deep.', { control: true }),
  loopEnd: op(0x41, [], null, 'End of a loop body.', { control: true }),
  barrier: op(0x42, [['id', 'u32']], null, 'Wait until every thread of the program has reached a barrier with this id.'),
  mark: op(0x43, [['value', 'u64']], null, "Publish value as this thread's marker in the mailbox (progress the host can watch)."),
  dirtyPages: op(
    0x44,
    [['base', 'u64'], ['pages', 'u32'], ['stride', 'u32']],
    null,
    'Increment the first byte of each of pages pages starting at base, stride bytes apart (a dirtying pass).',
  ),
  dirtyWrite: op(
    0x45,
    [['base', 'u64'], ['pages', 'u32'], ['stride', 'u32'], ['writer', 'u8'], ['step', 'u32']],
    null,
    'Add 1 to the u64 at base + j*stride for j below pages, visiting j = (i*step) mod pages for i = 0, 1, ... (step ' +
      'coprime with pages: every counter once per pass; 1: in address order, more: scattered over the region), each ' +
      'with the store instruction writer names: 0 MOV, ' +
      '1 LOCK ADD, 2 MOVNTI (non-temporal; SFENCE after the pass), 3 REP STOSQ, 4 REP MOVSQ (from a stack copy), ' +
      '5 VMOVDQU ymm (32 bytes from the counter read, 1 added to the low qword, all 32 stored back), 6 the same ' +
      'with VMOVDQU64 zmm (64 bytes); 5 and 6 need PROGRAM_FLAGS.avxState and the vCPU feature (else #UD) and keep ' +
      "YMM0/ZMM0. A migration's dirty tracking must see every kind; an address may straddle two pages (not with LOCK: a split lock).",
    { allowed: { writer: [0, 1, 2, 3, 4, 5, 6] } },
  ),
  clockWatch: op(
    0x46,
    [['slot', 'u64'], ['kind', 'u8'], ['clock', 'u64']],
    null,
    'Read a clock (kind 0: RDTSC; 1: kvmclock, the pvclock area at clock, read as kvmclockRead does; 2: the steal ' +
      'time area at clock, its steal ns read while version is even and unchanged, as Linux does) and update the ' +
      'watch at slot (u64s: last value, times it went back, the largest step back, samples). The watch lives in guest ' +
      'RAM, so across a migration it compares the destination\'s clock with the source\'s last reading.',
    { allowed: { kind: [0, 1, 2] } },
  ),
  fillXmm: op(
    0x47,
    [['seed', 'u64']],
    null,
    'Load XMM0-15 with a pattern from seed: XMMi = (~(seed + i) << 64) | (seed + i). The guest\'s own code never ' +
      'touches vector registers (-mgeneral-regs-only), so they keep it: vector state a migration must carry.',
  ),

  svmRun: op(
    0x50,
    [['lo', 'u64'], ['hi', 'u64'], ['eventInj', 'u64'], ['exceptions', 'u32'], ['idtNotPresent', 'u32'], ['istVectors', 'u32'], ['idtLimit', 'u16'], ['flags', 'u8'], ['l2Cpl', 'u8'], ['stack', 'u8']],
    [
      ['exitCode', 'u64'], ['exitInfo1', 'u64'], ['exitInfo2', 'u64'], ['exitIntInfo', 'u64'], ['exitRip', 'u64'], ['codeBase', 'u64'],
      ['entries', 'u32'], ['vector', 'u32'], ['errorCode', 'u32'], ['hasErrorCode', 'u32'], ['handlerRip', 'u64'], ['handlerCr2', 'u64'],
    ],
    'Act as an SVM hypervisor (L1) for one VMRUN: run an L2 guest at CPL l2Cpl (0 or 3) in 64-bit mode on the same page ' +
      'tables (and, flags bit 2, with nested paging on, N_CR3 = the guest\'s own identity map), whose code is the 16 bytes ' +
      'lo, hi followed by VMMCALL, with RFLAGS = 2 (IF = 0), RSP 16-byte aligned on a stack of its own, a TSS of its own ' +
      '(RSP0 and IST1 = L2\'s handler stack; stack bit 0: RSP0 non-canonical, bit 1: IST1 non-canonical, bit 2: TR.limit ' +
      '3, so neither slot can be read; bit 3: RSP0, bit 4: IST1, bit 5: L2\'s own RSP at CPL 0 = LAYOUT.notPresentStack, ' +
      'canonical but not mapped, so pushing a frame there raises #PF) and an IDT of its own: 256 64-bit interrupt gates, DPL 0, IST 1 for the vectors ' +
      '0-31 set in istVectors and 0 otherwise, limit idtLimit, P = 0 for the vectors 0-31 set in idtNotPresent. Each ' +
      'gate leads to an L2 handler that logs its entry (vector, the error code if the frame has one, the RIP in the frame, ' +
      'CR2) and executes VMMCALL. The VMCB intercepts VMRUN and VMMCALL always, the exceptions set in `exceptions`, ' +
      'SHUTDOWN when flags bit 0 is set and INTn when bit 1 is; EVENTINJ = eventInj. Records EXITCODE, EXITINFO1, ' +
      "EXITINFO2, EXITINTINFO and L2's RIP from the VMCB after the #VMEXIT, where the code lay, and the L2 handler " +
      'entries (at most one: the handler exits). An L1 fault (no SVM: the EFER.SVME write raises #GP) is recorded in the ' +
      'header. Ring 0 and vCPU 0 only.',
    { allowed: { flags: [0, 1, 2, 3, 4, 5, 6, 7], l2Cpl: [0, 3], stack: Array.from({ length: 64 }, (_, i) => i) }, guestCheck: 'a ring-0 thread on vCPU 0' },
  ),
} as const satisfies Record<string, OpDef>;

export type OpName = keyof typeof OPS;

type FieldValue<T extends FieldType> = T extends 'u64' ? bigint : number;
type OperandsOf<F extends readonly Field[]> = { [K in F[number] as K[0]]: FieldValue<K[1]> };

/** One IR op: its name plus its operands, typed from the table (u64 operands are bigint). */
export type Op = { [N in OpName]: { op: N } & OperandsOf<(typeof OPS)[N]['operands']> }[OpName];

/** The op of a given name, typed from the table. */
export type OpOf<N extends OpName> = Extract<Op, { op: N }>;

/** Ops that append a record to their vCPU's observation stream. */
export type RecordingOpName = { [N in OpName]: (typeof OPS)[N]['record'] extends true ? N : never }[OpName];

type ResultFields<F extends readonly Field[]> = { readonly [K in F[number] as K[0]]: bigint };

/** The decoded record of one op of kind N: its result fields typed from the table, and the op itself. */
export interface RecordOf<N extends RecordingOpName> {
  /** Position in the thread's dynamic execution order (loops unrolled). */
  readonly index: number;
  /** Position of the op in its thread's op list. */
  readonly opIndex: number;
  /** The op that produced the record. */
  readonly op: OpOf<N>;
  readonly faultVector: number | null;
  readonly errorCode: number;
  readonly flags: number;
  readonly fields: ResultFields<(typeof OPS)[N]['result']>;
  /** String ops: the destination buffer with its guards. */
  readonly buffer?: Uint8Array;
}

/** The decoded record of any op. */
export type OpRecord = { [N in RecordingOpName]: RecordOf<N> }[RecordingOpName];

/** Narrow a record to the op kind that produced it. */
export function isRecordOf<N extends RecordingOpName>(r: OpRecord, name: N): r is Extract<OpRecord, RecordOf<N>> {
  return r.op.op === name;
}

/** The records of one op kind (in order); the others are dropped. */
export function recordsOf<N extends RecordingOpName>(records: readonly OpRecord[], name: N): RecordOf<N>[] {
  return records.filter((r) => r.op.op === name) as unknown as RecordOf<N>[];
}

export function fieldsBytes(fields: readonly Field[]): number {
  return fields.reduce((n, [, t]) => n + FIELD_BYTES[t], 0);
}

export function operandBytes(name: OpName): number {
  return 1 + fieldsBytes(OPS[name].operands);
}

function roundUp8(n: number): number {
  return (n + 7) & ~7;
}

/** Size of a string op's buffer (guards included, 8-byte rounded). */
export function stringBufferBytes(width: number, count: number): number {
  return roundUp8(2 * STRING_GUARD_BYTES + width * count);
}

/** Record bytes an op appends to the observation stream (0 when it records nothing). */
export function recordBytes(o: Op): number {
  const def: OpDef = OPS[o.op];
  if (!def.record) return 0;
  let n = RECORD_HEADER_BYTES + roundUp8(fieldsBytes(def.result));
  if (def.stringBuffer) {
    const s = o as unknown as { width: number; count: number };
    n += stringBufferBytes(s.width, s.count);
  }
  return n;
}

/** Stable text form of the table; its hash is OPS_HASH, shared by encoder and guest. */
export function opsTableText(): string {
  return Object.entries(OPS)
    .map(([name, d]) => {
      const def: OpDef = d;
      const f = (fs: readonly Field[]) => fs.map(([n, t]) => `${n}:${t}`).join(',');
      // How the guest runs the op is part of the table too: a guest built with other operand checks
      // or pre-fills would record something else for the same program.
      const allowed = Object.entries(def.allowed ?? {}).map(([n, vs]) => `${n}=${vs.join('|')}`).join(',');
      const guest = [allowed, def.prefill ?? '', def.faults ?? '', def.guestCheck ? 'c' : '', def.control ? 'k' : ''].join('/');
      return `${name}=${def.code};${f(def.operands)};${def.record ? f(def.result) : '-'};${def.stringBuffer ? 's' : ''};${guest}`;
    })
    .join('\n');
}

/** FNV-1a 32-bit: tiny and dependency-free; only used to detect a stale guest or encoder. */
export function fnv1a32(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i) & 0xff;
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h >>> 0;
}

export const OPS_HASH = fnv1a32(opsTableText());

export const OP_BY_CODE: ReadonlyMap<number, OpName> = new Map(
  (Object.keys(OPS) as OpName[]).map((n) => [OPS[n].code, n]),
);
