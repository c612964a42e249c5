/**
 * The output directory of `kvmprop run --out DIR`: checked and prepared before the run starts.
 *
 * Rule: kvmprop never deletes what it did not write. DIR must be new, empty, or hold an earlier
 * kvmprop result and nothing else: results.json (schema `kvmprop-results`), host.json, JSON files
 * directly in properties/ and counterexamples/, and a write probe this module may have left behind.
 * Only those files are removed (then the two folders, when empty); anything else makes it refuse,
 * naming what it found, before anything is touched. Every refusal is one line (OutDirError).
 *
 * Fast on odd paths: directories are created one level at a time (Node's recursive mkdir spins
 * forever on /proc/x, where mkdir fails with ENOENT under an existing parent), no walk goes below
 * properties/ and counterexamples/, and a walk stops after MAX_ENTRIES entries.
 */
import { randomBytes } from 'node:crypto';
import { closeSync, lstatSync, mkdirSync, openSync, opendirSync, readFileSync, realpathSync, rmdirSync, statSync, unlinkSync, writeSync, type Stats } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join, parse, resolve } from 'node:path';
import { PROJECT_ROOT } from '../harness/guest/build.js';
import { RESULTS_SCHEMA } from './schema.js';

export class OutDirError extends Error {
  override name = 'OutDirError';
  constructor(
    readonly dir: string,
    reason: string,
  ) {
    super(`--out ${dir}: ${reason}`);
  }
}

export type PreviousContent = 'none' | 'empty' | 'kvmprop';

/** More entries than a kvmprop result ever holds: refuse rather than walk a big tree. */
export const MAX_ENTRIES = 1000;
/** A results.json larger than this is not ours (ours are a few hundred KiB at most). */
const MAX_RESULTS_BYTES = 64 * 1024 * 1024;
const SUBDIRS = ['properties', 'counterexamples'] as const;
const PROBE_PREFIX = '.kvmprop-probe-';
const PROBE_RE = /^\.kvmprop-probe-\d+-[0-9a-f]{8}$/;
const CHOOSE = 'choose an empty or new directory';

/**
 * Validates DIR for a new run and prepares it: creates it when missing, removes an earlier
 * kvmprop result's files. Throws OutDirError (one line, nothing of the user's touched) otherwise.
 */
export function prepareOutDir(dir: string): { dir: string; previous: PreviousContent } {
  const abs = resolve(dir);
  refuseSpecial(abs);
  const st = statOrNull(abs, abs);
  if (st === null) {
    const created = createDir(abs);
    try {
      probeWrite(abs);
    } catch (e) {
      for (const d of created.reverse()) tryRmdir(d);
      throw e;
    }
    return { dir: abs, previous: 'none' };
  }
  if (!st.isDirectory()) {
    const kind = describeKind(st);
    throw new OutDirError(abs, `it is ${kind === 'not a directory' ? kind : `${kind}, not a directory`}; ${CHOOSE}`);
  }
  const scan = scanDir(abs);
  if (scan.foreign.length) {
    const shown = scan.foreign.slice(0, 3).join(', ') + (scan.foreign.length > 3 ? ', …' : '');
    throw new OutDirError(abs, `the directory holds files kvmprop did not write (${shown}); ${CHOOSE}`);
  }
  probeWrite(abs);
  if (scan.entries === 0) return { dir: abs, previous: 'empty' };
  for (const f of scan.ownFiles) {
    try {
      unlinkSync(f);
    } catch (e) {
      if (code(e) !== 'ENOENT') throw new OutDirError(abs, `cannot remove ${f} of the earlier kvmprop result (${errText(e)})`);
    }
  }
  for (const d of scan.ownDirs) tryRmdir(d);
  return { dir: abs, previous: 'kvmprop' };
}

