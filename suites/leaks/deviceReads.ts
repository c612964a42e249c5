/**
 * Device reads leak nothing: port and MMIO reads of every width and form, aimed at the device map
 * QEMU reports, change only what their instruction defines, read unclaimed space as the platform's
 * fixed value, repeat exactly where the register has no read side effects, and never carry the
 * host's leak pattern.
 */
import { deviceReadOps, deviceReadWorkloadArb, mmioLimit, type DeviceReadWorkload } from '../../generators/deviceReads.js';
import { STRING_GUARD_BYTES, type Op, type OpRecord, type RecordOf } from '../../ir/ops.js';
import { DEFAULT_CANARY } from '../../ir/program.js';
import type { MachineFacts } from '../../harness/facts.js';
import { findHostPattern, valueBytes } from '../../models/hostPattern.js';
import { firstMaskedMismatch, predictRead, type DeviceRead, type MaskedBytes, type ReadPrediction } from '../../models/deviceReads.js';
import { defineProperty, difference, rule, type Difference, type Observation, type PropertyEnv } from '../lib/property.js';
import { factsFor, observeProgram, type VmRole } from '../lib/run.js';

type ReadOp = Extract<Op, { op: 'pioIn' | 'pioIns' | 'mmioRead' | 'mmioMovs' }>;

interface ReadObservation {
  readonly op: ReadOp;
  readonly record: RecordOf<ReadOp['op']>;
  readonly prediction: ReadPrediction;
  /** RAX as 8 bytes, or the string buffer. */
  readonly bytes: Uint8Array;
}

function facts(env: PropertyEnv): Promise<MachineFacts> {
  return factsFor(env);
}

/** Run the reads once (one vCPU: device state must not depend on interleaving) and pair each with its prediction. */
async function observeReads(w: DeviceReadWorkload, f: MachineFacts, env: PropertyEnv, role: VmRole): Promise<Observation<ReadObservation[]>> {
  const ops = deviceReadOps(w) as ReadOp[];
  const run = await observeProgram(env, { threads: [ops], canary: DEFAULT_CANARY, mapLimit: mmioLimit(f.deviceMap) }, { role });
  if (!run.ok) return run;
  const records = (run.value.records[0] ?? []) as OpRecord[];
  // A REP string read is one instruction and `count` accesses, each its own exit.
  env.metrics.add('deviceReads', records.reduce((n, r) => n + accessCount(r.op as ReadOp), 0));
  env.metrics.add('readInstructions', records.length);
  if (records.length !== ops.length) {
    return { ok: false, difference: difference(`the guest recorded ${records.length} of ${ops.length} reads`, ops.length, records.length) };
  }
  // Sweeps revisit the same registers; a prediction depends only on the read, so make each once.
  const predictions = new Map<string, ReadPrediction>();
  const reads = records.map((r): ReadObservation => {
    const record = r as RecordOf<ReadOp['op']>;
    const op = record.op as ReadOp;
    const key = `${op.op}:${'port' in op ? op.port : op.addr}:${op.width}:${'count' in op ? op.count : 1}`;
    let prediction = predictions.get(key);
    if (!prediction) {
      prediction = predictRead(op as DeviceRead, { map: f.deviceMap, canary: DEFAULT_CANARY, guardBytes: STRING_GUARD_BYTES, ...(record.buffer ? { bufferBytes: record.buffer.length } : {}) });
      predictions.set(key, prediction);
    }
    const rax = 'rax' in record.fields ? record.fields.rax : 0n;
    const bytes = record.buffer ?? valueBytes(rax, 8);
    return { op, record, prediction, bytes };
  });
  return { ok: true, value: reads };
}

export function accessCount(op: ReadOp): number {
  return op.op === 'pioIns' || op.op === 'mmioMovs' ? op.count : 1;
}

/** The one-read workload that repeats read r: the witness a failure offers for shrinking. */
function readWitness(op: ReadOp): DeviceReadWorkload {
  const space = op.op === 'pioIn' || op.op === 'pioIns' ? 'pio' : 'mmio';
  const windowStart = 'port' in op ? BigInt(op.port) : op.addr;
  const string = op.op === 'pioIns' || op.op === 'mmioMovs';
  return {
    sweeps: [
      {
        space,
        form: string ? 'string' : 'reg',
        windowStart,
        windowSize: 1,
        offset: 0,
        width: op.width as 1 | 2 | 4 | 8,
        count: 1,
        stride: 1,
        repCount: string ? (op as { count: number }).count : 1,
      },
    ],
  };
}

