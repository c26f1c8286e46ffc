/**
 * The command lines of `npm run bench` and `npm run bench:compare`: defaults,
 * lists, and bad input refused with a `UsageError` naming the option.
 */
import { describe, expect, it } from 'vitest';
import { parseBenchOptions, parseCompareOptions, UsageError } from '../../bench/options.js';
import { STORE_KINDS } from '../../bench/store-kinds.js';

function usageError(run: () => unknown): string {
  try {
    run();
  } catch (err) {
    expect(err).toBeInstanceOf(UsageError);
    return (err as Error).message;
  }
  throw new Error('expected a UsageError');
}

describe('npm run bench options', () => {
  it('defaults to every store at 1 and 32 clients, and keeps each listed store and client count once, in order', () => {
    const defaults = parseBenchOptions([]);
    expect(defaults).toMatchObject({ stores: [...STORE_KINDS], clients: [1, 32], workflows: 2000, processes: 3, reference: true });
    expect(parseBenchOptions(['--stores', 'sqlite, memory,sqlite', '--clients', '8,1,8', '--no-reference'])).toMatchObject({
      stores: ['sqlite', 'memory'],
      clients: [8, 1],
      reference: false,
    });
    expect(parseBenchOptions(['--help'])).toBe('help');
  });

  it('refuses unknown stores, bad numbers and unknown options, naming them', () => {
    expect(usageError(() => parseBenchOptions(['--stores', 'mysql']))).toContain('--stores: unknown store "mysql"');
    expect(usageError(() => parseBenchOptions(['--clients', '1,0']))).toContain('--clients must be an integer >= 1, got "0"');
    expect(usageError(() => parseBenchOptions(['--workflows', '2.5']))).toContain('--workflows');
    expect(usageError(() => parseBenchOptions(['--wakeups', 'often']))).toContain('--wakeups');
    expect(usageError(() => parseBenchOptions(['--verbose']))).toContain('--verbose');
  });
});

describe('npm run bench:compare options', () => {
  it('takes one revision, with the Postgres kinds at 1 and 32 clients by default', () => {
    expect(parseCompareOptions(['HEAD~1'])).toEqual({
      revision: 'HEAD~1',
      stores: ['postgres', 'postgres-group'],
      clients: [1, 32],
      rounds: 8,
      workflows: null,
      warmup: 300,
    });
    expect(parseCompareOptions(['v0.1.0', '--stores', 'sqlite-group,memory', '--clients', '32,32', '--rounds', '12', '--workflows', '500', '--warmup', '0'])).toEqual({
      revision: 'v0.1.0',
      stores: ['sqlite-group', 'memory'],
      clients: [32],
      rounds: 12,
      workflows: 500,
      warmup: 0,
    });
    expect(parseCompareOptions(['-h'])).toBe('help');
  });

  it('refuses a missing or second revision, unknown stores, bad numbers and unknown options, naming them', () => {
    expect(usageError(() => parseCompareOptions([]))).toContain('expected one revision to compare with, got none');
    expect(usageError(() => parseCompareOptions(['a', 'b']))).toContain('got a b');
    expect(usageError(() => parseCompareOptions(['HEAD', '--stores', 'postgres,pg']))).toContain('--stores: unknown store "pg"');
    expect(usageError(() => parseCompareOptions(['HEAD', '--rounds', '0']))).toContain('--rounds must be an integer >= 1, got "0"');
    expect(usageError(() => parseCompareOptions(['HEAD', '--clients', 'x']))).toContain('--clients');
    expect(usageError(() => parseCompareOptions(['HEAD', '--round', '3']))).toContain('--round');
  });
});
