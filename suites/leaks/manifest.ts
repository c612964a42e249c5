/**
 * Family: no host memory leaks through CPUID or device (PIO/MMIO) reads.
 * The properties are in cpuid.ts and deviceReads.ts, the mutants in mutants.ts.
 */
import { defineFamily } from '../lib/family.js';
import { cpuidCplInvariant, cpuidDeterministic, cpuidNoHostPattern, cpuidRules } from './cpuid.js';
import { deviceReadsDefinedBytes, deviceReadsNoHostPattern, deviceReadsStable, deviceReadsUnclaimed } from './deviceReads.js';
import { LEAK_MUTANTS } from './mutants.js';

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
});