export function describeRead(o: ReadOp): string {
  switch (o.op) {
    case 'pioIn':
      return `in${['', 'b', 'w', '', 'l'][o.width]} from port 0x${o.port.toString(16)}`;
    case 'pioIns':
      return `rep ins${['', 'b', 'w', '', 'l'][o.width]} x${o.count} from port 0x${o.port.toString(16)}`;
    case 'mmioRead':
      return `${o.width}-byte mov from 0x${o.addr.toString(16)}`;
    case 'mmioMovs':
      return `rep movs${['', 'b', 'w', '', 'l', '', '', '', 'q'][o.width]} x${o.count} from 0x${o.addr.toString(16)}`;
  }
}

/** Hex of little-endian bytes, most significant first, '??' where the model asserts nothing. */
export function maskedHex(m: MaskedBytes, only?: (i: number) => boolean): string {
  let s = '';
  for (let i = m.value.length - 1; i >= 0; i--) {
    const asserted = m.mask[i] === 0xff && (!only || only(i));
    s += asserted ? m.value[i]!.toString(16).padStart(2, '0') : '??';
  }
  return `0x${s}`;
}

function hex(bytes: Uint8Array): string {
  return `0x${[...bytes].reverse().map((b) => b.toString(16).padStart(2, '0')).join('')}`;
}

/** Every read whose bytes (limited by `keep`) differ from the prediction. */
function* mismatches(
  reads: readonly ReadObservation[],
  keep: (r: ReadObservation, i: number) => boolean,
  why: (r: ReadObservation, byte: number) => string,
): Iterable<Difference> {
  for (const r of reads) {
    const predicted = r.prediction.rax ?? r.prediction.buffer!;
    const at = firstMaskedMismatch(r.bytes, predicted, (i) => keep(r, i));
    if (at < 0) continue;
    const masked: MaskedBytes = { value: predicted.value, mask: predicted.mask.map((x, i) => (keep(r, i) ? x : 0)) };
    yield difference(
      `${describeRead(r.op)}: byte ${at} of ${r.prediction.rax ? 'RAX' : 'the destination buffer'} is 0x${r.bytes[at]!.toString(16).padStart(2, '0')}, expected 0x${masked.value[at]!.toString(16).padStart(2, '0')} (${why(r, at)})`,
      { read: r.op, regions: r.prediction.regions, value: maskedHex(masked) },
      { read: r.op, value: hex(r.bytes) },
      { witness: readWitness(r.op) },
    );
  }
}

const isData = (r: ReadObservation, i: number) => r.prediction.dataOffsets.includes(i);

function definedByteWhy(r: ReadObservation, i: number): string {
  if (r.prediction.rax) {
    const w = r.op.width;
    return w === 4 ? 'a 32-bit load zero-extends into RAX[63:32]' : `RAX[63:${8 * w}] must keep the canary: a ${8 * w}-bit read defines only the low ${w} byte${w > 1 ? 's' : ''}`;
  }
  return i < STRING_GUARD_BYTES ? 'a guard byte before the destination was written' : 'a guard byte after the destination was written';
}

function* noException(reads: readonly ReadObservation[]): Iterable<Difference> {
  for (const r of reads) {
    if (r.record.faultVector === null) continue;
    yield difference(
      `${describeRead(r.op)} raised exception vector ${r.record.faultVector} (error code 0x${r.record.errorCode.toString(16)})`,
      'no exception',
      { vector: r.record.faultVector, errorCode: r.record.errorCode, read: r.op },
      { witness: readWitness(r.op) },
    );
  }
}

function* stringCounts(reads: readonly ReadObservation[]): Iterable<Difference> {
  for (const r of reads) {
    if (r.record.faultVector !== null) continue;
    const p = r.prediction;
    const fields = r.record.fields as Readonly<Record<string, bigint>>;
    for (const [reg, want] of [['rcx', p.rcx], ['rdiDelta', p.rdiDelta], ['rsiDelta', p.rsiDelta]] as const) {
      if (want === undefined || fields[reg] === want) continue;
      yield difference(`${describeRead(r.op)}: ${reg} is ${fields[reg]}, expected ${want}`, { read: r.op, [reg]: want }, { read: r.op, [reg]: fields[reg] }, { witness: readWitness(r.op) });
    }
  }
}

const observeOnce =
  (role: VmRole) =>
  (w: DeviceReadWorkload, f: MachineFacts, env: PropertyEnv): Promise<Observation<ReadObservation[]>> =>
    observeReads(w, f, env, role);

