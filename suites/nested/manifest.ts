/**
 * Family: exception delivery, single level and (not yet) nested. The single-level property runs
 * generated faulting instructions in the guest on the host's KVM (singleLevel.ts); the nested SVM
 * property (svm.ts) runs the guest as an SVM hypervisor (L1)
 * where one can run: under TCG, or on a KVM with nested SVM. The model is models/nested/; the mutants mutants.ts.
 */
import { defineFamily } from '../lib/family.js';
import { NESTED_MUTANTS } from './mutants.js';
import { singleLevelDelivery } from './singleLevel.js';
import { svmDelivery } from './svm.js';

export const nested = defineFamily({
  name: 'nested',
  title: 'Exception delivery: faulting instructions at CPL 3 and CPL 0 through the guest IDT (single level); nested SVM (L1 in the guest: under TCG, or KVM with nested SVM)',
  properties: [singleLevelDelivery, svmDelivery],
  roles: {
    workload: "a case's VM: one vCPU running the case's faulting instructions, at CPL 3 or CPL 0",
  },
  requires: [{ name: 'kvm', why: 'the exception delivery under test is KVM’s (or QEMU’s under --accel tcg)' }],
  metrics: [
    { key: 'exceptionCases', label: 'exception cases' },
    { key: 'faultingInstructions', label: 'faulting instructions' },
    { key: 'handlerEntries', label: 'handler entries' },
    { key: 'svmCases', label: 'SVM cases' },
    { key: 'l2Runs', label: 'L2 runs' },
    { key: 'eventInjections', label: 'EVENTINJ runs' },
    { key: 'vmexits', label: 'exception #VMEXITs' },
    { key: 'shutdownExits', label: 'SHUTDOWN #VMEXITs' },
    { key: 'l2HandlerEntries', label: 'L2 handler entries' },
    { key: 'doubleFaults', label: 'double faults' },
    { key: 'vms', label: 'VMs' },
  ],
  mutants: NESTED_MUTANTS,
  coverage: [
    {
      // Judged only where it runs on KVM with nested SVM. Under --accel tcg (where it runs on this
      // host) there are no KVM statistics: every claim reads 'not-measured', saying so.
      properties: [svmDelivery.id],
      anyOf: ['vcpu.nested_run'],
      atLeast: ['l2Runs'],
      why: "each VMRUN of the guest's L1 enters L2 through KVM's nested SVM (nested_run counts every entry)",
    },
    // nested.single-level.delivery claims nothing: with VMX or SVM the guest's exceptions go through
    // its IDT without an exit, and on kvm_pvm no counter singles them out (5 cases here: exits,
    // insn_emulation and pf_fixed moved as in any VM, nothing else).
  ],
});
