/**
 * The nested family's mutants: the exception model with one rule broken, so that a correct host
 * disagrees with it (there is no system-side way to make KVM mis-deliver an exception).
 * suites/nested/sensitivity.test.ts runs them; `kvmprop run --family nested --mutant NAME` by hand.
 * singleLevel.ts reads modelVariant.nested (NestedModelVariant).
 */
import type { Mutant } from '../lib/family.js';

export const NESTED_MUTANTS: readonly Mutant[] = [
  {
    name: 'nested-model-gp-as-ud',
    description:
      'The model routes one vector wrongly: an instruction that raises #GP(0) (a non-canonical load, MOV from CR0 at CPL 3) is predicted to raise #UD, so a correct host, which enters the #GP handler, disagrees.',
    breaks: ['nested.single-level.delivery'],
    roles: [],
    modelVariant: { nested: { gpAsUd: true } },
  },
  {
    name: 'nested-model-pf-no-user-bit',
    description:
      'The model leaves the U/S bit (2) out of #PF error codes, as if a CPL-3 access were a supervisor one: a correct host pushes error code 4 (load) or 6 (store) for an unmapped address touched at CPL 3.',
    breaks: ['nested.single-level.delivery'],
    roles: [],
    modelVariant: { nested: { pageFaultUserBit: false } },
  },
];
