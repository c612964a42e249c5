/**
 * vitest global set-up for kvmprop's own tests: settle the default vCPU model once (the same way a
 * `kvmprop run` does) and hand it to every test worker through the environment, so a test on a
 * host that cannot start `-cpu host` runs on the model the suite itself would pick there.
 */
import { existsSync } from 'node:fs';
import { buildGuest } from './guest/build.js';
import { VCPU_CHOICE_ENV } from './vcpuChoice.js';
import { settleVcpuModel } from '../suites/lib/machine.js';
import { defaultOptions } from '../suites/lib/options.js';

export default async function setup(): Promise<void> {
  if (!existsSync('/dev/kvm') || process.env[VCPU_CHOICE_ENV]) return;
  const guest = await buildGuest();
  const choice = await settleVcpuModel(defaultOptions(), guest.elf, { fresh: true });
  if (choice.fallback) process.stderr.write(`kvmprop tests: ${choice.fallback.reason}\n`);
}
