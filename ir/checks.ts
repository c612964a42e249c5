/**
 * Self-checks a program can carry (kvmprop repro): each says which value of the guest's own
 * observations to compare with what, and its TAP name. The guest evaluates them after every thread
 * has ended and prints one TAP line each on COM1, so a program judges itself with no host
 * harness: the model's expected values travel in the program (harness/bytecode.ts encodes them,
 * harness/guest/src/main.c run_checks evaluates them).
 *
 * A field is named by its thread, the record's index among that thread's records (execution order,
 * loops unrolled, as decodeRecords numbers them) and a field of the record: one of the header's
 * (faultVector, errorCode, flags) or one of the op's result fields (ir/ops.ts). Comparisons are
 * masked: `(value & mask) == (expected & mask)`; the guest prints both sides as
 * `(x & mask) >> ctz(mask)`, so a name like `CPUID(0x1).EBX[31:24]` reads naturally.
 *
 *  - value:  a record field equals `expected`;
 *  - diff:   a record field minus another of the same thread equals `expected` (a RIP as an offset
 *            into the code the record also reports, the exception count an op added);
 *  - same:   a record field equals another record field, of any thread (the same query on another
 *            vCPU, a repeat);
 *  - status: a field of the thread's final status (harness/guest/abi.ts thread_status, e.g.
 *            `state` = THREAD_STATE.done) equals `expected`.
 * A record that does not exist (its thread ended before it) fails its check, with that as the reason.
 */
export const HEADER_FIELDS = ['faultVector', 'errorCode', 'flags'] as const;
export type HeaderField = (typeof HEADER_FIELDS)[number];

export interface FieldRef {
  readonly thread: number;
  /** Index among the thread's records, in execution order. */
  readonly record: number;
  /** A header field or a result field of the record's op. */
  readonly field: string;
}

interface CheckBase {
  /** The TAP test's name: printable ASCII (the encoder replaces anything else), at most MAX_CHECK_NAME bytes. */
  readonly name: string;
  /** Bits compared (default all). */
  readonly mask?: bigint;
}

export type Check =
  | (CheckBase & { readonly kind: 'value'; readonly at: FieldRef; readonly expected: bigint })
  | (CheckBase & { readonly kind: 'diff'; readonly at: FieldRef; readonly minus: FieldRef; readonly expected: bigint })
  | (CheckBase & { readonly kind: 'same'; readonly at: FieldRef; readonly as: FieldRef })
  | (CheckBase & { readonly kind: 'status'; readonly thread: number; readonly field: string; readonly expected: bigint });

export const MAX_CHECK_NAME = 200;
export const MAX_CHECKS = 4096;

/**
 * A name the guest can print as it is: printable ASCII only (anything else becomes `?`), trimmed to
 * MAX_CHECK_NAME, with TAP 13's escapes for `#` (which would start a directive: `\#UD`) and `\`.
 */
export function sanitizeCheckName(name: string): string {
  const clean = name.replace(/[^\x20-\x7e]/g, '?').trim().slice(0, MAX_CHECK_NAME);
  let out = '';
  for (const ch of clean || 'check') {
    const esc = ch === '#' || ch === '\\' ? `\\${ch}` : ch;
    if (out.length + esc.length > MAX_CHECK_NAME) break;
    out += esc;
  }
  return out;
}

/** A mask's bit range for names: `[31:24]`, `[5]`, or `&0x...` when not contiguous; '' for all 64 bits. */
export function maskText(mask: bigint, width = 64): string {
  const all = (1n << BigInt(width)) - 1n;
  if ((mask & all) === all) return '';
  if (mask === 0n) return '&0x0';
  let lo = 0;
  while (((mask >> BigInt(lo)) & 1n) === 0n) lo++;
  let hi = lo;
  while (((mask >> BigInt(hi + 1)) & 1n) === 1n) hi++;
  if (mask >> BigInt(hi + 1) !== 0n) return `&0x${mask.toString(16)}`;
  return hi === lo ? `[${lo}]` : `[${hi}:${lo}]`;
}
