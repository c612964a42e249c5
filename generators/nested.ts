/**
 * Single-level exception cases: a short sequence (1–6) of faulting instructions from the nested
 * model's FAULTING_INSTRUCTIONS (models/nested/exceptions.ts), each one `exec` op of at most 16
 * bytes, run at CPL 3 (the default: under kvm_pvm that code runs natively and every exception is
 * taken by the host and re-injected) or CPL 0 (Program.ring0). The guest's own IDT is the set-up:
 * 256 present 64-bit interrupt gates, DPL 0, IST 1 for vectors 2, 8 and 18 (harness/guest/src/
 * main.c setup_idt), so the model sees goodIdt().
 *
 * A case is plain data: the CPL and, per step, the instruction's name and the model's inputs (the
 * address it touches, INT n's vector). `encodeStep` turns a step into its bytes and says where in
 * them the raising instruction starts and ends, for the RIP the handler must see.
 *
 * What the guest runtime cannot do, so the generator leaves out:
 *  - hlt-unprivileged: main.c emulate_for_user takes a CPL-3 HLT's #GP and performs the HLT (with
 *    IF = 0, forever); RDMSR/WRMSR/CLI/STI at CPL 3 likewise, so no #GP reaches the op's catch;
 *  - misaligned-load runs with RFLAGS.AC set by its own code (the interpreter clears it after the
 *    op); the case's alignmentCheck sets CR0.AM, so #AC arises at CPL 3 exactly when it is on
 *    (a hypervisor that runs guest user mode on the host's CR0, where Linux sets AM, must not
 *    raise it when the guest's CR0.AM is clear);
 *  - (fwait-unmasked-x87 is in: the guest sets CR0.NE (main.c enable_sse), so the pending x87
 *    exception is #MF at the FWAIT, not external FERR#; the step starts with FNINIT, and an op
 *    that took #MF runs FNINIT again in its catch, so no x87 state crosses steps); x87-with-ts,
 *    fwait-unmasked-x87 and the SSE step run with CR0.TS as the case's taskSwitched says (then #NM);
 *  - store-read-only, fetch-no-execute, load-reserved-bit, user-load-supervisor-page: every page is
 *    a present, writable, executable user page (entry.S build_page_tables: 2 MiB pages, 0x87);
 *    these need a guest op that edits a paging entry;
 *  - bound-64: 62h starts an EVEX prefix on this CPU, the same #UD as UD2 by another decoder path,
 *    whose length the model does not know;
 *  - INT n at CPL 0 for a vector whose exception pushes an error code (INT n pushes none, and the
 *    guest's stub for that vector expects one), for NMI (2, the guest's NMI path) and for 32–255
 *    (the guest's interrupt path, which does not catch): only the other vectors below 32;
 *  - #TS from an instruction: in IA-32e mode there is no task switch (SDM Vol. 3A §8.7 "Task
 *    switching is not supported in IA-32e mode"; a task gate in the IDT or a far CALL/JMP to a TSS
 *    is #GP, IRET with NT = 1 is #GP), so #TS comes only from reading a stack pointer out of the
 *    TSS beyond TR.limit: on delivery (RSP0/IST, generators/nestedSvm.ts limitCut) and on a far
 *    CALL through a call gate to a more privileged code segment (SDM Vol. 2A CALL, IA-32e
 *    "CALL-GATE-MORE-PRIVILEGE": #TS(TSS selector) when the RSPn slot is beyond the limit), which
 *    needs a call gate and a return path in the guest and is not generated;
 *  - descriptor-table set-ups that make delivery fault: the guest has one IDT. What it can do is
 *    the stack a delivery pushes its frame onto (a step's `stack`, the execStack op): RSP0 at a
 *    not-present page (CPL 3), or the step's own code moving RSP there first (CPL 0), so the push
 *    raises #PF during delivery; that #PF goes on the same stack (#PF then #PF: #DF, which runs on
 *    the guest's good IST 1) unless the step also puts the #PF gate on IST 1 (then #PF enters its
 *    handler, CR2 = the push). Not a bad IST 1: the #DF would shut the VM down, which a single
 *    level cannot report per step. At CPL 0 only ud2, into-64 and div-by-zero take a stack: they
 *    always raise, in at most 6 bytes after the 10 of MOVABS RSP, and never touch the stack first.
 */
import fc from 'fast-check';
import type { Op } from '../ir/ops.js';
import { LAYOUT } from '../harness/guest/abi.js';
import type { FaultingInstructionName } from '../models/nested/exceptions.js';
import { vectorInfo } from '../models/nested/classes.js';

