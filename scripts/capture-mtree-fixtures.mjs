#!/usr/bin/env node
/**
 * Regenerates harness/fixtures/mtree-*.txt: QEMU's own `info mtree -f` for each machine type (and
 * a pc with a file-backed pc-dimm, as the leaky-dimm mutant builds it), the real input the mtree
 * parser's tests read. Run after a QEMU upgrade, review the diff, commit.
 *
 *   node scripts/capture-mtree-fixtures.mjs [--qemu PATH]
 * (zx quotes every interpolated argument; nothing here takes input from outside the repository.)
 */
import { $, argv, fs, path, tmpdir } from 'zx';

$.quiet = true;
const root = path.join(import.meta.dirname, '..');
const qemu = argv.qemu ?? process.env.KVMPROP_QEMU ?? 'qemu-system-x86_64';
const elf = (await $({ cwd: root })`node bin/kvmprop.mjs build`).stdout.trim().split(': ').pop();
const work = tmpdir('kvmprop-mtree');
const dimm = path.join(work, 'dimm.bin');
await fs.writeFile(dimm, Buffer.alloc(2 << 20));

const common = ['-accel', 'kvm', '-cpu', 'host', '-smp', '2', '-nodefaults', '-no-user-config', '-display', 'none', '-S', '-monitor', 'stdio', '-serial', 'null', '-kernel', elf];
const machines = {
  microvm: ['-M', 'microvm', '-m', '64M', '-device', 'isa-debug-exit,iobase=0xf4,iosize=4'],
  pc: ['-M', 'pc', '-m', '64M', '-bios', 'qboot.rom', '-device', 'isa-debug-exit,iobase=0xf4,iosize=4'],
  q35: ['-M', 'q35', '-m', '64M', '-bios', 'qboot.rom', '-device', 'isa-debug-exit,iobase=0xf4,iosize=4'],
  'pc-dimm': ['-M', 'pc', '-m', '64M,slots=1,maxmem=1G', '-bios', 'qboot.rom', '-object', `memory-backend-file,id=leak,size=2M,mem-path=${dimm},share=on`, '-device', 'pc-dimm,memdev=leak'],
};
try {
  for (const [name, args] of Object.entries(machines)) {
    const out = await $({ input: 'info mtree -f\nquit\n' })`${qemu} ${args} ${common}`;
    const text = out.stdout.replace(/\r/g, '').split('\n').filter((l) => !l.startsWith('(qemu)') && !/^QEMU .*monitor/.test(l)).join('\n');
    await fs.writeFile(path.join(root, 'harness', 'fixtures', `mtree-${name}.txt`), text);
    console.log(`mtree-${name}.txt: ${text.split('\n').length} lines`);
  }
} finally {
  await fs.remove(work);
}
