/** The migration family's properties as vitest tests (suites/migration/manifest.ts lists them). */
import { familyTests } from '../lib/vitest.js';
import { migration } from './manifest.js';

familyTests(migration);