export type Cpl = 0 | 3;

/** The instructions the guest can execute for the model, from FAULTING_INSTRUCTIONS. */
export const SINGLE_LEVEL_INSTRUCTIONS = [
  'div-by-zero',
  'ud2',
  'into-64',
  'int3',
  'int-n',
  'single-step',
  'sse-unmasked',
  'load-non-canonical',
  'stack-load-non-canonical',
  'mov-from-cr-unprivileged',
  'load-unmapped',
  'store-unmapped',
  'misaligned-load',
  'x87-with-ts',
  'fwait-unmasked-x87',
] as const satisfies readonly FaultingInstructionName[];

export type SingleLevelInstruction = (typeof SINGLE_LEVEL_INSTRUCTIONS)[number];

/**
 * Where a single-level step's delivery pushes its frame (LAYOUT.notPresentStack: canonical, not
 * mapped), and whether the #PF that raises enters on IST 1 ('-pf-ist'):
 *  - 'rsp0', 'rsp0-pf-ist': CPL 3; the TSS's RSP0 there while the step runs (execStack bit 0);
 *  - 'rsp', 'rsp-pf-ist': CPL 0; the step's code loads RSP with it first (an IST-0 gate at CPL 0
 *    pushes onto the current stack); the op's catch puts RSP back.
 */
export type SingleLevelStack = 'rsp0' | 'rsp0-pf-ist' | 'rsp' | 'rsp-pf-ist';

export const CPL0_STACK_INSTRUCTIONS = ['ud2', 'into-64', 'div-by-zero'] as const satisfies readonly SingleLevelInstruction[];

/** execStack's stack operand for a step's stack (bit 0 RSP0, bit 1 the #PF gate on IST 1). */
export const STACK_BITS: Readonly<Record<SingleLevelStack, number>> = Object.freeze({ rsp0: 1, 'rsp0-pf-ist': 3, rsp: 0, 'rsp-pf-ist': 2 });

export interface ExceptionStep {
  readonly instruction: SingleLevelInstruction;
  /** Single level only: the stack its delivery pushes onto (default: the guest's good stacks). */
  readonly stack?: SingleLevelStack;
  /** load/store: the address touched (CR2 of its #PF); stack-load-non-canonical: the offset added to RSP. */
  readonly address?: bigint;
  /** int-n: the immediate. */
  readonly intVector?: number;
}

export interface SingleLevelCase {
  readonly cpl: Cpl;
  /** CR0.AM (Program.alignmentCheck): with RFLAGS.AC, a CPL-3 misaligned access raises #AC. Default off. */
  readonly alignmentCheck?: boolean;
  /** CR0.TS (Program.taskSwitched): the first x87/SSE instruction raises #NM. Default off. */
  readonly taskSwitched?: boolean;
  readonly steps: readonly ExceptionStep[];
}

/** The bytes of a step and where the instruction that raises starts and ends in them. */
export interface EncodedStep {
  readonly bytes: readonly number[];
  readonly at: number;
  readonly after: number;
}

const le64 = (v: bigint): number[] => Array.from({ length: 8 }, (_, i) => Number((v >> BigInt(8 * i)) & 0xffn));

function addressOf(s: ExceptionStep): bigint {
  if (s.address === undefined) throw new Error(`${s.instruction}: needs an address`);
  return s.address;
}

/** MOVABS RSP, LAYOUT.notPresentStack: what a CPL-0 step with a stack runs first. */
const MOV_RSP_NOT_PRESENT: readonly number[] = [0x48, 0xbc, ...le64(BigInt(LAYOUT.notPresentStack))];

/** `taskSwitched`: CR0.TS is set, so an SSE step raises #NM at its first SSE instruction. */
export function encodeStep(s: ExceptionStep, taskSwitched = false): EncodedStep {
  const plain = encodeInstruction(s, taskSwitched);
  if (s.stack !== 'rsp' && s.stack !== 'rsp-pf-ist') return plain;
  const n = MOV_RSP_NOT_PRESENT.length;
  return { bytes: [...MOV_RSP_NOT_PRESENT, ...plain.bytes], at: plain.at + n, after: plain.after + n };
}