export const deviceReadsDefinedBytes = defineProperty({
  id: 'leaks.device.defined-bytes',
  family: 'leaks',
  statement:
    'A port or MMIO read changes only the destination bytes its instruction defines (the canary around them survives), never faults, and a REP string read leaves RCX 0 and moves RSI/RDI by exactly count*width',
  facts,
  arbitrary: (f: MachineFacts) => deviceReadWorkloadArb(f.deviceMap),
  observe: observeOnce('workload'),
  rules: [
    rule('a read raises no exception', noException),
    rule('a REP read counts RCX down to 0 and moves RSI/RDI by count*width', stringCounts),
    rule('only the defined destination bytes change', (reads: readonly ReadObservation[]) =>
      mismatches(reads.filter((r) => r.record.faultVector === null), (r, i) => !isData(r, i), definedByteWhy),
    ),
  ],
});

export const deviceReadsUnclaimed = defineProperty({
  id: 'leaks.device.unclaimed',
  family: 'leaks',
  statement: "Reads of port and MMIO space no device claims return the platform's fixed value (QEMU: all-ones for ports, zeros for memory)",
  facts,
  arbitrary: (f: MachineFacts) => deviceReadWorkloadArb(f.deviceMap),
  observe: observeOnce('workload'),
  rules: [
    rule('unclaimed space reads the platform value', (reads: readonly ReadObservation[]) =>
      mismatches(reads, isData, (r) => `${r.op.op.startsWith('pio') ? 'port' : 'guest-physical'} space no device claims (${r.prediction.regions.join(', ')})`),
    ),
  ],
});

/** The same reads in two fresh VMs. */
interface TwoRuns {
  readonly a: readonly ReadObservation[];
  readonly b: readonly ReadObservation[];
}

function* sameInBothVms({ a, b }: TwoRuns): Iterable<Difference> {
  for (let k = 0; k < a.length; k++) {
    const ra = a[k]!;
    const rb = b[k]!;
    const offsets = ra.prediction.dataOffsets;
    for (let j = 0; j < offsets.length; j++) {
      const off = offsets[j]!;
      if (!ra.prediction.stableBytes[j] || ra.bytes[off] === rb.bytes[off]) continue;
      yield difference(
        `${describeRead(ra.op)} (${ra.prediction.regions.join(', ')}): data byte ${j} read 0x${ra.bytes[off]!.toString(16)} in the first VM and 0x${rb.bytes[off]!.toString(16)} in the second`,
        { read: ra.op, value: hex(ra.bytes) },
        { read: rb.op, value: hex(rb.bytes) },
        { witness: readWitness(ra.op) },
      );
      break;
    }
  }
}

export const deviceReadsStable = defineProperty({
  id: 'leaks.device.stable',
  family: 'leaks',
  statement: 'The same reads in two fresh VMs return the same bytes wherever the register has no time- or host-dependent value',
  facts,
  arbitrary: (f: MachineFacts) => deviceReadWorkloadArb(f.deviceMap, { maxSweeps: 24 }),
  observe: async (w: DeviceReadWorkload, f: MachineFacts, env: PropertyEnv): Promise<Observation<TwoRuns>> => {
    const a = await observeReads(w, f, env, 'a');
    if (!a.ok) return a;
    const b = await observeReads(w, f, env, 'b');
    if (!b.ok) return b;
    return { ok: true, value: { a: a.value, b: b.value } };
  },
  rules: [rule('stable bytes read the same in two fresh VMs', sameInBothVms)],
});

function* noHostPattern(reads: readonly ReadObservation[]): Iterable<Difference> {
  for (const r of reads) {
    const data = Uint8Array.from(r.prediction.dataOffsets.map((i) => r.bytes[i]!));
    const seen = findHostPattern(data);
    if (seen.length === 0) continue;
    yield difference(
      `${describeRead(r.op)} (${r.prediction.regions.join(', ')}) returned ${seen[0]!.length} bytes of the host leak pattern at data offset ${seen[0]!.offset}`,
      'no host pattern bytes',
      { read: r.op, data: hex(data), sightings: seen },
      { witness: readWitness(r.op) },
    );
  }
}

export const deviceReadsNoHostPattern = defineProperty({
  id: 'leaks.device.no-host-pattern',
  family: 'leaks',
  statement: 'No port or MMIO read ever returns the pattern the host filled and freed its memory with',
  facts,
  arbitrary: (f: MachineFacts) => deviceReadWorkloadArb(f.deviceMap),
  observe: observeOnce('workload'),
  rules: [rule('no read returns the host leak pattern', noHostPattern)],
});
