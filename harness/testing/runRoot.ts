/**
 * For tests that start VMs themselves: a run root of the test file's own (every VM directory it
 * creates lands there, every QEMU names it in its arguments), installed in the environment before
 * the file's tests and removed after them.
 */
import { afterAll, beforeAll } from 'vitest';
import { createRunRoot, removeRunRoot, RUNTIME_ROOT_ENV } from '../runtime.js';

export function useOwnRunRoot(): { readonly path: () => string } {
  let root = '';
  let saved: string | undefined;
  beforeAll(() => {
    saved = process.env[RUNTIME_ROOT_ENV];
    root = createRunRoot();
    process.env[RUNTIME_ROOT_ENV] = root;
  });
  afterAll(() => {
    if (saved === undefined) delete process.env[RUNTIME_ROOT_ENV];
    else process.env[RUNTIME_ROOT_ENV] = saved;
    removeRunRoot(root);
  });
  return { path: () => root };
}
