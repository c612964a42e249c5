/**
 * Family 4: no host memory leaks through CPUID or device (PIO/MMIO) reads.
 * The properties themselves are in cpuid.ts and deviceReads.ts.
 */
import { SUITES } from '../registry.js';
import { propertySuite } from '../lib/vitest.js';

propertySuite('leaks', SUITES.leaks!);