function encodeInstruction(s: ExceptionStep, taskSwitched: boolean): EncodedStep {
  switch (s.instruction) {
    case 'div-by-zero': // xor ecx, ecx; div rcx
      return { bytes: [0x31, 0xc9, 0x48, 0xf7, 0xf1], at: 2, after: 5 };
    case 'ud2':
      return { bytes: [0x0f, 0x0b], at: 0, after: 2 };
    case 'into-64':
      return { bytes: [0xce], at: 0, after: 1 };
    case 'int3':
      return { bytes: [0xcc], at: 0, after: 1 };
    case 'int-n':
      if (s.intVector === undefined) throw new Error('int-n: needs intVector');
      return { bytes: [0xcd, s.intVector & 0xff], at: 0, after: 2 };
    case 'single-step': // pushfq; or qword [rsp], 0x100 (TF); popfq; nop: the trap follows the NOP
      return { bytes: [0x9c, 0x48, 0x81, 0x0c, 0x24, 0x00, 0x01, 0x00, 0x00, 0x9d, 0x90], at: 10, after: 11 };
    case 'sse-unmasked': // push 0x1d00 (MXCSR: IM, ZM unmasked); ldmxcsr [rsp]; pop rax; xorps xmm0, xmm0; divps xmm0, xmm0 (0/0: #I)
      return { bytes: [0x68, 0x00, 0x1d, 0x00, 0x00, 0x0f, 0xae, 0x14, 0x24, 0x58, 0x0f, 0x57, 0xc0, 0x0f, 0x5e, 0xc0], ...(taskSwitched ? { at: 5, after: 9 } : { at: 13, after: 16 }) };
    case 'load-non-canonical':
    case 'load-unmapped': // movabs rax, address; mov rax, [rax]
      return { bytes: [0x48, 0xb8, ...le64(addressOf(s)), 0x48, 0x8b, 0x00], at: 10, after: 13 };
    case 'store-unmapped': // movabs rax, address; mov [rax], rax
      return { bytes: [0x48, 0xb8, ...le64(addressOf(s)), 0x48, 0x89, 0x00], at: 10, after: 13 };
    case 'stack-load-non-canonical': // movabs rcx, offset; mov rax, [rsp + rcx] (SS: the base is RSP)
      return { bytes: [0x48, 0xb9, ...le64(addressOf(s)), 0x48, 0x8b, 0x04, 0x0c], at: 10, after: 14 };
    case 'mov-from-cr-unprivileged': // mov rax, cr0
      return { bytes: [0x0f, 0x20, 0xc0], at: 0, after: 3 };
    case 'x87-with-ts': // fld1; fstp st(0) (the x87 stack stays balanced when nothing faults)
      return { bytes: [0xd9, 0xe8, 0xdd, 0xd8], at: 0, after: 2 };
    // fninit; push 0x37a (FCW: IM, ZM unmasked); fldcw [rsp]; pop rax; fldz; fdiv st(0), st(0) (0/0: IE pending); fwait (#MF)
    case 'fwait-unmasked-x87':
      return { bytes: [0xdb, 0xe3, 0x68, 0x7a, 0x03, 0x00, 0x00, 0xd9, 0x2c, 0x24, 0x58, 0xd9, 0xee, 0xd8, 0xf0, 0x9b], ...(taskSwitched ? { at: 0, after: 2 } : { at: 15, after: 16 }) };
    case 'misaligned-load': // pushfq; or dword [rsp], 0x40000 (AC); popfq; mov rax, [rsp - 7] (RSP is 8-aligned: 1 off)
      return { bytes: [0x9c, 0x81, 0x0c, 0x24, 0x00, 0x00, 0x04, 0x00, 0x9d, 0x48, 0x8b, 0x44, 0x24, 0xf9], at: 9, after: 14 };
  }
}

/** The exec op running `bytes`, padded with NOPs to 16. */
export function execOp(bytes: readonly number[]): Op {
  if (bytes.length > 16) throw new RangeError(`exec takes at most 16 bytes, got ${bytes.length}`);
  const padded = [...bytes, ...new Array<number>(16 - bytes.length).fill(0x90)];
  const le = (b: readonly number[]) => b.reduce((acc, v, i) => acc | (BigInt(v) << BigInt(8 * i)), 0n);
  return { op: 'exec', lo: le(padded.slice(0, 8)), hi: le(padded.slice(8, 16)) };
}

export function singleLevelOps(c: SingleLevelCase): Op[] {
  return c.steps.map((s) => {
    const exec = execOp(encodeStep(s, c.taskSwitched).bytes) as Extract<Op, { op: 'exec' }>;
    return s.stack === undefined ? exec : { op: 'execStack', lo: exec.lo, hi: exec.hi, stack: STACK_BITS[s.stack] };
  });
}

