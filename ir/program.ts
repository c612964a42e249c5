/**
 * The workload IR: a program is one op list ("thread") per vCPU plus the run-wide knobs the guest
 * needs. Generators build it, the encoder turns it into guest bytecode, models read it to predict.
 */
import type { Op } from './ops.js';
import type { Check } from './checks.js';

export interface Program {
  /** threads[i] runs on vCPU i (APIC ID i). */
  readonly threads: readonly (readonly Op[])[];
  /** Value the guest puts in registers and buffers before an op, to see what the op changed. */
  readonly canary: bigint;
  /**
   * Run the threads in ring 0 instead of ring 3 (harness/guest/abi.ts PROGRAM_FLAGS.ring0 says why
   * ring 3 is the default). Instructions that only misbehave in supervisor mode need it.
   */
  readonly ring0?: boolean;
  /**
   * The guest waits for the host's answer before it exits (abi.ts PROGRAM_FLAGS.holdExit). Default
   * true: the harness always answers; false for a program run by plain QEMU with no harness.
   */
  readonly holdExit?: boolean;
  /** Set CR0.AM on every vCPU (abi.ts PROGRAM_FLAGS.alignmentCheck): CPL-3 misaligned accesses with RFLAGS.AC raise #AC. */
  readonly alignmentCheck?: boolean;
  /** Set CR0.TS on every vCPU (abi.ts PROGRAM_FLAGS.taskSwitched): the first x87/SSE instruction raises #NM. */
  readonly taskSwitched?: boolean;
  /** Every vCPU turns AVX state on where CPUID has it (abi.ts PROGRAM_FLAGS.avxState): CR4.OSXSAVE, XCR0. */
  readonly avxState?: boolean;
  /** Every vCPU enables KVM steal time and logs it with each interrupt (abi.ts PROGRAM_FLAGS.stealTime). */
  readonly stealTime?: boolean;
  /** Switch every vCPU to x2APIC mode before its thread starts. */
  readonly x2apic?: boolean;
  /** Identity-map guest-physical memory up to this address (default 4 GiB). */
  readonly mapLimit?: bigint;
  /** Observation bytes to reserve per thread for loops that run forever. */
  readonly openLoopRecordBytes?: number;
  /**
   * Self-checks the guest evaluates after every thread has ended (ir/checks.ts), one TAP line each
   * on COM1; then it exits with EXIT_VALUE.checksFailed if any failed. A repro program carries
   * them (kvmprop repro); the harness's own programs have none.
   */
  readonly checks?: readonly Check[];
}

/**
 * The canary: distinctive, not a valid pointer or small number, different in every byte and in its
 * two halves, and deliberately different from the host leak pattern (models/hostPattern.ts).
 */
export const DEFAULT_CANARY = 0xc3a5_96e1_5a7d_e8b4n;
