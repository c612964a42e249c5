/** The leak family's properties as vitest tests (suites/leaks/manifest.ts lists them). */
import { familyTests } from '../lib/vitest.js';
import { leaks } from './manifest.js';

familyTests(leaks);
