import { describe, expect, it } from 'vitest';
import { baseRetryDelay, resolveRetryPolicy, retryDelay, shouldRetry } from '../../src/core/retry-policy.js';
import { NonRetryableError } from '../../src/errors.js';

describe('retry policy', () => {
  const policy = resolveRetryPolicy({ maximumAttempts: 5, initialIntervalMs: 100, backoffCoefficient: 2, maximumIntervalMs: 500, jitter: 0.5 }, 'test');

  it('grows exponentially and caps at maximumIntervalMs', () => {
    expect([1, 2, 3, 4, 5].map((n) => baseRetryDelay(policy, n))).toEqual([100, 200, 400, 500, 500]);
  });

  it('spreads delays by the jitter fraction', () => {
    expect(retryDelay(policy, 2, () => 0)).toBe(100);
    expect(retryDelay(policy, 2, () => 0.5)).toBe(200);
    expect(retryDelay(policy, 2, () => 0.999999)).toBe(300);
    expect(retryDelay({ ...policy, jitter: 0 }, 3, () => 0.9)).toBe(400);
  });

  it('stops at maximumAttempts, on NonRetryableError, listed names or codes, and the predicate', () => {
    expect(shouldRetry(policy, new Error('x'), 4)).toBe(true);
    expect(shouldRetry(policy, new Error('x'), 5)).toBe(false);
    expect(shouldRetry(policy, new NonRetryableError('no'), 1)).toBe(false);
    const listed = resolveRetryPolicy({ nonRetryableErrors: ['QuotaError', 'E_AUTH'] }, 'test');
    const named = Object.assign(new Error('q'), { name: 'QuotaError' });
    const coded = Object.assign(new Error('a'), { code: 'E_AUTH' });
    expect(shouldRetry(listed, named, 1)).toBe(false);
    expect(shouldRetry(listed, coded, 1)).toBe(false);
    expect(shouldRetry(listed, new Error('other'), 1)).toBe(true);
    const predicate = resolveRetryPolicy({ isRetryable: (e) => (e as Error).message !== 'fatal' }, 'test');
    expect(shouldRetry(predicate, new Error('fatal'), 1)).toBe(false);
    expect(shouldRetry(predicate, new Error('transient'), 1)).toBe(true);
  });
});
