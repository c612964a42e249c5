/**
 * A migration case of migration.switchover side by side with a raw QEMU → QEMU migration of the
 * same guest running the same program with the same parameters (two QEMUs, -incoming on a unix
 * socket, QMP migrate, the source's MIGRATION event 'completed', then quit): how much the harness
 * (marker wait, RAM comparison at the switchover, vCPU/device state capture, resume, stop and the
 * model's check of the arena) adds to the migration itself. Goal: a ratio of at most 1.3. Then the
 * RAM-equivalence check's speed over two 1 GiB RAM files (goal: at least 2 GiB/s).
 *
 * Rounds alternate harness and raw runs in one process; medians are reported (this host is shared
 * and noisy: only ratios measured together mean anything).
 *
 *   node --import tsx bench/migration.bench.ts [--rounds N] [--out FILE]
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { parseArgs } from 'node:util';
import { execa } from 'execa';
import { layoutWorkload, LOOPING_MARK, migrationProgram, plainCase, type MigrationCase } from '../generators/migration.js';
import { LAYOUT, MAILBOX_THREADS_OFFSET, readStruct, structBytes } from '../harness/guest/abi.js';
import { encodeProgram } from '../harness/bytecode.js';
import { QmpClient, type QmpEvent } from '../harness/qmp.js';
import { createPrivateDir, removePrivateDir } from '../harness/runtime.js';
import { compareRamFiles } from '../harness/session.js';
import { qemuArgs } from '../harness/vm.js';
import { loadDeviations } from '../reports/deviations.js';
import { machineConfig, PROJECT_ROOT } from '../suites/lib/options.js';
import type { PropertyEnv } from '../suites/lib/property.js';
import { checkCase } from '../suites/lib/runner.js';
import { benchEnv, rawQemuArgs } from './env.js';
import { Waiver } from '../suites/lib/waive.js';
import { migrateOptions } from '../suites/migration/observe.js';
import { migrationSwitchover } from '../suites/migration/properties.js';

const { values } = parseArgs({ options: { rounds: { type: 'string' }, out: { type: 'string' } } });
const ROUNDS = Number(values.rounds ?? 5);
const OUT = values.out ?? join(PROJECT_ROOT, 'bench', 'results', 'bench-migration.json');

/**
 * Two cases. The smallest the generator makes: 64 MiB, one vCPU rewriting 256 pages (1 MiB) with
 * MOV as fast as it can and watching TSC and kvmclock, a deadline 50 ms out, dirty bitmap, plain
 * precopy — the harness's fixed costs against the shortest migration, the worst ratio. And one
 * nearer the generated cases' median total time (381 ms over `run --runs 30 --seed 1`): 256 MiB
 * with 2048 pages (8 MiB) rewritten at QEMU's default 128 MiB/s, so precopy iterates.
 */
const CASES: readonly { readonly name: string; readonly c: MigrationCase }[] = [
  {
    name: 'migration.switchover, 64 MiB, 1 vCPU, 256 pages rewritten, plain precopy',
    c: plainCase({
      threads: [{ delayUs: 0, regions: [{ pages: 256, stridePages: 1, placement: 'page-start', offset: 8, writer: 'mov', passes: 1, gapPages: 0 }] }],
      kvmclock: true,
      deadlineMs: 50,
    }),
  },
  {
    name: 'migration.switchover, 256 MiB, 1 vCPU, 2048 pages rewritten, precopy iterating at 128 MiB/s',
    c: plainCase({
      ramMiB: 256,
      threads: [{ delayUs: 0, regions: [{ pages: 2048, stridePages: 1, placement: 'page-start', offset: 8, writer: 'mov', passes: 1, gapPages: 0 }] }],
      kvmclock: true,
      deadlineMs: 50,
    }),
  },
];

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function timeHarness(env: PropertyEnv, facts: unknown, CASE: MigrationCase): Promise<number> {
  const waiver = new Waiver(loadDeviations(env.options.deviations), migrationSwitchover.id, env.host, { accel: env.options.accel, machine: env.options.machine });
  const t = performance.now();
  const f = await checkCase(migrationSwitchover, CASE, facts, env, waiver);
  const ms = performance.now() - t;
  if (f) throw new Error(`the case failed (${f.rule}): ${f.difference.summary}`);
  return ms;
}

/** Our arguments without the harness, and a plain QMP server socket to drive the migration. */
function rawArgs(all: readonly string[], qmp: string, keepS: boolean): string[] {
  return [...rawQemuArgs(all, { keepS }), '-qmp', `unix:${qmp},server=on,wait=off`];
}

async function untilLooping(ram: string): Promise<void> {
  const at = LAYOUT.mailbox + MAILBOX_THREADS_OFFSET;
  const bytes = structBytes('thread_status');
  for (let i = 0; i < 1000; i++) {
    const f = await open(ram, 'r').catch(() => null);
    if (f) {
      const buf = Buffer.alloc(bytes);
      await f.read(buf, 0, bytes, at);
      await f.close();
      if (readStruct('thread_status', buf).marker === LOOPING_MARK) return;
    }
    await sleep(5);
  }
  throw new Error('the raw guest never reached its loop');
}

