import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PROJECT_ROOT } from '../harness/guest/build.js';
import { MAX_ENTRIES, OutDirError, prepareOutDir } from './outdir.js';
import { RESULTS_SCHEMA } from './schema.js';

let tmp: string;
let n = 0;
const fresh = () => join(tmp, `case-${n++}`);

/** What a finished kvmprop run leaves behind. */
function writeEarlierResult(dir: string): void {
  mkdirSync(join(dir, 'properties'), { recursive: true });
  mkdirSync(join(dir, 'counterexamples'), { recursive: true });
  writeFileSync(join(dir, 'results.json'), JSON.stringify({ schema: RESULTS_SCHEMA, version: 1 }) + '\n');
  writeFileSync(join(dir, 'host.json'), '{}\n');
  writeFileSync(join(dir, 'properties', 'leaks.cpuid.rules.json'), '{}\n');
  writeFileSync(join(dir, 'counterexamples', 'leaks.cpuid.rules.json'), '{}\n');
}

function refusal(dir: string): OutDirError {
  try {
    prepareOutDir(dir);
  } catch (e) {
    expect(e).toBeInstanceOf(OutDirError);
    expect((e as Error).message).not.toContain('\n');
    expect((e as Error).message.startsWith(`--out `)).toBe(true);
    return e as OutDirError;
  }
  throw new Error(`prepareOutDir(${dir}) did not refuse`);
}

beforeAll(() => {
  tmp = mkdtempSync(join(tmpdir(), 'kvmprop-outdir-'));
});
afterAll(() => {
  rmSync(tmp, { recursive: true, force: true });
});

describe('prepareOutDir', () => {
  it('creates a new directory, parents included', () => {
    const dir = join(fresh(), 'a', 'b');
    expect(prepareOutDir(dir)).toEqual({ dir, previous: 'none' });
    expect(readdirSync(dir)).toEqual([]);
  });

  it('accepts an empty directory and leaves it empty', () => {
    const dir = fresh();
    mkdirSync(dir);
    expect(prepareOutDir(dir)).toEqual({ dir, previous: 'empty' });
    expect(readdirSync(dir)).toEqual([]);
  });

  it('resolves a relative path', () => {
    const dir = fresh();
    mkdirSync(dir);
    const cwd = process.cwd();
    process.chdir(tmp);
    try {
      expect(prepareOutDir(dir.slice(tmp.length + 1)).dir).toBe(dir);
    } finally {
      process.chdir(cwd);
    }
  });

  it("removes an earlier kvmprop result's files, and only those", () => {
    const dir = fresh();
    writeEarlierResult(dir);
    expect(prepareOutDir(dir)).toEqual({ dir, previous: 'kvmprop' });
    expect(readdirSync(dir)).toEqual([]);
  });

  it('accepts the leftovers of an interrupted run (no results.json)', () => {
    const dir = fresh();
    writeEarlierResult(dir);
    rmSync(join(dir, 'results.json'));
    expect(prepareOutDir(dir).previous).toBe('kvmprop');
    expect(readdirSync(dir)).toEqual([]);
  });

  it('refuses an earlier result with a foreign file alongside, touching nothing', () => {
    const dir = fresh();
    writeEarlierResult(dir);
    writeFileSync(join(dir, 'properties', 'thesis.txt'), 'years of work\n');
    const e = refusal(dir);
    expect(e.message).toContain('properties/thesis.txt');
    expect(e.message).toContain('did not write');
    expect(existsSync(join(dir, 'properties', 'thesis.txt'))).toBe(true);
    expect(existsSync(join(dir, 'properties', 'leaks.cpuid.rules.json'))).toBe(true);
    expect(existsSync(join(dir, 'results.json'))).toBe(true);
    expect(existsSync(join(dir, 'host.json'))).toBe(true);
  });

  it("refuses a user's directory, lists at most 3 offenders, leaves it untouched", () => {
    const dir = fresh();
    mkdirSync(join(dir, 'properties'), { recursive: true });
    mkdirSync(join(dir, 'notes'));
    writeFileSync(join(dir, 'properties', 'thesis.txt'), 'years of work\n');
    for (const f of ['a.txt', 'b.txt', 'c.txt']) writeFileSync(join(dir, f), 'x');
    const e = refusal(dir);
    expect(e.message).toMatch(/\(([^,()]+, ){2}[^,()]+, …\)/);
    expect(existsSync(join(dir, 'properties', 'thesis.txt'))).toBe(true);
    expect(readdirSync(dir).sort()).toEqual(['a.txt', 'b.txt', 'c.txt', 'notes', 'properties']);
  });

  it('refuses a results.json that is not a kvmprop result', () => {
    const dir = fresh();
    mkdirSync(dir);
    writeFileSync(join(dir, 'results.json'), JSON.stringify({ schema: 'someone-else' }));
    expect(refusal(dir).message).toContain('results.json (not a kvmprop result)');
    expect(existsSync(join(dir, 'results.json'))).toBe(true);
  });

  it('refuses a symbolic link named properties (it may point at anything)', () => {
    const dir = fresh();
    const elsewhere = fresh();
    mkdirSync(elsewhere);
    writeFileSync(join(elsewhere, 'mine.json'), '{}');
    mkdirSync(dir);
    symlinkSync(elsewhere, join(dir, 'properties'));
    expect(refusal(dir).message).toContain('properties');
    expect(existsSync(join(elsewhere, 'mine.json'))).toBe(true);
  });

  it(`refuses a directory of more than ${MAX_ENTRIES} entries`, () => {
    const dir = fresh();
    mkdirSync(join(dir, 'properties'), { recursive: true });
    for (let i = 0; i <= MAX_ENTRIES; i++) writeFileSync(join(dir, 'properties', `p${i}.json`), '{}');
    expect(refusal(dir).message).toContain(`more than ${MAX_ENTRIES} entries`);
    expect(readdirSync(join(dir, 'properties'))).toHaveLength(MAX_ENTRIES + 1);
  });

  it('refuses a file', () => {
    const file = join(fresh());
    writeFileSync(file, 'data');
    expect(refusal(file).message).toContain('it is a file, not a directory');
    expect(existsSync(file)).toBe(true);
  });

  it('refuses a path below a file', () => {
    const file = fresh();
    writeFileSync(file, 'data');
    expect(refusal(join(file, 'x')).message).toContain(`below ${file}, which is a file`);
    expect(refusal(join(file, 'x', 'y')).message).toContain(`below ${file}, which is a file`);
  });

  it('refuses /proc/x at once, in one line', () => {
    const t0 = Date.now();
    const e = refusal('/proc/x');
    expect(Date.now() - t0).toBeLessThan(2000);
    expect(e.message).toContain('cannot create');
    expect(e.message).toContain('ENOENT');
  });

  it('refuses /proc and /sys themselves (foreign content)', () => {
    expect(refusal('/proc').message).toContain('did not write');
    expect(refusal('/sys').message).toContain('did not write');
  });

  it.skipIf(process.getuid?.() === 0)('refuses an unwritable directory', () => {
    const dir = fresh();
    mkdirSync(dir);
    chmodSync(dir, 0o500);
    try {
      expect(refusal(dir).message).toContain('not writable');
      expect(refusal(join(dir, 'sub')).message).toContain('cannot create');
    } finally {
      chmodSync(dir, 0o700);
    }
  });

  it("refuses '/', the home directory and the project root, saying why", () => {
    expect(refusal('/').message).toContain('root of the file system');
    expect(refusal(homedir()).message).toMatch(/home directory|root of the file system/); // HOME may be /
    expect(refusal(PROJECT_ROOT).message).toContain('project directory');
  });
});
