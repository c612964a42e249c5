#!/usr/bin/env node
/**
 * Idempotent set-up behind `npm start` and `npm test`, for a fresh Debian 12 machine:
 *  1. system packages (QEMU, gcc, binutils; chromium for the HTML report's browser test):
 *     installed with apt when run as root; otherwise the exact command is printed and the script
 *     fails;
 *  2. `npm ci`, skipped when node_modules already matches package-lock.json;
 *  3. the guest, built with the system gcc (cached by a hash of its sources).
 *
 * Plain Node on purpose: it runs before node_modules exists, so it cannot use zx or tsx yet.
 * Every command is an argument array, never a shell string.
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');

/**
 * Debian package → what kvmprop needs from it: commands on PATH and files. (apt runs with
 * --no-install-recommends, so nothing arrives by recommendation: gcc alone brings no C headers.)
 */
const PACKAGES = [
  { pkg: 'qemu-system-x86', commands: ['qemu-system-x86_64'], files: [] },
  // qboot (pc/q35 firmware) and the PVH/microvm option ROMs.
  { pkg: 'qemu-system-data', commands: [], files: ['/usr/share/qemu/qboot.rom', '/usr/share/qemu/bios-microvm.bin'] },
  { pkg: 'gcc', commands: ['gcc'], files: [] },
  { pkg: 'binutils', commands: ['ld', 'objcopy'], files: [] },
  // The host probe (harness/probe/kvmcaps.c) includes <linux/kvm.h> and libc headers.
  { pkg: 'libc6-dev', commands: [], files: ['/usr/include/stdio.h'] },
  { pkg: 'linux-libc-dev', commands: [], files: ['/usr/include/linux/kvm.h'] },
  { pkg: 'util-linux', commands: ['setpriv'], files: [] },
  // The HTML report's browser test (reports/html.browser.test.ts) drives it with playwright-core.
  { pkg: 'chromium', commands: ['chromium'], files: ['/usr/bin/chromium'] },
];

function log(msg) {
  process.stderr.write(`setup: ${msg}\n`);
}

function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { stdio: 'inherit', cwd: root, ...opts });
  if (r.error) throw new Error(`${cmd}: ${r.error.message}`);
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} exited with status ${r.status}`);
}

function onPath(bin) {
  return spawnSync('sh', ['-c', 'command -v "$1"', 'sh', bin], { stdio: 'ignore' }).status === 0;
}

function ensureSystemPackages() {
  const missing = PACKAGES.filter((p) => !p.commands.every(onPath) || !p.files.every((f) => existsSync(f))).map((p) => p.pkg);
  if (missing.length === 0) return;
  const install = ['apt-get', 'install', '-y', '--no-install-recommends', ...missing];
  if (process.getuid?.() !== 0) {
    log(`missing system packages: ${missing.join(', ')}`);
    log(`run: sudo ${install.join(' ')}`);
    process.exit(1);
  }
  log(`installing ${missing.join(', ')}`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  // A fresh image may have no package lists yet; an update is cheap next to QEMU itself.
  run('apt-get', ['update'], { env });
  run(install[0], install.slice(1), { env });
}

function ensureNodeModules() {
  const lock = readFileSync(join(root, 'package-lock.json'));
  const want = createHash('sha256').update(lock).digest('hex');
  const stamp = join(root, 'node_modules', '.kvmprop-lock-sha256');
  if (existsSync(stamp) && readFileSync(stamp, 'utf8').trim() === want) return;
  log('npm ci');
  run('npm', ['ci', '--no-audit', '--no-fund']);
  writeFileSync(stamp, want + '\n');
}

function buildGuest() {
  run(process.execPath, [join(root, 'bin', 'kvmprop.mjs'), 'build']);
}

function checkKvm() {
  if (!existsSync('/dev/kvm')) log('warning: /dev/kvm is missing; runs need --accel tcg (kvmprop doctor explains)');
}

try {
  ensureSystemPackages();
  ensureNodeModules();
  buildGuest();
  checkKvm();
} catch (e) {
  log(e.message);
  process.exit(1);
}
