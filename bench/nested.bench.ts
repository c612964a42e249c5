/**
 * The nested family's cases side by side with a raw QEMU boot-to-exit of the same guest binary
 * running the same program: a nested SVM case under TCG (the guest as L1 running KVM's
 * nested_exceptions_test sequence, nested.svm.delivery) and a single-level case on KVM
 * (nested.single-level.delivery's #DE/#UD/#PF examples at CPL 3). Ratios of medians measured
 * together in one run; this host is shared and noisy.
 *
 *   node --import tsx bench/nested.bench.ts [--rounds N] [--out FILE]
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { parseArgs } from 'node:util';
import { KVM_NESTED_EXCEPTIONS_CASE, svmCaseOps } from '../generators/nestedSvm.js';
import { SINGLE_LEVEL_EXAMPLES, singleLevelOps, type SingleLevelCase } from '../generators/nested.js';
import { DEFAULT_CANARY } from '../ir/program.js';
import { PROJECT_ROOT } from '../suites/lib/options.js';
import { singleLevelDelivery } from '../suites/nested/singleLevel.js';
import { svmDelivery } from '../suites/nested/svm.js';
import { benchCases, benchEnv, type BenchCase } from './env.js';

const { values } = parseArgs({ options: { rounds: { type: 'string' }, out: { type: 'string' } } });
const ROUNDS = Number(values.rounds ?? 7);
const OUT = values.out ?? join(PROJECT_ROOT, 'bench', 'results', 'bench-nested.json');

/** Exceptions this host's KVM delivers right at CPL 3 (the family's kvm_pvm findings avoided). */
const SINGLE: SingleLevelCase = {
  cpl: 3,
  steps: [...SINGLE_LEVEL_EXAMPLES['#DE']!.steps, ...SINGLE_LEVEL_EXAMPLES['#UD']!.steps, SINGLE_LEVEL_EXAMPLES['#PF']!.steps[0]!],
};

async function main(): Promise<void> {
  // KVM first: the vCPU model an environment settles on is process-wide (vcpuChoice.ts), and the
  // TCG environment's would not start under KVM on this kind of host.
  const kvm = await benchEnv(OUT);
  const single: BenchCase = {
    facts: await singleLevelDelivery.facts(kvm.env),
    c: {
      name: `single level on KVM (nested.single-level.delivery, ${SINGLE.steps.length} faulting instructions at CPL 3)`,
      property: singleLevelDelivery,
      workload: SINGLE,
      program: { threads: [singleLevelOps(SINGLE)], canary: DEFAULT_CANARY },
      unit: 'faulting instructions',
      units: SINGLE.steps.length,
      cpus: 1,
    },
  };
  const report = await benchCases([single], kvm.env, ROUNDS);
  const tcg = await benchEnv(OUT, { accel: 'tcg' });
  const nested: BenchCase = {
    facts: await svmDelivery.facts(tcg.env),
    c: {
      name: `nested SVM under TCG (nested.svm.delivery, KVM's nested_exceptions_test, ${KVM_NESTED_EXCEPTIONS_CASE.runs.length} VMRUNs)`,
      property: svmDelivery,
      workload: KVM_NESTED_EXCEPTIONS_CASE,
      program: { threads: [svmCaseOps(KVM_NESTED_EXCEPTIONS_CASE)], canary: DEFAULT_CANARY, ring0: true },
      unit: 'L2 runs',
      units: KVM_NESTED_EXCEPTIONS_CASE.runs.length,
      cpus: 1,
    },
  };
  report.push(...(await benchCases([nested], tcg.env, ROUNDS)));
  mkdirSync(dirname(OUT), { recursive: true });
  writeFileSync(OUT, JSON.stringify({ host: kvm.base.host.kernel.release, qemu: kvm.base.host.qemu.version, measuredAt: new Date().toISOString(), cases: report }, null, 2) + '\n');
  process.stdout.write(`written: ${OUT}\n`);
}

await main();
