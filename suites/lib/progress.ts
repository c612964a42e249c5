/**
 * Where a property is, for the CLI's progress display: each worker writes one small JSON file per
 * property into the run root (`progress/ID.json`, replaced atomically), the CLI reads them
 * (bin/progress.ts). Nothing is written outside a `kvmprop run` (no run root in the environment).
 */
import { mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import fc from 'fast-check';
import { RUNTIME_ROOT_ENV } from '../../harness/runtime.js';

export interface PropertyProgress {
  readonly id: string;
  readonly family: string;
  /** Cases run so far (shrinking included). */
  readonly done: number;
  /** Cases asked for (--runs); shrinking runs more. */
  readonly total: number;
  readonly phase: 'running' | 'shrinking';
  /** The case now running, shortened. */
  readonly current: string;
  readonly at: number;
}

export const PROGRESS_DIR = 'progress';
const MIN_INTERVAL_MS = 200;
const last = new Map<string, number>();

export function reportProgress(p: Omit<PropertyProgress, 'at' | 'current'> & { readonly case: unknown }): void {
  const root = process.env[RUNTIME_ROOT_ENV];
  if (!root) return;
  const now = Date.now();
  if (now - (last.get(p.id) ?? 0) < MIN_INTERVAL_MS) return;
  last.set(p.id, now);
  let current: string;
  try {
    current = fc.stringify(p.case).slice(0, 160);
  } catch {
    current = '';
  }
  const { case: _c, ...rest } = p;
  const rec: PropertyProgress = { ...rest, current, at: now };
  try {
    const dir = join(root, PROGRESS_DIR);
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const tmp = join(dir, `.${p.id}.${process.pid}.tmp`);
    writeFileSync(tmp, JSON.stringify(rec));
    renameSync(tmp, join(dir, `${p.id}.json`));
  } catch {
    /* progress is a display aid: never a reason to fail a case */
  }
}
