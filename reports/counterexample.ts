/**
 * Counterexample files: the shrunk workload, what the model expected and what the guest observed,
 * with everything needed to replay it. JSON cannot hold bigint or bytes, so they are tagged:
 * {"$bigint": "0x..."} and {"$bytes": "hex"}.
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';

export const COUNTEREXAMPLE_SCHEMA = 'kvmprop-counterexample';

export interface Counterexample {
  readonly schema: typeof COUNTEREXAMPLE_SCHEMA;
  readonly version: 1;
  readonly property: string;
  readonly family: string;
  readonly statement: string;
  /** The property's rule that caught it ('the case runs to completion' when the run itself ended it). */
  readonly rule: string;
  readonly seed: number;
  readonly path: string;
  /** Stateful properties: fast-check's replayPath of the shrunk commands. */
  readonly replayPath?: string;
  readonly replay: string;
  /** The run options the property ran under (machine, accel, qemu, extra args, ...). */
  readonly options: unknown;
  readonly hostId: string;
  readonly summary: string;
  readonly workload: unknown;
  /** When the saved workload is the failure's one-element witness: fast-check's shrunk case, which seed+path replays. */
  readonly fastCheckCounterexample?: unknown;
  readonly expected: unknown;
  readonly observed: unknown;
  /** Evidence beyond the comparison: QEMU's dump, registers, serial tail. */
  readonly evidence?: unknown;
  readonly createdAt: string;
}

export function toJsonValue(v: unknown): unknown {
  if (typeof v === 'bigint') return { $bigint: v < 0n ? `-0x${(-v).toString(16)}` : `0x${v.toString(16)}` };
  if (v instanceof Uint8Array) return { $bytes: Buffer.from(v).toString('hex') };
  if (Array.isArray(v)) return v.map(toJsonValue);
  if (v && typeof v === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) if (x !== undefined) out[k] = toJsonValue(x);
    return out;
  }
  return v;
}

export function fromJsonValue(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(fromJsonValue);
  if (v && typeof v === 'object') {
    const o = v as Record<string, unknown>;
    if (typeof o.$bigint === 'string' && Object.keys(o).length === 1) {
      return o.$bigint.startsWith('-') ? -BigInt(o.$bigint.slice(1)) : BigInt(o.$bigint);
    }
    if (typeof o.$bytes === 'string' && Object.keys(o).length === 1) return Uint8Array.from(Buffer.from(o.$bytes, 'hex'));
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(o)) out[k] = fromJsonValue(x);
    return out;
  }
  return v;
}

export function writeCounterexample(file: string, c: Counterexample): void {
  mkdirSync(dirname(file), { recursive: true });
  writeFileSync(file, JSON.stringify(toJsonValue(c), null, 2) + '\n');
}

export class CounterexampleError extends Error {
  override name = 'CounterexampleError';
}

export function readCounterexample(file: string): Counterexample {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new CounterexampleError(`cannot read ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new CounterexampleError(`${file} is not valid JSON: ${(e as Error).message}`);
  }
  const c = fromJsonValue(raw) as Partial<Counterexample>;
  if (c?.schema !== COUNTEREXAMPLE_SCHEMA || c.version !== 1) throw new CounterexampleError(`${file} is not a kvmprop counterexample (schema/version)`);
  if (typeof c.property !== 'string' || c.workload === undefined) throw new CounterexampleError(`${file} has no property or workload`);
  return c as Counterexample;
}