// ---------------------------------------------------------------------------------------------
// Addresses

const GIB = 1n << 30n;
/** What the guest identity-maps by default (entry.S: 0–4 GiB; map_high adds nothing below Program.mapLimit = 4 GiB). */
export const GUEST_MAP_LIMIT = 4n * GIB;
const LOWER_HALF_END = 1n << 47n;
const UPPER_HALF_START = (1n << 64n) - (1n << 47n);

export const isCanonical = (a: bigint): boolean => a < LOWER_HALF_END || a >= UPPER_HALF_START;

const aligned8 = (lo: bigint, hi: bigint) => fc.bigInt({ min: lo / 8n, max: hi / 8n - 1n }).map((q) => q * 8n);

/**
 * Canonical addresses with no translation: above the 4 GiB identity map in the first PML4 slot
 * (PDPT entries 4–511 are zero), in PML4 slots 1–255, and in the upper half (slots 256–511). Each
 * 8-byte aligned, so an 8-byte access stays in one page.
 */
export const UNMAPPED_REGIONS = {
  'above-map': aligned8(GUEST_MAP_LIMIT, 512n * GIB),
  'lower-half': aligned8(512n * GIB, LOWER_HALF_END),
  'upper-half': aligned8(UPPER_HALF_START, 1n << 64n),
} as const;

export type UnmappedRegion = keyof typeof UNMAPPED_REGIONS;

export const unmappedAddressArb = (regions: readonly UnmappedRegion[] = ['above-map', 'lower-half', 'upper-half']): fc.Arbitrary<bigint> =>
  fc.oneof(...regions.map((r) => UNMAPPED_REGIONS[r]));

/** Non-canonical addresses, 8-byte aligned, the whole access non-canonical. */
export const nonCanonicalAddressArb: fc.Arbitrary<bigint> = aligned8(LOWER_HALF_END, UPPER_HALF_START);

/**
 * Offsets that make RSP + offset non-canonical for any RSP the guest uses (below 4 GiB): 2^63 to
 * 2^63 + 2^62, so the sum lies in [2^63, 2^63 + 2^62 + 4 GiB).
 */
export const stackOffsetArb: fc.Arbitrary<bigint> = aligned8(1n << 63n, (1n << 63n) + (1n << 62n));

/** INT n vectors a CPL-0 thread may use (see the module doc). */
export const CPL0_INT_VECTORS: readonly number[] = Array.from({ length: 32 }, (_, v) => v).filter((v) => v !== 2 && !vectorInfo(v).pushesErrorCode);

// ---------------------------------------------------------------------------------------------
// The arbitrary

/** A step of one instruction, with the operands it needs (INT n: every vector at CPL 3, CPL0_INT_VECTORS at CPL 0). */
export function instructionArb(instruction: SingleLevelInstruction, cpl: Cpl, regions?: readonly UnmappedRegion[]): fc.Arbitrary<ExceptionStep> {
  switch (instruction) {
    case 'int-n':
      return (cpl === 3 ? fc.integer({ min: 0, max: 255 }) : fc.constantFrom(...CPL0_INT_VECTORS)).map((intVector) => ({ instruction, intVector }));
    case 'load-non-canonical':
      return nonCanonicalAddressArb.map((address) => ({ instruction, address }));
    case 'stack-load-non-canonical':
      return stackOffsetArb.map((address) => ({ instruction, address }));
    case 'load-unmapped':
    case 'store-unmapped':
      return unmappedAddressArb(regions).map((address) => ({ instruction, address }));
    default:
      return fc.constant({ instruction });
  }
}

export interface SingleLevelArbOptions {
  readonly cpls?: readonly Cpl[];
  /** The instructions to draw from (default: all of SINGLE_LEVEL_INSTRUCTIONS). */
  readonly instructions?: readonly SingleLevelInstruction[];
  readonly maxSteps?: number;
  /** Where unmapped addresses come from (default: all three regions). */
  readonly unmappedRegions?: readonly UnmappedRegion[];
  /** Whether steps may take a not-present stack (default: yes). */
  readonly stacks?: boolean;
}

