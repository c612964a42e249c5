/**
 * Every property family: the one list the CLI (selection, replay, summary, results) and the vitest
 * property files share. Everything else about a family is in its manifest.
 */
import type { Family, Mutant } from './lib/family.js';
import type { AnyProperty } from './lib/property.js';
import { leaks } from './leaks/manifest.js';
import { migration } from './migration/manifest.js';
import { nested } from './nested/manifest.js';
import { timers } from './timers/manifest.js';

export const FAMILIES: readonly Family[] = [leaks, timers, migration, nested];

export const FAMILY_NAMES = FAMILIES.map((f) => f.name);

export function familyNamed(name: string): Family | undefined {
  return FAMILIES.find((f) => f.name === name);
}

export function propertyById(id: string): AnyProperty | undefined {
  for (const f of FAMILIES) {
    const p = f.properties.find((x) => x.id === id);
    if (p) return p;
  }
  return undefined;
}

/** The properties a run selects: every property of the families, narrowed to `ids` when given. */
export function selectedProperties(families: readonly string[], ids: readonly string[]): AnyProperty[] {
  return families.flatMap((n) => familyNamed(n)?.properties ?? []).filter((p) => ids.length === 0 || ids.includes(p.id));
}

export const MUTANTS: readonly Mutant[] = FAMILIES.flatMap((f) => f.mutants);

export class UnknownMutantError extends Error {
  override name = 'UnknownMutantError';
}

export function mutantNamed(name: string): Mutant {
  const m = MUTANTS.find((x) => x.name === name);
  if (!m) throw new UnknownMutantError(`unknown mutant '${name}' (known: ${MUTANTS.map((x) => x.name).join(', ')})`);
  return m;
}
