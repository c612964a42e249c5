/** The timer family's properties as vitest tests (suites/timers/manifest.ts lists them). */
import { familyTests } from '../lib/vitest.js';
import { timers } from './manifest.js';

familyTests(timers);
