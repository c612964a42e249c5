/**
 * Family: no host memory leaks through CPUID or device (PIO/MMIO) reads.
 * The properties are in cpuid.ts and deviceReads.ts, the mutants in mutants.ts.
 */
import { defineFamily } from '../lib/family.js';
import { cpuidCplInvariant, cpuidDeterministic, cpuidNoHostPattern, cpuidRules } from './cpuid.js';
import { deviceReadsDefinedBytes, deviceReadsNoHostPattern, deviceReadsStable, deviceReadsUnclaimed } from './deviceReads.js';
import { LEAK_MUTANTS } from './mutants.js';

const CPUID_PROPERTIES = [cpuidDeterministic, cpuidRules, cpuidCplInvariant, cpuidNoHostPattern].map((p) => p.id);
const DEVICE_READ_PROPERTIES = [deviceReadsDefinedBytes, deviceReadsUnclaimed, deviceReadsStable, deviceReadsNoHostPattern].map((p) => p.id);

export const leaks = defineFamily({
  name: 'leaks',
  title: 'No host memory leaks through CPUID or device reads',
  properties: [
    cpuidDeterministic,
    cpuidRules,
    cpuidCplInvariant,
    cpuidNoHostPattern,
    deviceReadsDefinedBytes,
    deviceReadsUnclaimed,
    deviceReadsStable,
    deviceReadsNoHostPattern,
  ],
  roles: {
    facts: 'the VM the device map and the CPU model are read from',
    calibration: 'the VM the CPUID calibration table is read in (every in-range leaf, CPL 0, vCPU 0)',
    workload: "a case's VM",
    a: 'the first of two fresh VMs a case compares',
    b: 'the second of two fresh VMs a case compares',
  },
  requires: [],
  metrics: [
    { key: 'cpuidQueries', label: 'CPUID queries' },
    { key: 'deviceReads', label: 'device reads' },
    { key: 'vms', label: 'VMs' },
  ],
  mutants: LEAK_MUTANTS,
  coverage: [
    {
      properties: DEVICE_READ_PROPERTIES,
      anyOf: ['vcpu.io_exits', 'vcpu.mmio_exits'],
      why: 'device reads of space QEMU serves (devices, and space no device claims) leave the guest as I/O or MMIO exits to QEMU',
    },
    {
      // Where KVM does count it (VMX, SVM), the guest's own TAP lines on COM1 move it too: this one
      // only catches a run with no port access at all.
      properties: DEVICE_READ_PROPERTIES,
      anyOf: ['vcpu.io_exits'],
      why: 'its port reads of ports QEMU serves leave the guest as I/O exits (KVM_EXIT_IO)',
      notOn: [{ vendorModule: 'kvm_pvm', reason: 'kvm_pvm does not count io_exits: 100 port reads, each served by QEMU, left it at 0 while exits rose (harness/fixtures/kvm-stats-kvm.json)' }],
    },
    {
      properties: CPUID_PROPERTIES,
      anyOf: ['vcpu.exits'],
      atLeast: ['cpuidQueries'],
      why: 'CPUID is intercepted: every query the guest makes is a VM exit that KVM answers',
      notOn: [
        {
          vendorModule: 'kvm_pvm',
          lacksCpuFlag: 'cpuid_fault',
          reason: 'kvm_pvm runs guest user mode natively and cannot make CPL-3 CPUID exit without cpuid_fault (the CPU answers it; known deviation pvm-cpl3-cpuid-not-intercepted), and emulates CPL-0 CPUID with everything else in ring 0',
        },
      ],
    },
  ],
});
