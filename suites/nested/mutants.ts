/**
 * The nested family's mutants: the exception model with one rule broken, so that a correct host
 * disagrees with it (there is no system-side way to make KVM mis-deliver an exception), and a
 * broken L1: the guest's SVM hypervisor leaving out an intercept it claims to set.
 * suites/nested/sensitivity.test.ts runs them; `kvmprop run --family nested --mutant NAME` by hand.
 * singleLevel.ts reads modelVariant.nested (NestedModelVariant), svm.ts modelVariant.nestedL1 (L1Variant).
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
  {
    name: 'nested-l1-drops-gp-intercept',
    description:
      'The L1 under test leaves bit 13 (#GP) out of the exception intercepts of every VMCB it runs, while the case (and so the model) says L1 intercepts #GP: a #GP in L2 then reaches L2\'s own #GP handler, or what delivering it there leads to, instead of #VMEXIT(0x4d).',
    breaks: ['nested.svm.delivery'],
    roles: [],
    sensitivity: { accel: 'tcg' },
    modelVariant: { nestedL1: { dropInterceptVector: 13 } },
  },
];
