import { describe, expect, it } from 'vitest';
import { CP, DOUBLE_FAULT_ERROR_CODE, VE, VECTORS, classOfVector, combine, mnemonic, vectorInfo, type FaultClass, type VectorClassSwitches } from './classes.js';

const SDM: VectorClassSwitches = { virtualizationExceptionClass: 'page-fault', controlProtectionClass: 'contributory' };
const AMD: VectorClassSwitches = { virtualizationExceptionClass: 'benign', controlProtectionClass: 'contributory' };

describe('the vector table', () => {
  it('has an entry for every vector 0–31, in order', () => {
    expect(VECTORS.map((v) => v.vector)).toEqual(Array.from({ length: 32 }, (_, i) => i));
    expect(() => vectorInfo(32)).toThrow();
  });

  it('pushes an error code exactly for #DF, #TS, #NP, #SS, #GP, #PF, #AC, #CP and AMD’s #VC, #SX', () => {
    expect(VECTORS.filter((v) => v.pushesErrorCode).map((v) => v.vector)).toEqual([8, 10, 11, 12, 13, 14, 17, 21, 29, 30]);
  });

  it('names the mnemonics the manuals use', () => {
    const m = [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 16, 17, 18, 19, 20, 21].map(mnemonic);
    expect(m).toEqual(['#DE', '#DB', 'NMI', '#BP', '#OF', '#BR', '#UD', '#NM', '#DF', '#TS', '#NP', '#SS', '#GP', '#PF', '#MF', '#AC', '#MC', '#XM', '#VE', '#CP']);
    expect(mnemonic(0x80)).toBe('INT 0x80');
  });

  it('kinds: #BP and #OF are traps, #DF and #MC aborts, #DB either, NMI an interrupt', () => {
    const kinds = Object.fromEntries(VECTORS.map((v) => [v.mnemonic, v.kind]));
    expect([kinds['#BP'], kinds['#OF'], kinds['#DF'], kinds['#MC'], kinds['#DB'], kinds['NMI']]).toEqual(['trap', 'trap', 'abort', 'abort', 'fault-or-trap', 'interrupt']);
    expect(['#DE', '#UD', '#GP', '#PF', '#AC', '#XM'].every((m) => kinds[m] === 'fault')).toBe(true);
  });

  it('#DF pushes 0', () => {
    expect(DOUBLE_FAULT_ERROR_CODE).toBe(0);
  });
});

describe('classes (SDM Table 6-4)', () => {
  it('contributory: #DE #TS #NP #SS #GP #CP; page fault: #PF (#VE on Intel); #DF its own; the rest benign', () => {
    const byClass = (sw: VectorClassSwitches, c: FaultClass) => VECTORS.filter((v) => classOfVector(v.vector, sw) === c).map((v) => v.vector);
    expect(byClass(SDM, 'contributory')).toEqual([0, 10, 11, 12, 13, 21]);
    expect(byClass(SDM, 'page-fault')).toEqual([14, 20]);
    expect(byClass(SDM, 'double-fault')).toEqual([8]);
    expect(byClass(AMD, 'page-fault')).toEqual([14]);
  });

  it('the #VE and #CP switches', () => {
    expect(classOfVector(VE, { virtualizationExceptionClass: 'benign', controlProtectionClass: 'contributory' })).toBe('benign');
    expect(classOfVector(CP, { virtualizationExceptionClass: 'page-fault', controlProtectionClass: 'benign' })).toBe('benign');
  });
});

describe('combining (SDM Table 6-5, APM §8.2.9)', () => {
  const table: [FaultClass, Exclude<FaultClass, 'double-fault'>, string][] = [
    ['benign', 'benign', 'serial'],
    ['benign', 'contributory', 'serial'],
    ['benign', 'page-fault', 'serial'],
    ['contributory', 'benign', 'serial'],
    ['contributory', 'contributory', 'double-fault'],
    ['contributory', 'page-fault', 'serial'],
    ['page-fault', 'benign', 'serial'],
    ['page-fault', 'contributory', 'double-fault'],
    ['page-fault', 'page-fault', 'double-fault'],
    ['double-fault', 'benign', 'shutdown'],
    ['double-fault', 'contributory', 'shutdown'],
    ['double-fault', 'page-fault', 'shutdown'],
  ];
  it.each(table)('%s then %s → %s', (first, second, expected) => {
    expect(combine(first, second)).toBe(expected);
  });
});
