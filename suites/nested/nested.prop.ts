/** The nested family's properties as vitest tests (suites/nested/manifest.ts lists them). */
import { familyTests } from '../lib/vitest.js';
import { nested } from './manifest.js';

familyTests(nested);
