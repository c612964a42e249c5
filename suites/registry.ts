/**
 * Every property family and its properties: the one list the CLI (selection, replay, results) and
 * the vitest property files share.
 */
import type { AnyProperty } from './lib/property.js';
import { cpuidCplInvariant, cpuidDeterministic, cpuidNoHostPattern, cpuidRules } from './leaks/cpuid.js';
import { deviceReadsDefinedBytes, deviceReadsNoHostPattern, deviceReadsStable, deviceReadsUnclaimed } from './leaks/deviceReads.js';

export const SUITES: Readonly<Record<string, readonly AnyProperty[]>> = {
  leaks: [
    cpuidDeterministic,
    cpuidRules,
    cpuidCplInvariant,
    cpuidNoHostPattern,
    deviceReadsDefinedBytes,
    deviceReadsUnclaimed,
    deviceReadsStable,
    deviceReadsNoHostPattern,
  ],
};

export const SUITE_NAMES = Object.keys(SUITES);

export function propertyById(id: string): AnyProperty | undefined {
  for (const props of Object.values(SUITES)) {
    const p = props.find((x) => x.id === id);
    if (p) return p;
  }
  return undefined;
}

/** The properties a run selects: every property of the suites, narrowed to `ids` when given. */
export function selectedProperties(suites: readonly string[], ids: readonly string[]): AnyProperty[] {
  return suites.flatMap((s) => SUITES[s] ?? []).filter((p) => ids.length === 0 || ids.includes(p.id));
}