/** A step, then (sometimes) a not-present stack its delivery pushes onto, where the CPL allows one. */
function withStackArb(step: fc.Arbitrary<ExceptionStep>, cpl: Cpl): fc.Arbitrary<ExceptionStep> {
  return step.chain((s) => {
    if (cpl === 0 && !(CPL0_STACK_INSTRUCTIONS as readonly string[]).includes(s.instruction)) return fc.constant(s);
    const stacks: readonly SingleLevelStack[] = cpl === 3 ? ['rsp0', 'rsp0-pf-ist'] : ['rsp', 'rsp-pf-ist'];
    return fc.oneof({ weight: 4, arbitrary: fc.constant(s) }, { weight: 1, arbitrary: fc.constantFrom(...stacks).map((stack) => ({ ...s, stack })) });
  });
}

/** A CPL (3 first: it shrinks towards CPL 3), then 1–6 steps, each an instruction with its operands. */
export function singleLevelCaseArb(opts: SingleLevelArbOptions = {}): fc.Arbitrary<SingleLevelCase> {
  const cpls = opts.cpls ?? [3, 0];
  const instructions = opts.instructions ?? SINGLE_LEVEL_INSTRUCTIONS;
  return fc.constantFrom(...cpls).chain((cpl) =>
    fc.record({
      cpl: fc.constant(cpl),
      alignmentCheck: fc.boolean(),
      taskSwitched: fc.boolean(),
      steps: fc.array(
        fc.oneof(...instructions.map((i) => (opts.stacks === false ? instructionArb(i, cpl, opts.unmappedRegions) : withStackArb(instructionArb(i, cpl, opts.unmappedRegions), cpl)))),
        { minLength: 1, maxLength: opts.maxSteps ?? 6 },
      ),
    }),
  );
}

/** One fixed case per vector the family covers, at the CPL that raises it (the vector in the key). */
export const SINGLE_LEVEL_EXAMPLES: Readonly<Record<string, SingleLevelCase>> = Object.freeze({
  '#DE': { cpl: 3, steps: [{ instruction: 'div-by-zero' }] },
  '#DB': { cpl: 3, steps: [{ instruction: 'single-step' }] },
  '#BP': { cpl: 0, steps: [{ instruction: 'int3' }] },
  '#UD': { cpl: 3, steps: [{ instruction: 'ud2' }, { instruction: 'into-64' }] },
  '#SS': { cpl: 3, steps: [{ instruction: 'stack-load-non-canonical', address: 1n << 63n }] },
  '#GP': {
    cpl: 3,
    steps: [
      { instruction: 'int3' },
      { instruction: 'int-n', intVector: 0x80 },
      { instruction: 'load-non-canonical', address: 0x8000_0000_0000_0000n },
      { instruction: 'mov-from-cr-unprivileged' },
    ],
  },
  '#PF': {
    cpl: 3,
    steps: [
      { instruction: 'load-unmapped', address: 0x10_0000_0000n },
      { instruction: 'store-unmapped', address: 0x0000_7fff_ffff_f000n },
      { instruction: 'load-unmapped', address: 0xffff_8000_0000_0000n },
    ],
  },
  '#XM': { cpl: 3, steps: [{ instruction: 'sse-unmasked' }] },
  '#MF': { cpl: 3, steps: [{ instruction: 'fwait-unmasked-x87' }, { instruction: 'x87-with-ts' }, { instruction: 'fwait-unmasked-x87' }] },
  '#AC': { cpl: 3, alignmentCheck: true, steps: [{ instruction: 'misaligned-load' }] },
  'no #AC without CR0.AM': { cpl: 3, steps: [{ instruction: 'misaligned-load' }] },
  '#NM': { cpl: 3, taskSwitched: true, steps: [{ instruction: 'x87-with-ts' }, { instruction: 'sse-unmasked' }] },
  'INT n at CPL 0': { cpl: 0, steps: [{ instruction: 'int-n', intVector: 0 }, { instruction: 'int-n', intVector: 31 }, { instruction: 'mov-from-cr-unprivileged' }] },
  '#PF pushing the frame on RSP0, then #DF': {
    cpl: 3,
    steps: [
      { instruction: 'ud2', stack: 'rsp0-pf-ist' },
      { instruction: 'div-by-zero', stack: 'rsp0' },
      { instruction: 'load-unmapped', address: 0x10_0000_0000n, stack: 'rsp0' },
    ],
  },
  '#PF pushing the frame on the CPL-0 stack, then #DF': { cpl: 0, steps: [{ instruction: 'ud2', stack: 'rsp-pf-ist' }, { instruction: 'div-by-zero', stack: 'rsp' }] },
  '#PF at CPL 0': { cpl: 0, steps: [{ instruction: 'load-unmapped', address: 0x10_0000_0000n }, { instruction: 'store-unmapped', address: 0xffff_ffff_ffff_f000n }] },
});
