/**
 * The seam between the nested model and one virtualization extension's L1 interface, in the style
 * of kvm-unit-tests' APIC ops table (xAPIC and x2APIC behind one `struct apic_ops`): everything
 * that differs between SVM and VMX about *how L1 sees* an L2 event is one L1Backend; what the
 * processor does with the event inside L2 (the IDT, the double-fault rule: exceptions.ts
 * followChain) is shared.
 *
 * An L1Backend says:
 *  - its name, and the manual its rules come from;
 *  - how L1 names the events it takes (`intercepted`): SVM, the exception intercept vector and
 *    the INTR/NMI/INTn bits (APM Vol. 2 §15.12, §15.13); VMX, the exception bitmap with the #PF
 *    error-code mask/match, and the pin-based external-interrupt/NMI exiting controls (SDM
 *    Vol. 3C §25.2 "Other Causes of VM Exits", §25.6.3);
 *  - how an exit is encoded for an event an intercept took (`exitFor`): SVM, EXITCODE 40h +
 *    vector, EXITINFO1 (error code), EXITINFO2 (#PF address), EXITINTINFO (the event being
 *    delivered, §15.7.2); VMX, exit reason 0 (exception or NMI) / 1 (external interrupt), the
 *    VM-exit interruption information and error code, the exit qualification (#PF: the linear
 *    address), the IDT-vectoring information (SDM Vol. 3C §28.2.2, §28.2.4);
 *  - the exit a triple fault in L2 becomes, and whether L1 asked for it (`tripleFault`): SVM,
 *    #VMEXIT(SHUTDOWN) 7Fh only with the SHUTDOWN intercept; VMX, exit reason 2 (triple fault)
 *    always, there is no control for it (SDM Vol. 3C §25.2).
 *
 * SVM (models/nested/svm.ts SVM_L1) is the only implementation: no VMX backend ships until one
 * has run against a VMX host (this one is AMD, and QEMU's TCG has no VMX). A VMX backend is an
 * L1Backend<VmxControls, VmxExit> plus, on the suite side, an L1Runtime (suites/nested/svm.ts
 * SVM_RUNTIME) with its guest op (VMLAUNCH with a VMCS) and its record decoder.
 */
import type { ChainEnd, VectoredEvent } from './exceptions.js';

/** An event an intercept took (exceptions.ts followChain's 'intercepted' end). */
export type InterceptedEnd = Extract<ChainEnd, { readonly kind: 'intercepted' }>;

export interface L1Backend<Controls, Exit, Switches> {
  readonly name: 'svm' | 'vmx';
  /** Where its intercept and exit rules come from. */
  readonly manual: string;
  /** Whether L1's controls take `e` before L2 vectors it (injected events are never checked: followChain). */
  intercepted(e: VectoredEvent, controls: Controls): boolean;
  /** The exit L1 reads for an event an intercept took. */
  exitFor(end: InterceptedEnd, sw: Switches): Exit;
  /** L2's triple fault: the exit it becomes, or null when L1 did not ask for one (then the switches decide). */
  tripleFault(controls: Controls): Exit | null;
}