function refuseSpecial(abs: string): void {
  const real = realOrSelf(abs);
  const same = (p: string) => abs === p || real === p || real === realOrSelf(p);
  if (abs === parse(abs).root || real === parse(real).root) {
    throw new OutDirError(abs, `refusing the root of the file system itself; ${CHOOSE}`);
  }
  const home = homedir();
  if (home && same(resolve(home))) {
    throw new OutDirError(abs, `refusing your home directory itself; choose a directory inside it, e.g. ${join(home, 'kvmprop-results')}`);
  }
  if (same(resolve(PROJECT_ROOT))) {
    throw new OutDirError(abs, `refusing kvmprop's own project directory; choose a directory inside it, e.g. ${join(resolve(PROJECT_ROOT), 'results')}`);
  }
}

/** stat(), or null when the path does not exist; other failures are refusals. */
function statOrNull(p: string, abs: string): Stats | null {
  try {
    return statSync(p);
  } catch (e) {
    const c = code(e);
    if (c === 'ENOENT') {
      const l = lstatOrNull(p);
      if (l?.isSymbolicLink()) throw new OutDirError(abs, `${p === abs ? 'it' : p} is a symbolic link to a missing target; ${CHOOSE}`);
      return null;
    }
    if (c === 'ENOTDIR') throw new OutDirError(abs, `${belowFile(p)}; ${CHOOSE}`);
    throw new OutDirError(abs, `cannot examine ${p} (${errText(e)}); choose another directory`);
  }
}

function lstatOrNull(p: string): Stats | null {
  try {
    return lstatSync(p);
  } catch {
    return null;
  }
}

/** Names the ancestor of P that is not a directory (P's stat failed with ENOTDIR). */
function belowFile(p: string): string {
  for (let a = dirname(p); a !== dirname(a); a = dirname(a)) {
    let st: Stats;
    try {
      st = statSync(a);
    } catch {
      continue;
    }
    if (!st.isDirectory()) return `the path lies below ${a}, which is ${describeKind(st)}`;
  }
  return 'a component of the path is not a directory';
}

/** Creates ABS one level at a time (no retries); returns the directories it created, outermost first. */
function createDir(abs: string): string[] {
  const missing: string[] = [abs];
  let parent = dirname(abs);
  for (;;) {
    const st = statOrNull(parent, abs);
    if (st !== null) {
      if (!st.isDirectory()) throw new OutDirError(abs, `the path lies below ${parent}, which is ${describeKind(st)}; ${CHOOSE}`);
      break;
    }
    if (parent === dirname(parent)) throw new OutDirError(abs, `no existing directory above it; ${CHOOSE}`);
    missing.unshift(parent);
    parent = dirname(parent);
  }
  const created: string[] = [];
  for (const d of missing) {
    try {
      mkdirSync(d);
      created.push(d);
    } catch (e) {
      for (const c of created.reverse()) tryRmdir(c);
      const c = code(e);
      const why =
        c === 'ENOENT'
          ? `the file system at ${dirname(d)} does not accept new directories`
          : c === 'EACCES' || c === 'EPERM'
            ? `no permission to create directories in ${dirname(d)}`
            : c === 'EROFS'
              ? `${dirname(d)} is on a read-only file system`
              : `mkdir ${d} failed`;
      throw new OutDirError(abs, `cannot create the directory: ${why} (${errText(e)}); choose another directory`);
    }
  }
  return created;
}

/** Creates and removes a small file in DIR: the run will write there. */
function probeWrite(dir: string): void {
  const probe = join(dir, `${PROBE_PREFIX}${process.pid}-${randomBytes(4).toString('hex')}`);
  try {
    const fd = openSync(probe, 'wx', 0o600);
    try {
      writeSync(fd, 'kvmprop write probe\n');
    } finally {
      closeSync(fd);
    }
    unlinkSync(probe);
  } catch (e) {
    try {
      unlinkSync(probe);
    } catch {
      /* it was never created */
    }
    const c = code(e);
    const why = c === 'EACCES' || c === 'EPERM' ? 'no permission to write there' : c === 'EROFS' ? 'read-only file system' : c === 'ENOSPC' ? 'no space left' : 'cannot write a file there';
    throw new OutDirError(dir, `the directory is not writable: ${why} (${errText(e)}); choose another directory`);
  }
}