async function timeRaw(env: PropertyEnv, tscHz: number, CASE: MigrationCase): Promise<number> {
  const { workload } = layoutWorkload(CASE);
  const image = encodeProgram(migrationProgram(CASE, workload, tscHz));
  const cfg = machineConfig(env.options, { cpus: CASE.cpus, ramMiB: CASE.ramMiB });
  const dir = await createPrivateDir('bench-raw-migration');
  const procs: ReturnType<typeof execa>[] = [];
  let t = 0;
  try {
    const program = join(dir, 'program.bin');
    writeFileSync(program, image.image);
    const mig = join(dir, 'mig.sock');
    t = performance.now();
    const src = rawArgs(qemuArgs(cfg, { kernel: env.guestElf, ram: join(dir, 'ram-a'), qmpSocket: '', program }), join(dir, 'a.sock'), false);
    const dst = rawArgs(qemuArgs(cfg, { kernel: env.guestElf, ram: join(dir, 'ram-b'), qmpSocket: '', program }, { incoming: `unix:${mig}` }), join(dir, 'b.sock'), true);
    procs.push(execa(cfg.qemu, src, { reject: false, stdin: 'ignore' }), execa(cfg.qemu, dst, { reject: false, stdin: 'ignore' }));
    const [qa, qb] = await Promise.all([QmpClient.connect(join(dir, 'a.sock')), QmpClient.connect(join(dir, 'b.sock'))]);
    const o = migrateOptions(CASE);
    for (const q of [qa, qb]) {
      await q.execute('migrate-set-capabilities', { capabilities: [{ capability: 'events', state: true }] });
      await q.execute('migrate-set-parameters', { ...o.parameters });
    }
    // The harness starts migrating once the guest loops; so does this: thread 0's marker, read
    // straight from the RAM file.
    await untilLooping(join(dir, 'ram-a'));
    // As quick to see the end as the harness: the source's MIGRATION event, not a poll's sleep.
    const ended = qa.waitForEvent('MIGRATION', { predicate: (e: QmpEvent) => ['completed', 'failed', 'cancelled'].includes(String((e.data as { status?: unknown } | undefined)?.status)), timeoutMs: 60_000 });
    await qa.execute('migrate', { uri: `unix:${mig}` });
    const status = String(((await ended).data as { status: string }).status);
    if (status !== 'completed') throw new Error(`raw migration ${status}`);
    for (const q of [qa, qb]) await q.execute('quit').catch(() => undefined);
    await Promise.all(procs);
  } finally {
    for (const p of procs) p.kill('SIGKILL');
    await removePrivateDir(dir);
  }
  // Its directory removed, as the harness's timing includes disposing of its VMs.
  return performance.now() - t;
}

/** compareRam's loop over two 1 GiB RAM files with a quarter of their pages written. */
async function ramCheckGiBps(): Promise<number> {
  const dir = await createPrivateDir('bench-ram-check');
  try {
    const len = 1 << 30;
    const [a, b] = [join(dir, 'a'), join(dir, 'b')];
    const data = Buffer.alloc(1 << 20, 0x5a);
    for (const p of [a, b]) {
      execFileSync('truncate', ['-s', String(len), p]);
      const f = await open(p, 'r+');
      for (let i = 0; i < 256; i++) await f.write(data, 0, data.length, i * (4 << 20));
      await f.close();
    }
    await compareRamFiles(a, b, len);
    const t = performance.now();
    if (!(await compareRamFiles(a, b, len)).identical) throw new Error('identical files compared unequal');
    return 1 / ((performance.now() - t) / 1000);
  } finally {
    await removePrivateDir(dir);
  }
}

async function main(): Promise<void> {
  const { base, env } = await benchEnv(OUT);
  const facts = (await migrationSwitchover.facts(env)) as { tscHz: number };
  const rows = [];
  for (const { name, c } of CASES) {
    await timeHarness(env, facts, c);
    await timeRaw(env, facts.tscHz, c);
    const harness: number[] = [];
    const raw: number[] = [];
    for (let r = 0; r < ROUNDS; r++) {
      harness.push(await timeHarness(env, facts, c));
      raw.push(await timeRaw(env, facts.tscHz, c));
    }
    const h = median(harness);
    const w = median(raw);
    const row = { case: name, rounds: ROUNDS, harnessMsMedian: Math.round(h), rawMsMedian: Math.round(w), ratio: Number((h / w).toFixed(3)), harnessMs: harness.map(Math.round), rawMs: raw.map(Math.round) };
    rows.push(row);
    process.stdout.write(`${row.case}: harness ${row.harnessMsMedian} ms vs raw QEMU→QEMU ${row.rawMsMedian} ms (median of ${ROUNDS}) → ratio ${row.ratio}\n`);
  }
  const ram = [await ramCheckGiBps(), await ramCheckGiBps(), await ramCheckGiBps()];
  const ramCheck = { ramCheckGiBps: Number(median(ram).toFixed(2)), ramCheckGiBpsRuns: ram.map((x) => Number(x.toFixed(2))) };
  process.stdout.write(`RAM check: ${ramCheck.ramCheckGiBps} GiB/s over 1 GiB\n`);
  mkdirSync(dirname(OUT), { recursive: true });
  writeFileSync(OUT, JSON.stringify({ host: base.host.kernel.release, qemu: base.host.qemu.version, measuredAt: new Date().toISOString(), cases: rows, ...ramCheck }, null, 2) + '\n');
  process.stdout.write(`written: ${OUT}\n`);
}

await main();
