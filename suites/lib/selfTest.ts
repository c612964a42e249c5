/**
 * What a family's self-test at a small budget asserts about a property's result on whatever host
 * runs the tests: it classified (pass, known deviation, or a host finding). A finding is a result
 * of `kvmprop run`, not a red npm test, but it must come with its rule and saved counterexample,
 * and never be the harness's own error.
 */
import { expect } from 'vitest';
import type { PropertyResult } from '../../reports/schema.js';
import type { RunOptions } from './options.js';
import { formatFailure } from './runner.js';

export function expectClassified(r: PropertyResult, options: RunOptions, notTheSuite: RegExp = /^(setup error|error while checking|could not gather host facts)/): void {
  expect(['pass', 'known-deviation', 'fail'], r.reason).toContain(r.status);
  if (r.status !== 'fail') return;
  const why = formatFailure(r, options);
  expect(r.rule, why).toBeDefined();
  expect(r.counterexample, why).toBeDefined();
  expect(r.reason, why).not.toMatch(notTheSuite);
}
