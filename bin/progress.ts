/**
 * What a running `kvmprop run` shows while vitest works: which property is at which case
 * (suites/lib/progress.ts writes it into the run root), each property as it finishes, and, with
 * --ktap, the KTAP stream on stdout. On a terminal one status line is redrawn; in CI (no TTY)
 * plain lines: each finished property, and every 30 s each running one.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { PropertyResult } from '../reports/schema.js';
import { readPropertyRecords } from '../reports/results.js';
import type { KtapStream } from '../reports/ktap.js';
import { PROGRESS_DIR, type PropertyProgress } from '../suites/lib/progress.js';

export interface RunWatchOptions {
  readonly out: string;
  readonly root: string;
  readonly expected: readonly string[];
  /** Where the status goes (stderr). */
  readonly status: NodeJS.WriteStream | { write(s: string): unknown; isTTY?: boolean; columns?: number };
  readonly ktap?: KtapStream;
  readonly intervalMs?: number;
  readonly plainEveryMs?: number;
  readonly now?: () => number;
}

export function readProgress(root: string): PropertyProgress[] {
  const dir = join(root, PROGRESS_DIR);
  if (!existsSync(dir)) return [];
  const out: PropertyProgress[] = [];
  for (const f of readdirSync(dir)) {
    if (!f.endsWith('.json') || f.startsWith('.')) continue;
    try {
      out.push(JSON.parse(readFileSync(join(dir, f), 'utf8')) as PropertyProgress);
    } catch {
      /* being replaced: next tick */
    }
  }
  return out;
}

const statusWord = (p: PropertyResult) => p.status.toUpperCase();

/** One status line for a terminal: finished/selected, then the most recent running property. */
export function statusLine(finished: number, total: number, running: readonly PropertyProgress[], width = 100): string {
  const latest = [...running].sort((a, b) => b.at - a.at)[0];
  const head = `[${finished}/${total} properties]`;
  if (!latest) return head.slice(0, width);
  const line = `${head} ${latest.id}: case ${latest.done}/${latest.total}${latest.phase === 'shrinking' ? ' (shrinking)' : ''} ${latest.current}`;
  return line.replace(/[\x00-\x1f\x7f]/g, ' ').slice(0, Math.max(20, width - 1));
}

export function watchRun(o: RunWatchOptions): { tick(): void; stop(): void } {
  const tty = !!o.status.isTTY;
  const now = o.now ?? Date.now;
  const finished = new Set<string>();
  const lastPlain = new Map<string, number>();
  let drawn = false;
  const clear = () => {
    if (tty && drawn) o.status.write('\r\x1b[K');
    drawn = false;
  };
  const tick = () => {
    let records: PropertyResult[] = [];
    try {
      records = readPropertyRecords(o.out);
    } catch {
      /* a record being written: next tick */
    }
    for (const p of records) {
      if (finished.has(p.id)) continue;
      finished.add(p.id);
      clear();
      o.ktap?.property(p);
      o.status.write(`kvmprop: ${statusWord(p)} ${p.id} (${finished.size}/${o.expected.length} properties)\n`);
    }
    const running = readProgress(o.root).filter((p) => !finished.has(p.id));
    if (tty) {
      clear();
      if (running.length) {
        o.status.write(statusLine(finished.size, o.expected.length, running, o.status.columns ?? 100));
        drawn = true;
      }
    } else {
      for (const p of running) {
        const t = now();
        if (t - (lastPlain.get(p.id) ?? 0) < (o.plainEveryMs ?? 30_000)) continue;
        lastPlain.set(p.id, t);
        o.status.write(`kvmprop: ${p.id}: case ${p.done}/${p.total}${p.phase === 'shrinking' ? ' (shrinking)' : ''}\n`);
      }
    }
  };
  const timer = setInterval(tick, o.intervalMs ?? 1000);
  timer.unref();
  return {
    tick,
    stop() {
      clearInterval(timer);
      tick();
      clear();
    },
  };
}
