/**
 * One migration case, observed: boot the dirtying workload on a source, migrate it (after a
 * cancelled attempt that cannot converge, when the case asks), and at each switchover, with the
 * source stopped at completion and the destination loaded but not resumed, take both sides' RAM
 * and vCPU/device state; then (unless the property judges nothing after it: ObserveOptions.resume)
 * resume the destination, let it run, stop it, and read back what the workload wrote; for
 * ping-pong, move it on once more. Everything a rule needs is in the
 * observation; rules (properties.ts) only compare.
 *
 * Four verbs per hop, as in KVM's selftests (vcpu_save_state → release → recreate →
 * vcpu_load_state): the source stops and sends (migrateTo, resume: false), the destination holds
 * what it loaded, both are read, and only then does the guest go on.
 */
import { readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { compareDeviceState, parseMigrationStream, type FieldDifference, type StreamComparison } from '../../harness/migrationStream.js';
import { hopVia, type HopVia } from '../../generators/migration.js';
import { STREAM_EXCLUSIONS } from './streamExclusions.js';
import { layoutWorkload, LOOPING_MARK, migrationProgram, workingSetPages, type MigrationCase } from '../../generators/migration.js';
import { captureVmState, diffVmState, type VmStateDifference } from '../../harness/vmState.js';
import { compareRam, MigrationError, withVms, type MigrateOptions, type MigrationInfo, type PageDifference, type StreamIntercept, type VmHandle, type VmSpec } from '../../harness/session.js';
import { judgeCounters, expectedCounters, knownSpans, sentinelWords, unpredictedOrKnown, type ArenaDifference, type DirtyWorkload } from '../../models/migration/dirty.js';
import { cannotCompleteWithin, firstPassBytes, predictConvergence, type Convergence } from '../../models/migration/convergence.js';
import { judgeDeadline, judgeOneShot, judgeWatches, type TimeDifference, type WatchReading } from '../../models/migration/time.js';
import { DEADLINE_VECTOR, PIT_HZ, PIT_ONE_SHOT_VECTOR, pitOneShotCount, preludeStamps, pvclockOf, xmmPattern } from '../../generators/migration.js';
import { explainPvclockPage, type PvclockUpdate } from '../../models/migration/pvclock.js';
import { decodeRecords } from '../../harness/bytecode.js';
import { decodeIrqLog, IRQ_LOG_BYTES_PER_VCPU } from '../../harness/irqLog.js';
import { LAYOUT } from '../../harness/guest/abi.js';
import type { Program } from '../../ir/program.js';
import { machineConfig } from '../lib/options.js';
import { recordKvmStats } from '../lib/coverage.js';
import type { Observation, PropertyEnv } from '../lib/property.js';

export interface MigrationFacts {
  readonly tscHz: number;
  /**
   * The vCPU's CPUID (QEMU's expansion of the CPU model, less what the accelerator filtered out)
   * has XSAVE and AVX, and AVX512F: the vector writers a case may draw. Absent in facts saved
   * before they existed: none.
   */
  readonly avx?: boolean;
  readonly avx512?: boolean;
  /** The host's free 2 MiB huge pages, in MiB (/proc/meminfo): whether hugetlbfs RAM can be generated. */
  readonly hugePagesFreeMiB?: number;
  /** The vCPU offers PV EOI (KVM, QEMU's kvm-pv-eoi): cases may enable it. Absent: none. */
  readonly pvEoi?: boolean;
}

/**
 * XMMi of a vCPU as `info registers` shows it ("high low"). With AVX state on (a vector writer:
 * XCR0 has AVX) QEMU 7.2 prints YMMnn instead, four qwords high to low (ZMMnn, eight, with
 * AVX-512; target/i386/cpu-dump.c): XMMi is the last two.
 */
export function xmmOf(items: readonly { section: string; key: string; value: string }[], cpu: number, i: number): string | null {
  const n = String(i).padStart(2, '0');
  const find = (key: string) => items.find((it) => it.section === `cpu${cpu}.registers` && it.key === key)?.value;
  const xmm = find(`XMM${n}`);
  if (xmm !== undefined) return xmm;
  const wide = find(`YMM${n}`) ?? find(`ZMM${n}`);
  return wide === undefined ? null : wide.split(' ').slice(-2).join(' ');
}

/** How late the deadline's interrupt may come while vCPU 0 runs with interrupts on. */
export const DEADLINE_GRACE_MS = 50;

/** The clock watches of a stopped VM (four u64 each: last, backwards, worst step back, samples). */
async function readWatches(vm: VmHandle, w: DirtyWorkload): Promise<WatchReading[]> {
  return Promise.all(
    w.watches.map(async (x) => {
      const b = Buffer.from(await vm.vm.readPhys(x.slot, 32));
      return { thread: x.thread, kind: x.kind, last: b.readBigUInt64LE(0), backwards: b.readBigUInt64LE(8), worstBack: b.readBigUInt64LE(16), samples: b.readBigUInt64LE(24) };
    }),
  );
}

/** What vCPU 0 armed before its loop, from its records: the deadline written, the PIT's start (TSC before and after its count went in, the count), when it turned interrupts on; null when it armed nothing. */
interface Armed {
  readonly deadline: bigint | null;
  readonly pit: { readonly before: bigint; readonly after: bigint; readonly count: number } | null;
  /** TSC just before the STI of a masked window. */
  readonly unmaskedAt?: bigint;
}

async function armedBefore(vm: VmHandle, c: MigrationCase, program: Program): Promise<Armed | null> {
  const ops = program.threads[0]!;
  const prelude = ops.slice(0, ops.findIndex((o) => o.op === 'loopBegin'));
  const at = preludeStamps(prelude);
  if (at.deadline === null && at.pitBefore === null) return null;
  const region = vm.program!.regions[0]!;
  const used = Number((await vm.vm.readMailbox()).threads[0]!.obs_used ?? 0n);
  const records = decodeRecords(prelude, await vm.vm.readPhys(region.addr, Math.min(used, region.len)), Math.min(used, region.len));
  const rec = (i: number | null) => (i === null ? undefined : records.find((x) => x.opIndex === i && x.faultVector === null));
  const field = (i: number | null, name: string) => (rec(i)?.fields as Record<string, bigint> | undefined)?.[name];
  const deadline = field(at.deadline, 'written') ?? null;
  const before = field(at.pitBefore, 'tsc');
  const after = field(at.pitAfter, 'tsc');
  const pit = before !== undefined && after !== undefined && c.pitOneShotMs != null ? { before, after, count: pitOneShotCount(c.pitOneShotMs) } : null;
  if (deadline === null && pit === null) return null;
  const unmaskedAt = field(at.unmask, 'tsc');
  return { deadline, pit, ...(unmaskedAt !== undefined ? { unmaskedAt } : {}) };
}

/** The PIT one-shot's window in TSC cycles (models/migration/time.ts judgeOneShot). */
function pitWindow(pit: NonNullable<Armed['pit']>, tscHz: number): { earliest: bigint; expiryLatest: bigint } {
  const ticks = (n: number) => BigInt(Math.round((n * tscHz) / PIT_HZ));
  // Counting starts with the count's high byte, between the two stamps; OUT rises after `count`
  // ticks (one more or less at the edges), and the guest's TSC rate is KVM's claim to 0.1 %.
  const span = ticks(pit.count);
  return { earliest: pit.before + span - span / 1000n - ticks(2), expiryLatest: pit.after + span + span / 1000n + ticks(2) };
}

/**
 * Keep the destination running until what vCPU 0 armed before the migration (a deadline, a PIT
 * one-shot) has interrupted or is past due by the grace: only then do the judges decide
 * "delivered" (a case whose run after resume ends sooner would leave a lost interrupt unjudged).
 * The values written, not a model's.
 */
async function untilArmedDecided(vm: VmHandle, c: MigrationCase, w: DirtyWorkload, program: Program, tscHz: number, timeoutMs = 3000): Promise<void> {
  if (!w.watches.some((x) => x.thread === 0 && x.kind === 'tsc')) return;
  const ops = program.threads[0]!;
  const masked = preludeStamps(ops.slice(0, ops.findIndex((o) => o.op === 'loopBegin'))).unmask !== null;
  const grace = BigInt(Math.round((DEADLINE_GRACE_MS * tscHz) / 1000));
  for (const until = Date.now() + timeoutMs; Date.now() < until; await sleep(10)) {
    // Read again each time: a masked window's STI (its stamp) may still be to come, and the due
    // times count from it.
    const armed = await armedBefore(vm, c, program);
    if (armed === null) return;
    if (masked && armed.unmaskedAt === undefined) continue;
    const after = (t: bigint) => (armed.unmaskedAt !== undefined && armed.unmaskedAt > t ? armed.unmaskedAt : t) + grace;
    const waits: { vector: number; due: bigint }[] = [
      ...(armed.deadline !== null ? [{ vector: DEADLINE_VECTOR, due: after(armed.deadline) }] : []),
      ...(armed.pit ? [{ vector: PIT_ONE_SHOT_VECTOR, due: after(pitWindow(armed.pit, tscHz).expiryLatest) }] : []),
    ];
    const log = decodeIrqLog(await vm.vm.readPhys(LAYOUT.irqLog, IRQ_LOG_BYTES_PER_VCPU));
    const tsc0 = (await readWatches(vm, w)).find((x) => x.thread === 0 && x.kind === 'tsc');
    if (!tsc0) return;
    if (waits.every((x) => log.entries.some((e) => e.vector === x.vector) || tsc0.last >= x.due)) return;
  }
}

async function judgeTime(vm: VmHandle, c: MigrationCase, w: DirtyWorkload, program: Program, tscHz: number, env: PropertyEnv): Promise<{ watches: WatchReading[]; time: TimeDifference[] }> {
  const watches = await readWatches(vm, w);
  const time = judgeWatches(watches);
  const armed = await armedBefore(vm, c, program);
  const tsc0 = watches.find((x) => x.thread === 0 && x.kind === 'tsc');
  if (armed === null || !tsc0 || tsc0.samples === 0n) return { watches, time };
  const log = decodeIrqLog(await vm.vm.readPhys(LAYOUT.irqLog, IRQ_LOG_BYTES_PER_VCPU));
  const of = (vector: number) => log.entries.filter((e) => e.vector === vector).map((e) => e.tsc);
  const graceTsc = BigInt(Math.round((DEADLINE_GRACE_MS * tscHz) / 1000));
  const unmasked = armed.unmaskedAt !== undefined ? { unmaskedAt: armed.unmaskedAt } : {};
  if (armed.deadline !== null) {
    // A model-variant mutant may take the deadline as later than written (mutants.ts migration-model-late-deadline).
    const shiftMs = Number((env.mutant?.modelVariant?.migrationTime as { deadlineShiftMs?: number } | undefined)?.deadlineShiftMs ?? 0);
    const deadline = armed.deadline + BigInt(Math.round((shiftMs * tscHz) / 1000));
    time.push(...judgeDeadline({ deadline, nowTsc: tsc0.last, interrupts: of(DEADLINE_VECTOR), graceTsc, ...unmasked }));
  }
  if (armed.pit) {
    time.push(...judgeOneShot({ source: 'PIT channel 0 (mode 0, IRQ0 through the IOAPIC)', ...pitWindow(armed.pit, tscHz), nowTsc: tsc0.last, interrupts: of(PIT_ONE_SHOT_VECTOR), graceTsc, ...unmasked }));
  }
  return { watches, time };
}

/** QEMU 7.2's default max-bandwidth (migration/migration.c: MAX_THROTTLE). */
export const QEMU_DEFAULT_MAX_BANDWIDTH = 128 << 20;

/**
 * The attempt that must not complete: capped at 16 KiB/s and cancelled after 300 ms, while its
 * first pass alone puts at least 9 bytes per page of RAM on the wire (147 KB for 64 MiB, 9 s at
 * that rate; models/migration/convergence.ts cannotCompleteWithin).
 */
export const HOPELESS = { bandwidth: 16 << 10, downtimeMs: 1, cancelAfterMs: 300 } as const;
if (!cannotCompleteWithin(firstPassBytes(64 << 20), HOPELESS.bandwidth, HOPELESS.cancelAfterMs)) throw new Error('HOPELESS could complete in its window: raise the RAM floor or lower its bandwidth');

export interface Hop {
  readonly from: string;
  readonly to: string;
  readonly via: HopVia;
  readonly prediction: Convergence;
  readonly info: MigrationInfo | null;
  /** Why it did not complete (QEMU's words), or null. */
  readonly error: string | null;
  /** Did not complete within the time a case allows, where the model makes no claim. */
  readonly gaveUp: boolean;
  readonly ram: {
    readonly identical: boolean;
    readonly differingPages: number;
    readonly pages: readonly (PageDifference & { readonly why?: string })[];
    /** kvmclock areas the destination's KVM updated after loading them (allowed: models/migration/pvclock.ts). */
    readonly kvmclockUpdates: readonly PvclockUpdate[];
  } | null;
  readonly state: readonly VmStateDifference[] | null;
  /**
   * A hop through a file, observed with the stream oracle: the source's stream (the file) against
   * the loaded, not yet resumed destination saved again, device section by device section; the
   * differences STREAM_EXCLUSIONS allow are kept apart with their reasons. Null otherwise.
   */
  readonly stream?: {
    readonly compared: StreamComparison['compared'];
    readonly onlyIn: StreamComparison['onlyIn'];
    readonly differences: readonly FieldDifference[];
    readonly allowed: readonly FieldDifference[];
    readonly error?: string;
  } | null;
  readonly stateEvidence?: { readonly source: Readonly<Record<string, string>>; readonly destination: Readonly<Record<string, string>> };
  /** Each thread's ops_done on the source at its switchover, and on the destination before it runs. */
  readonly progress: { readonly source: readonly number[]; readonly destination: readonly number[] } | null;
  /** What the resumed destination did; null when the hop failed or was not resumed (ObserveOptions.resume). */
  readonly resumed: {
    /** Every thread of the destination moved past where the source stopped. */
    readonly ran: boolean;
    readonly ranWhy: string | null;
    /** Two readings of the stopped destination, apart in time, are the same. */
    readonly stopped: boolean;
    /** The source stayed stopped where it was. */
    readonly sourceStill: boolean;
    readonly opsDone: readonly number[];
    /** The workload's arena against the model, at the destination's ops_done. */
    readonly arena: readonly ArenaDifference[];
    /** The clock watches, and time's rules over them and the deadline armed before the migration. */
    readonly watches: readonly WatchReading[];
    readonly time: readonly TimeDifference[];
    /** Vector registers whose pattern (filled before the migration) is not what the destination holds. */
    readonly vectors: readonly { readonly cpu: number; readonly reg: string; readonly expected: string; readonly observed: string | null }[];
  } | null;
}

export interface MigrationObservation {
  readonly workload: DirtyWorkload;
  readonly workingSetPages: number;
  /** The least the first pass of this case's RAM puts on the wire. */
  readonly firstPassBytes: number;
  readonly hopeless: { readonly status: string; readonly info: MigrationInfo | null; readonly error: string | null } | null;
  readonly hops: readonly Hop[];
  readonly qemuStderr: Readonly<Record<string, string>>;
}

/** What a case's migrations ask of QEMU: capabilities and parameters, on both sides. */
export function migrateOptions(c: MigrationCase): Pick<MigrateOptions, 'capabilities' | 'parameters' | 'postcopyAfterMs'> {
  const s = c.stream;
  const capabilities: Record<string, boolean> = {};
  const parameters: Record<string, unknown> = { 'downtime-limit': s.downtimeLimitMs, 'max-bandwidth': s.maxBandwidthMiBs === null ? QEMU_DEFAULT_MAX_BANDWIDTH : s.maxBandwidthMiBs << 20 };
  if (s.multifdChannels) {
    capabilities.multifd = true;
    parameters['multifd-channels'] = s.multifdChannels;
  }
  if (s.xbzrleCacheMiB) {
    capabilities.xbzrle = true;
    parameters['xbzrle-cache-size'] = s.xbzrleCacheMiB << 20;
  }
  if (s.autoConverge) capabilities['auto-converge'] = true;
  if (s.postcopy) {
    capabilities['postcopy-ram'] = true;
    if (s.postcopy.preempt) capabilities['postcopy-preempt'] = true;
  }
  return { capabilities, parameters, ...(s.postcopy ? { postcopyAfterMs: s.postcopy.afterMs } : {}) };
}

const ZERO_CHUNK = Buffer.alloc(1 << 20);

/** Read the arena of a stopped VM and judge it against the model at these ops_done counts. */
export async function judgeArena(vm: VmHandle, w: DirtyWorkload, opsDone: readonly number[]): Promise<ArenaDifference[]> {
  const spans = knownSpans(w);
  const skipped = unpredictedOrKnown(w);
  const words = new Map<number, bigint>();
  const out: ArenaDifference[] = [];
  const CHUNK = 1 << 20;
  // One buffer for the whole arena (8 bytes more, so a word that starts in a chunk is read whole):
  // the arena is most of the guest's RAM, and a copy per chunk cost the bench ~70 ms per 64 MiB.
  const buf = Buffer.allocUnsafe(CHUNK + 8);
  let si = 0; // the next span to read the value of
  let zi = 0; // the first span that may still overlap the chunk being zero-checked
  for (let at = w.arenaBase; at < w.arenaEnd && out.length < 16; at += CHUNK) {
    const len = Math.min(CHUNK, w.arenaEnd - at);
    const want = Math.min(len + 8, w.arenaEnd - at);
    buf.fill(0, await vm.vm.readPhysInto(at, buf, want), want);
    for (; si < spans.length && spans[si]!.addr < at + len; si++) words.set(spans[si]!.addr, buf.readBigUInt64LE(spans[si]!.addr - at));
    // The words are read: the known spans are zeroed in place, the rest must be zero already.
    const rest = buf.subarray(0, len);
    while (zi < skipped.length && skipped[zi]!.addr + skipped[zi]!.len <= at) zi++;
    for (let k = zi; k < skipped.length && skipped[k]!.addr < at + len; k++) rest.fill(0, Math.max(0, skipped[k]!.addr - at), Math.min(len, skipped[k]!.addr + skipped[k]!.len - at));
    // Nearly always all zero: one memcmp against zeroes; only a chunk that is not is searched byte by byte.
    if (rest.equals(ZERO_CHUNK.subarray(0, len))) continue;
    for (let i = rest.findIndex((b) => b !== 0); i >= 0 && out.length < 16; ) {
      out.push({ addr: at + i, expected: '0x0', observed: `0x${rest[i]!.toString(16)}`, why: 'a byte the workload never writes' });
      const next = rest.subarray(i + 1).findIndex((b) => b !== 0);
      i = next < 0 ? -1 : i + 1 + next;
    }
  }
  const read = (addr: number) => words.get(addr) ?? 0n;
  for (const s of sentinelWords(w)) {
    if (read(s.addr) !== s.value) out.push({ addr: s.addr, expected: `0x${s.value.toString(16)}`, observed: `0x${read(s.addr).toString(16)}`, why: 'sentinel page (written once, before the migration)' });
  }
  out.push(...judgeCounters(expectedCounters(w, opsDone), read));
  return out;
}

/** RAM at the switchover, with the kvmclock areas' permitted updates (pvclock.ts) taken out of the differences. */
async function sameRamBut(src: VmHandle, dst: VmHandle, pvclocks: readonly number[]): Promise<NonNullable<Hop['ram']>> {
  const r = await compareRam(src, dst, 4096, { details: 64 });
  const kvmclockUpdates: PvclockUpdate[] = [];
  const pages: (PageDifference & { why?: string })[] = [];
  for (const p of r.pages) {
    const structs = pvclocks.filter((a) => a >= p.page && a < p.page + 4096);
    if (!structs.length) {
      pages.push(p);
      continue;
    }
    const [a, b] = await Promise.all([src.vm.readPhys(p.page, 4096), dst.vm.readPhys(p.page, 4096)]);
    const verdict = explainPvclockPage(p.page, Buffer.from(a), Buffer.from(b), structs);
    if (verdict.explained) kvmclockUpdates.push(...verdict.updates);
    else pages.push({ ...p, why: verdict.why });
  }
  const differingPages = r.differingPages - (r.pages.length - pages.length);
  return { identical: differingPages === 0, differingPages, pages, kvmclockUpdates };
}

async function opsDone(vm: VmHandle, threads: number): Promise<number[]> {
  const { threads: t } = await vm.vm.readMailbox();
  return t.slice(0, threads).map((x) => Number(x.ops_done ?? 0n));
}

/** The migration stream interceptor of the run's mutant (a page-record proxy), if any. */
export type InterceptFor = (w: DirtyWorkload) => ((dstUri: string, dstDir: string) => Promise<StreamIntercept>) | undefined;

export interface ObserveOptions {
  readonly interceptFor?: InterceptFor;
  /**
   * After each hop through a file, save the loaded destination before it resumes and compare the
   * streams' device sections. Its save has effects of its own on QEMU 7.2 (kvmclock's pre_save
   * re-reads KVM's clock for a VM that has not run since it loaded, and `cont` then sets that
   * value), so only the switchover property, whose rules are all judged before the resume, asks.
   */
  readonly streamOracle?: boolean;
  /**
   * Resume the last hop's destination and read what it did (runs on, stops, the arena, time, the
   * vector registers). Default true. The switchover property judges everything before the resume
   * and says false: the resume and its reads are a third of a small case's time (bench/), and a
   * hop that another follows (ping-pong) is resumed whatever this says, as the next hop needs it.
   */
  readonly resume?: boolean;
}

export async function observeMigration(c: MigrationCase, facts: MigrationFacts, env: PropertyEnv, o: ObserveOptions = {}): Promise<Observation<MigrationObservation>> {
  const interceptFor = o.interceptFor;
  const { workload } = layoutWorkload(c);
  const program = migrationProgram(c, workload, facts.tscHz);
  const nthreads = program.threads.length;
  // Every VM of the case (source, destinations, a file hop's restore) has the case's RAM backend.
  const ramBackend = c.ramBackend ?? 'file';
  const cfg = machineConfig(env.options, { cpus: c.cpus, ramMiB: c.ramMiB, ...(c.tracking.kind === 'ring' ? { accelProps: [`dirty-ring-size=${c.tracking.size}`] } : {}), ...(ramBackend === 'file' ? {} : { ramBackend }) });
  const specs: Record<string, VmSpec> = { a: { config: cfg, program }, b: { config: cfg, incoming: 'defer', ...(hopVia(c, 0) === 'file' ? { restoreFile: true } : {}) } };
  if (c.cancelFirst) specs.a0 = { config: cfg, incoming: 'defer' };
  if (c.pingPong) specs.c = { config: cfg, incoming: 'defer', ...(hopVia(c, 1) === 'file' ? { restoreFile: true } : {}) };
  const ws = workingSetPages(workload);
  const opts = migrateOptions(c);
  const prediction = predictConvergence({
    workingSetBytes: ws * 4096,
    bandwidth: Number(opts.parameters!['max-bandwidth']),
    downtimeMs: c.stream.downtimeLimitMs,
    postcopy: c.stream.postcopy !== null,
  });
  const intercept = interceptFor?.(workload);
  env.metrics.add('migrationCases');
  env.metrics.add(`migration.ram.${ramBackend}`);
  for (const [k, on] of Object.entries({ viaFile: [0, ...(c.pingPong ? [1] : [])].some((i) => hopVia(c, i) === 'file'), multifd: !!c.stream.multifdChannels, xbzrle: !!c.stream.xbzrleCacheMiB, autoConverge: c.stream.autoConverge, postcopy: !!c.stream.postcopy, dirtyRing: c.tracking.kind === 'ring', cancelRetry: c.cancelFirst, pingPong: c.pingPong, twoVcpus: c.cpus === 2, deadline: c.deadlineMs !== null, maskedDeadline: c.deadlineMs !== null && c.maskedForMs !== null, pitOneShot: c.pitOneShotMs != null, maskedPit: c.pitOneShotMs != null && c.maskedForMs !== null, kvmclock: c.kvmclock, stealTime: c.stealTime === true, pvEoi: c.pvEoi === true, avxWriter: workload.regions.some((r) => r.writer === 'avx'), avx512Writer: workload.regions.some((r) => r.writer === 'avx512'), scattered: workload.regions.some((r) => (r.step ?? 1) !== 1) })) {
    if (on) env.metrics.add(`migration.${k}`);
  }
  for (const w of new Set(workload.regions.map((r) => r.writer))) env.metrics.add(`migration.writer.${w}`);
  const stderr: Record<string, string> = {};
  try {
    return await withVms(
      specs,
      async (vms) => {
        const observed = async (hopeless: MigrationObservation['hopeless'], hops: Hop[]) => {
          for (const [name, h] of Object.entries(vms)) stderr[name] = h.vm.stderr;
          // What KVM counted on each side, read after the case's last observation (a reading kicks every vCPU).
          const stats = await Promise.all(Object.values(vms).map((h) => h.kvmStats()));
          Object.keys(vms).forEach((name, i) => recordKvmStats(env.metrics, stats[i]!, { role: name === 'a' ? 'source' : 'destination', vm: name }));
          return { ok: true as const, value: { workload, workingSetPages: ws, firstPassBytes: firstPassBytes(c.ramMiB << 20), hopeless, hops, qemuStderr: stderr } };
        };
        const a = vms.a!;
        for (let t = 0; t < nthreads; t++) await a.untilMarker(t, LOOPING_MARK, { timeoutMs: 20_000 });
        await sleep(c.warmupMs);
        let hopeless: MigrationObservation['hopeless'] = null;
        if (c.cancelFirst) {
          // It cannot complete before it is cancelled: the pages it must send once take longer at its rate limit.
          const info = await a
            .migrateTo(vms.a0!, { parameters: { 'max-bandwidth': HOPELESS.bandwidth, 'downtime-limit': HOPELESS.downtimeMs }, cancelAfterMs: HOPELESS.cancelAfterMs, timeoutMs: 20_000 })
            .then((i) => ({ status: i.status, info: i, error: null }))
            .catch((e: unknown) => (e instanceof MigrationError ? { status: e.info?.status ?? 'failed', info: e.info, error: e.message } : Promise.reject(e)));
          hopeless = info;
          env.metrics.add('migrations');
          // It ended some other way: the source is gone or stopped, and that is the finding.
          if (info.status !== 'cancelled') return observed(hopeless, []);
          await untilRunning(a);
        }
        const hops: Hop[] = [];
        const route = c.pingPong ? [['a', 'b'], ['b', 'c']] : [['a', 'b']];
        for (const [i, [from, to]] of (route as [string, string][]).entries()) {
          const last = i === route.length - 1;
          const resume = !last || o.resume !== false;
          const hop = await migrateHop(vms[from]!, vms[to]!, { c, via: hopVia(c, i), streamOracle: o.streamOracle === true, resume, workload, program, tscHz: facts.tscHz, nthreads, prediction, env, ...(intercept ? { intercept } : {}) });
          hops.push(hop);
          if (!hop.resumed) break;
        }
        return observed(hopeless, hops);
      },
      { guestElf: env.guestElf },
    );
  } catch (e) {
    const message = e instanceof Error ? e.message : String(e);
    return { ok: false, difference: { summary: `the migration case did not run: ${message}`, expected: 'the source boots, reaches its loop and each VM answers QMP', observed: message, evidence: { stderr } } };
  }
}

async function untilRunning(vm: VmHandle): Promise<void> {
  for (let i = 0; i < 100 && (await vm.status()) !== 'running'; i++) await sleep(20);
}

async function migrateHop(
  src: VmHandle,
  dst: VmHandle,
  x: { c: MigrationCase; via: HopVia; streamOracle: boolean; resume: boolean; workload: DirtyWorkload; program: Program; tscHz: number; nthreads: number; prediction: Convergence; env: PropertyEnv; intercept?: MigrateOptions['intercept'] },
): Promise<Hop> {
  const { c, workload, nthreads, prediction, env, via } = x;
  const base = { from: src.name, to: dst.name, via, prediction };
  const timeoutMs = prediction === 'converges' ? 60_000 : 20_000;
  let info: MigrationInfo;
  try {
    if (via === 'file') {
      const { postcopyAfterMs: _, ...opts } = migrateOptions(c);
      // A save stops the guest first (VmHandle.migrateViaFile), so the file holds each page once.
      info = await src.migrateViaFile(dst, { ...opts, resume: false, timeoutMs });
    } else {
      info = await src.migrateTo(dst, { ...migrateOptions(c), resume: false, timeoutMs, ...(x.intercept ? { intercept: x.intercept } : {}) });
    }
  } catch (e) {
    if (!(e instanceof MigrationError)) throw e;
    env.metrics.add('migrations');
    env.metrics.add(via === 'file' ? 'migrationsViaFile' : 'migrationsViaSocket');
    const gaveUp = prediction !== 'converges' && /did not end within/.test(e.message);
    if (gaveUp) env.metrics.add('migrationsNotConverged');
    env.metrics.sample('migration.completed', 0, { ...caseLabels(c), prediction });
    return { ...base, info: e.info, error: e.message, gaveUp, ram: null, state: null, progress: null, resumed: null };
  }
  env.metrics.add('migrations');
  env.metrics.add(via === 'file' ? 'migrationsViaFile' : 'migrationsViaSocket');
  env.metrics.add('migrationsCompleted');
  env.metrics.sample('migration.completed', 1, { ...caseLabels(c), via, prediction });
  // Both stopped: how much of the source's RAM block THP backed at the switchover (the 2 MiB
  // mappings whose write protection and dirty logging the case drove); none for a file.
  const thpBytes = await src.vm
    .ramMappingNow()
    .then((m) => (m ? m.anonHugeBytes + m.shmemPmdBytes : undefined))
    .catch(() => undefined);
  for (const f of figureSamples(c, { ...info, ...(thpBytes === undefined ? {} : { thpBytes }) }, workingSetPages(workload), via)) env.metrics.sample(f.series, f.value, f.labels);
  // Both stopped: the source at completion, the destination with everything loaded.
  // RAM from the files and state through QMP: independent, so read together.
  const [ram, sa, sb] = await Promise.all([
    sameRamBut(src, dst, c.kvmclock ? Array.from({ length: nthreads }, (_, t) => pvclockOf(t)) : []),
    captureVmState(src.vm.qmp, c.cpus),
    captureVmState(dst.vm.qmp, c.cpus),
  ]);
  if (ram.kvmclockUpdates.length) env.metrics.add('migration.kvmclockUpdatedOnLoad');
  const state = diffVmState(sa, sb);
  const progress = { source: await opsDone(src, nthreads), destination: await opsDone(dst, nthreads) };
  const stream = via === 'file' && x.streamOracle ? await streamOracle(dst) : null;
  if (stream && !stream.error) env.metrics.add('migration.streamsCompared');
  const atSwitchover = { ...base, info, error: null, gaveUp: false, ram, state, stream, ...(state.length ? { stateEvidence: { source: sa.raw, destination: sb.raw } } : {}), progress };
  if (!x.resume) return { ...atSwitchover, resumed: null };
  // Resume the destination: it must run on from there, and stop when told.
  await dst.cont();
  await sleep(c.runAfterMs);
  await untilArmedDecided(dst, c, workload, x.program, x.tscHz);
  let ranWhy: string | null = null;
  for (let t = 0; t < nthreads; t++) {
    const from = BigInt(progress.destination[t]!);
    await dst.untilThread(t, (s) => (s.ops_done ?? 0n) > from + 1n, { timeoutMs: 10_000 }).catch((e: unknown) => (ranWhy ??= e instanceof Error ? e.message : String(e)));
  }
  await dst.stop();
  // Ops done and heartbeats (busy-waits and long passes beat as they go): a running vCPU moves one
  // of them within 10 ms. The reads of the stopped VMs (RAM files and QMP, independent of each
  // other) run meanwhile; should the destination still run, 'stopped' fails and they mean nothing.
  const pulse = async () => (await dst.vm.readMailbox()).threads.slice(0, nthreads);
  const beat = await pulse();
  const first = beat.map((t) => Number(t.ops_done ?? 0n));
  const [, sourceNow, arena, time, after] = await Promise.all([
    sleep(10),
    opsDone(src, nthreads),
    judgeArena(dst, workload, first),
    judgeTime(dst, c, workload, x.program, x.tscHz, env),
    captureVmState(dst.vm.qmp, c.cpus),
  ]);
  const stillBeat = await pulse();
  const second = stillBeat.map((t) => Number(t.ops_done ?? 0n));
  const vectors = Array.from({ length: nthreads }, (_, cpu) =>
    Array.from({ length: 16 }, (_, i) => {
      const reg = `XMM${String(i).padStart(2, '0')}`;
      const observed = xmmOf(after.items, cpu, i);
      return { cpu, reg, expected: xmmPattern(cpu, i), observed };
    }).filter((v) => v.observed !== v.expected),
  ).flat();
  return {
    ...atSwitchover,
    resumed: {
      ran: ranWhy === null,
      ranWhy,
      stopped: beat.every((t, i) => t.ops_done === stillBeat[i]!.ops_done && t.heartbeat === stillBeat[i]!.heartbeat),
      sourceStill: sourceNow.every((v, i) => v === progress.source[i]) && (await src.status()) === 'postmigrate',
      opsDone: second,
      arena,
      ...time,
      vectors,
    },
  };
}

/**
 * The stream oracle of a hop through a file: the destination's restore file is exactly what the
 * source sent; save the destination (loaded, stopped, not yet resumed) beside it and compare the
 * two streams' device sections field by field (harness/migrationStream.ts). The second save is
 * removed once read.
 */
async function streamOracle(dst: VmHandle): Promise<NonNullable<Hop['stream']>> {
  const file = join(dst.vm.dir, 'saved-at-switchover.bin');
  try {
    await dst.saveState(file, join(dst.vm.dir, 'save-at-switchover.sock'), { timeoutMs: 30_000 });
    const [a, b] = await Promise.all([readFile(dst.vm.restorePath!), readFile(file)]);
    const r = compareDeviceState(a, parseMigrationStream(a), b, parseMigrationStream(b), STREAM_EXCLUSIONS);
    return { compared: r.compared, onlyIn: r.onlyIn, differences: r.differences.filter((d) => !d.excluded), allowed: r.differences.filter((d) => d.excluded) };
  } catch (e) {
    return { compared: [], onlyIn: { a: [], b: [] }, differences: [], allowed: [], error: e instanceof Error ? e.message : String(e) };
  } finally {
    await rm(file, { force: true });
  }
}

/** What a case asked of the migration, as measurement labels: success rate and figures per configuration. */
function caseLabels(c: MigrationCase): Record<string, string | number> {
  return {
    tracking: c.tracking.kind === 'ring' ? `ring-${c.tracking.size}` : 'bitmap',
    multifd: c.stream.multifdChannels ?? 0,
    xbzrle: c.stream.xbzrleCacheMiB ? 'on' : 'off',
    autoConverge: c.stream.autoConverge ? 'on' : 'off',
    postcopy: c.stream.postcopy ? (c.stream.postcopy.preempt ? 'preempt' : 'on') : 'off',
    ramMiB: c.ramMiB,
    cpus: c.cpus,
    ramBackend: c.ramBackend ?? 'file',
  };
}

/**
 * Every completed migration's figures (results' measurements, series migration.<figure>), labelled
 * by what the case asked for, the pages its workload keeps dirtying (workingSetPages) and the
 * highest dirty rate QEMU measured while it ran (dirtyRateBps, bytes/s; 0: QEMU measured none):
 * what a report plots downtime and bytes against.
 */
export function figureSamples(c: MigrationCase, info: MigrationInfo & { restoreMs?: number; savedBytes?: number; thpBytes?: number }, workingSetPages: number, via: HopVia = 'socket'): { series: string; value: number; labels: Record<string, string | number> }[] {
  const labels = { ...caseLabels(c), via, workingSetPages, dirtyRateBps: Math.round(info.dirtyRateReached ?? 0) };
  const figures: Record<string, number | undefined> = {
    totalTimeMs: info['total-time'],
    downtimeMs: info.downtime,
    setupTimeMs: info['setup-time'],
    transferredBytes: info.ram?.transferred,
    dirtySyncCount: info.ram?.['dirty-sync-count'],
    mbps: info.ram?.mbps,
    pagesPerSecond: info.ram?.['pages-per-second'] as number | undefined,
    throttlePercent: info.throttleReached ?? 0,
    // A hop through a file: how long the destination took to load it, and its size.
    restoreMs: info.restoreMs,
    savedBytes: info.savedBytes,
    // RAM QEMU maps itself (anonymous, memfd): the bytes of it THP backed at the switchover (smaps).
    thpBytes: info.thpBytes,
  };
  return Object.entries(figures).flatMap(([k, v]) => (typeof v === 'number' ? [{ series: `migration.${k}`, value: v, labels }] : []));
}
