/**
 * The timer family's mutants: a disturbed system each timer property must fail on, or a model
 * with one rule flipped, which a correct host must then disagree with.
 */
import type { Mutant } from '../lib/family.js';

export const TIMER_MUTANTS: readonly Mutant[] = [];
