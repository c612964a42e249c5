/**
 * The x86 exception vectors 0–31 and the double-fault rule: what each vector is, and what happens
 * when a second exception arises while the processor is delivering a first one.
 *
 * Vectors (SDM Vol. 3A §6.3.1 Table 6-1; APM Vol. 2 §8.2 Table 8-1): mnemonic, kind (fault, trap,
 * abort, interrupt) and whether delivery pushes an error code (SDM §6.13; APM §8.4). Vectors the
 * manuals reserve are listed as 'reserved' so that every vector 0–31 has an entry.
 *
 * Classes (SDM §6.15 "Interrupt 8—Double Fault Exception", Table 6-4; APM §8.2.9 and its table of
 * double-fault conditions):
 *  - contributory: #DE 0, #TS 10, #NP 11, #SS 12, #GP 13, and #CP 21 in SDMs with CET (a switch);
 *  - page fault: #PF 14, and #VE 20 on Intel (a switch: vector 20 is reserved on AMD, and KVM's
 *    exception_class() in arch/x86/kvm/x86.c files it as benign);
 *  - benign: every other vector, every INT n and every external interrupt or NMI (SDM Table 6-4
 *    lists "All INT n" and "All INTR" as benign);
 *  - #DF 8 is a class of its own: any fault while delivering it is a triple fault.
 *
 * Combining (SDM Table 6-5; APM §8.2.9), first event × second exception:
 *  - benign × anything → the second is handled serially;
 *  - contributory × contributory → #DF; contributory × page fault → serially;
 *  - page fault × benign → serially; page fault × (contributory or page fault) → #DF;
 *  - #DF × (contributory or page fault) → shutdown, the triple fault (SDM Interrupt 8: "If another
 *    contributory or page fault exception occurs while attempting to call the double-fault handler,
 *    the processor enters shutdown mode"; APM §8.2.9 likewise shuts the processor down). Delivering
 *    an event only ever raises #TS, #NP, #SS, #GP or #PF, so every delivery fault of a #DF is one.
 *
 * #DF always pushes an error code of 0 (SDM Interrupt 8: "The processor always pushes an error code
 * of 0 onto the stack of the double-fault handler"; APM §8.2.9 says the same); the KVM selftest
 * nested_exceptions_test asserts 0 on both vendors (DF_ERROR_CODE). The manuals agree, so this is
 * a rule, not a switch.
 */

/** How an exception reports and resumes (SDM Table 6-1, "Type"). */
export type VectorKind = 'fault' | 'trap' | 'fault-or-trap' | 'abort' | 'interrupt' | 'reserved';

/** The class a vector has for the double-fault rule (SDM Table 6-4). */
export type FaultClass = 'benign' | 'contributory' | 'page-fault' | 'double-fault';

export interface VectorInfo {
  readonly vector: number;
  readonly mnemonic: string;
  readonly name: string;
  readonly kind: VectorKind;
  /** Whether delivering it as an exception pushes an error code (SDM §6.13, Table 6-1 "Error Code"). */
  readonly pushesErrorCode: boolean;
  /** Its class under the default switches; classOfVector applies the switches. */
  readonly defaultClass: FaultClass;
}

const v = (vector: number, mnemonic: string, name: string, kind: VectorKind, pushesErrorCode: boolean, defaultClass: FaultClass): VectorInfo =>
  Object.freeze({ vector, mnemonic, name, kind, pushesErrorCode, defaultClass });

const reserved = (vector: number): VectorInfo => v(vector, `(reserved ${vector})`, 'Reserved', 'reserved', false, 'benign');

