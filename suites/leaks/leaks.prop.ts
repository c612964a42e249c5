/**
 * Family 4: no host memory leaks through CPUID or device (PIO/MMIO) reads.
 */
import { propertySuite } from '../lib/vitest.js';
import { cpuidDeterministic, cpuidNoHostPattern, cpuidRules } from './cpuid.js';
import { deviceReadsDefinedBytes, deviceReadsNoHostPattern, deviceReadsStable, deviceReadsUnclaimed } from './deviceReads.js';

propertySuite('leaks', [
  cpuidDeterministic,
  cpuidRules,
  cpuidNoHostPattern,
  deviceReadsDefinedBytes,
  deviceReadsUnclaimed,
  deviceReadsStable,
  deviceReadsNoHostPattern,
]);