interface Scan {
  /** Entries seen at the top level. */
  entries: number;
  /** Relative paths of what kvmprop did not write (at most 4 collected). */
  foreign: string[];
  ownFiles: string[];
  ownDirs: string[];
}

function scanDir(abs: string): Scan {
  const scan: Scan = { entries: 0, foreign: [], ownFiles: [], ownDirs: [] };
  let budget = MAX_ENTRIES;
  const full = () => scan.foreign.length > 3;
  const walk = (rel: string, visit: (name: string, path: string, st: Stats | null) => void) => {
    const path = rel ? join(abs, rel) : abs;
    let d;
    try {
      d = opendirSync(path);
    } catch (e) {
      throw new OutDirError(abs, `cannot read ${path} (${errText(e)}); ${CHOOSE}`);
    }
    try {
      for (let ent = d.readSync(); ent !== null && !full(); ent = d.readSync()) {
        if (--budget < 0) {
          throw new OutDirError(abs, `the directory holds more than ${MAX_ENTRIES} entries, more than a kvmprop result ever does; ${CHOOSE}`);
        }
        const p = join(path, ent.name);
        visit(ent.name, p, lstatOrNull(p));
      }
    } catch (e) {
      if (e instanceof OutDirError) throw e;
      throw new OutDirError(abs, `cannot read ${path} (${errText(e)}); ${CHOOSE}`);
    } finally {
      d.closeSync();
    }
  };
  walk('', (name, path, st) => {
    scan.entries++;
    if (st?.isFile() && name === 'results.json') {
      if (isKvmpropResults(path, st)) scan.ownFiles.push(path);
      else scan.foreign.push('results.json (not a kvmprop result)');
    } else if (st?.isFile() && (name === 'host.json' || PROBE_RE.test(name))) {
      scan.ownFiles.push(path);
    } else if (st?.isDirectory() && (SUBDIRS as readonly string[]).includes(name)) {
      scan.ownDirs.push(path);
      walk(name, (sub, subPath, subSt) => {
        if (subSt?.isFile() && sub.endsWith('.json')) scan.ownFiles.push(subPath);
        else scan.foreign.push(`${name}/${sub}${subSt?.isDirectory() ? '/' : ''}`);
      });
    } else {
      scan.foreign.push(`${name}${st?.isDirectory() ? '/' : ''}`);
    }
  });
  return scan;
}

function isKvmpropResults(path: string, st: Stats): boolean {
  if (st.size > MAX_RESULTS_BYTES) return false;
  try {
    const r = JSON.parse(readFileSync(path, 'utf8')) as unknown;
    return typeof r === 'object' && r !== null && (r as { schema?: unknown }).schema === RESULTS_SCHEMA;
  } catch {
    return false;
  }
}

function describeKind(st: Stats): string {
  if (st.isFile()) return 'a file';
  if (st.isSymbolicLink()) return 'a symbolic link';
  if (st.isSocket()) return 'a socket';
  if (st.isFIFO()) return 'a named pipe';
  if (st.isCharacterDevice() || st.isBlockDevice()) return 'a device';
  return 'not a directory';
}

function tryRmdir(d: string): void {
  try {
    rmdirSync(d);
  } catch {
    /* not empty (something else appeared there) or already gone: leave it */
  }
}

function realOrSelf(p: string): string {
  try {
    return realpathSync(p);
  } catch {
    return p;
  }
}

function code(e: unknown): string | undefined {
  return (e as NodeJS.ErrnoException | null)?.code;
}

function errText(e: unknown): string {
  const c = code(e);
  return c ?? (e as Error).message;
}