/** Vectors 0–31, indexed by vector. */
export const VECTORS: readonly VectorInfo[] = Object.freeze([
  v(0, '#DE', 'Divide Error', 'fault', false, 'contributory'),
  // Instruction breakpoints and general-detect are faults; data breakpoints and single-step are traps.
  v(1, '#DB', 'Debug', 'fault-or-trap', false, 'benign'),
  v(2, 'NMI', 'Non-maskable Interrupt', 'interrupt', false, 'benign'),
  v(3, '#BP', 'Breakpoint', 'trap', false, 'benign'),
  v(4, '#OF', 'Overflow', 'trap', false, 'benign'),
  v(5, '#BR', 'BOUND Range Exceeded', 'fault', false, 'benign'),
  v(6, '#UD', 'Invalid Opcode', 'fault', false, 'benign'),
  v(7, '#NM', 'Device Not Available', 'fault', false, 'benign'),
  v(8, '#DF', 'Double Fault', 'abort', true, 'double-fault'),
  // Coprocessor segment overrun: no processor after the i386 raises it (SDM Interrupt 9).
  v(9, 'CSO', 'Coprocessor Segment Overrun', 'fault', false, 'benign'),
  v(10, '#TS', 'Invalid TSS', 'fault', true, 'contributory'),
  v(11, '#NP', 'Segment Not Present', 'fault', true, 'contributory'),
  v(12, '#SS', 'Stack-Segment Fault', 'fault', true, 'contributory'),
  v(13, '#GP', 'General Protection', 'fault', true, 'contributory'),
  v(14, '#PF', 'Page Fault', 'fault', true, 'page-fault'),
  reserved(15),
  v(16, '#MF', 'x87 Floating-Point Error', 'fault', false, 'benign'),
  v(17, '#AC', 'Alignment Check', 'fault', true, 'benign'),
  v(18, '#MC', 'Machine Check', 'abort', false, 'benign'),
  v(19, '#XM', 'SIMD Floating-Point', 'fault', false, 'benign'),
  v(20, '#VE', 'Virtualization Exception (Intel; reserved on AMD)', 'fault', false, 'page-fault'),
  v(21, '#CP', 'Control Protection', 'fault', true, 'contributory'),
  reserved(22),
  reserved(23),
  reserved(24),
  reserved(25),
  reserved(26),
  reserved(27),
  // AMD only (APM Table 8-1), raised for SEV-ES/SNP guests; kvmprop's guests never see them, so
  // their kind is not modelled. #VC and #SX push an error code.
  v(28, '#HV', 'Hypervisor Injection (AMD SEV-SNP)', 'reserved', false, 'benign'),
  v(29, '#VC', 'VMM Communication (AMD SEV-ES)', 'reserved', true, 'benign'),
  v(30, '#SX', 'Security Exception (AMD)', 'reserved', true, 'benign'),
  reserved(31),
]);

export const DE = 0, DB = 1, NMI = 2, BP = 3, OF = 4, BR = 5, UD = 6, NM = 7, DF = 8;
export const TS = 10, NP = 11, SS = 12, GP = 13, PF = 14, MF = 16, AC = 17, MC = 18, XM = 19, VE = 20, CP = 21;

/** The error code #DF pushes, whatever led to it (SDM Interrupt 8; APM §8.2.9). */
export const DOUBLE_FAULT_ERROR_CODE = 0;

export function vectorInfo(vector: number): VectorInfo {
  const info = VECTORS[vector];
  if (!info) throw new Error(`vectorInfo: ${vector} is not an exception vector (0–31)`);
  return info;
}

export function mnemonic(vector: number): string {
  return vector < 32 ? vectorInfo(vector).mnemonic : `INT ${hex8(vector)}`;
}

const hex8 = (n: number) => `0x${n.toString(16).padStart(2, '0')}`;

/** The points where the manuals (or their editions) disagree on a vector's class. */
export interface VectorClassSwitches {
  /**
   * Vector 20.
   *  - 'page-fault' (SDM Table 6-4 lists "14 Page Fault, 20 Virtualization Exception" as the page
   *    fault class);
   *  - 'benign' (APM Table 8-1: vector 20 is reserved, so an AMD processor never raises it; KVM's
   *    exception_class() has no case for VE_VECTOR and returns EXCPT_BENIGN).
   */
  readonly virtualizationExceptionClass: 'page-fault' | 'benign';
  /**
   * Vector 21, #CP.
   *  - 'contributory' (SDMs with CET add "21 Control Protection Exception" to the contributory row
   *    of Table 6-4; KVM's CET series adds CP_VECTOR to exception_class()'s contributory cases);
   *  - 'benign' (SDM editions before CET, and KVM before the CET series: not listed, so benign).
   */
  readonly controlProtectionClass: 'contributory' | 'benign';
}

export function classOfVector(vector: number, sw: VectorClassSwitches): FaultClass {
  if (vector === VE) return sw.virtualizationExceptionClass;
  if (vector === CP) return sw.controlProtectionClass;
  return vectorInfo(vector).defaultClass;
}

/** What the processor does with a second exception raised while delivering a first event. */
export type Combination = 'serial' | 'double-fault' | 'shutdown';

/**
 * SDM Table 6-5 / APM §8.2.9. `second` cannot be 'double-fault': delivering an event never
 * raises #DF directly, only this rule does.
 */
export function combine(first: FaultClass, second: Exclude<FaultClass, 'double-fault'>): Combination {
  switch (first) {
    case 'double-fault':
      // The manuals name contributory and page-fault seconds; no delivery raises a benign one.
      return 'shutdown';
    case 'benign':
      return 'serial';
    case 'contributory':
      return second === 'contributory' ? 'double-fault' : 'serial';
    case 'page-fault':
      return second === 'benign' ? 'serial' : 'double-fault';
  }
}
