import { describe, expect, it } from 'vitest';
import { maskText, sanitizeCheckName, MAX_CHECK_NAME } from './checks.js';

describe('check names', () => {
  it('keep printable ASCII, replace the rest and the TAP directive marker', () => {
    expect(sanitizeCheckName('CPUID(0x1).EBX[31:24]')).toBe('CPUID(0x1).EBX[31:24]');
    expect(sanitizeCheckName('a\nb\x1b[31mc # TODO')).toBe('a?b?[31mc \\# TODO');
    expect(sanitizeCheckName('vector #UD, a\\b')).toBe('vector \\#UD, a\\\\b');
    expect(sanitizeCheckName('   ')).toBe('check');
    expect(sanitizeCheckName('x'.repeat(500))).toHaveLength(MAX_CHECK_NAME);
  });
  it('describe a mask as its bit range', () => {
    expect(maskText(0xff000000n)).toBe('[31:24]');
    expect(maskText(1n << 5n)).toBe('[5]');
    expect(maskText(0x101n)).toBe('&0x101');
    expect(maskText((1n << 64n) - 1n)).toBe('');
    expect(maskText(0xffffffffn, 32)).toBe('');
  });
});
