import { z } from 'zod';
import { InvalidDefinitionError } from '../errors.js';

/**
 * How a step retries a failed attempt. Vocabulary follows Temporal's
 * `RetryPolicy` and Step Functions' `Retry`.
 */
export interface RetryPolicy {
  /** Total attempts, the first included. `1` disables retries. @default 3 */
  maximumAttempts?: number;
  /** Delay before the first retry. @default 1000 */
  initialIntervalMs?: number;
  /** Each retry's delay is the previous one times this. @default 2 */
  backoffCoefficient?: number;
  /** Upper bound of a single delay. @default 100 * initialIntervalMs */
  maximumIntervalMs?: number;
  /**
   * Random spread applied to each delay, as a fraction: `0.2` draws the delay
   * from `[d * 0.8, d * 1.2]`. `0` disables jitter. @default 0.2
   */
  jitter?: number;
  /** Error names or codes that fail the step at once (besides `NonRetryableError`). @default [] */
  nonRetryableErrors?: string[];
  /** Return false to fail at once for this error. Called only when the other rules allow a retry. */
  isRetryable?: (error: unknown) => boolean;
}

/** A {@link RetryPolicy} with every default filled in. */
export type ResolvedRetryPolicy = Required<Omit<RetryPolicy, 'isRetryable'>> & Pick<RetryPolicy, 'isRetryable'>;

/** The defaults used for any field a step leaves out. */
export const DEFAULT_RETRY_POLICY: Readonly<Omit<ResolvedRetryPolicy, 'maximumIntervalMs' | 'isRetryable'>> = {
  maximumAttempts: 3,
  initialIntervalMs: 1000,
  backoffCoefficient: 2,
  jitter: 0.2,
  nonRetryableErrors: [],
};

const retryPolicySchema = z
  .object({
    maximumAttempts: z.number().int().min(1).max(10_000).optional(),
    initialIntervalMs: z.number().int().min(0).optional(),
    backoffCoefficient: z.number().min(1).max(100).optional(),
    maximumIntervalMs: z.number().int().min(0).optional(),
    jitter: z.number().min(0).max(1).optional(),
    nonRetryableErrors: z.array(z.string()).optional(),
    isRetryable: z.custom<(error: unknown) => boolean>((v) => typeof v === 'function', 'expected a function').optional(),
  })
  .strict();

/**
 * Validates a policy and fills defaults. Throws {@link InvalidDefinitionError}
 * naming the field (`where` prefixes the message, e.g. `step "create_database"`).
 */
export function resolveRetryPolicy(policy: RetryPolicy | undefined, where: string): ResolvedRetryPolicy {
  const parsed = retryPolicySchema.safeParse(policy ?? {});
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const field = issue?.path.join('.') || (issue?.code === 'unrecognized_keys' ? (issue.keys ?? []).join(', ') : '');
    throw new InvalidDefinitionError(`${where}: invalid retry policy field "${field}": ${issue?.message ?? 'invalid'}`);
  }
  const p = parsed.data;
  const initialIntervalMs = p.initialIntervalMs ?? DEFAULT_RETRY_POLICY.initialIntervalMs;
  const maximumIntervalMs = p.maximumIntervalMs ?? initialIntervalMs * 100;
  if (maximumIntervalMs < initialIntervalMs) {
    throw new InvalidDefinitionError(
      `${where}: invalid retry policy field "maximumIntervalMs": ${maximumIntervalMs} is below initialIntervalMs ${initialIntervalMs}`,
    );
  }
  const resolved: ResolvedRetryPolicy = {
    maximumAttempts: p.maximumAttempts ?? DEFAULT_RETRY_POLICY.maximumAttempts,
    initialIntervalMs,
    backoffCoefficient: p.backoffCoefficient ?? DEFAULT_RETRY_POLICY.backoffCoefficient,
    maximumIntervalMs,
    jitter: p.jitter ?? DEFAULT_RETRY_POLICY.jitter,
    nonRetryableErrors: p.nonRetryableErrors ?? [],
  };
  if (p.isRetryable) resolved.isRetryable = p.isRetryable;
  return resolved;
}

/**
 * The delay before retry number `retry` (1 for the first retry), before jitter:
 * `min(initialIntervalMs * backoffCoefficient^(retry-1), maximumIntervalMs)`.
 */
export function baseRetryDelay(policy: ResolvedRetryPolicy, retry: number): number {
  const raw = policy.initialIntervalMs * Math.pow(policy.backoffCoefficient, Math.max(0, retry - 1));
  return Math.min(raw, policy.maximumIntervalMs);
}

/**
 * The delay before retry number `retry`, jitter applied with `random()` in [0, 1).
 * Pure: pass a seeded or constant `random` in tests.
 */
export function retryDelay(policy: ResolvedRetryPolicy, retry: number, random: () => number = Math.random): number {
  const base = baseRetryDelay(policy, retry);
  if (policy.jitter === 0) return Math.round(base);
  const spread = base * policy.jitter;
  return Math.max(0, Math.round(base - spread + random() * 2 * spread));
}

/** True when the policy allows another attempt after `error` on attempt number `attempt`. */
export function shouldRetry(policy: ResolvedRetryPolicy, error: unknown, attempt: number): boolean {
  if (attempt >= policy.maximumAttempts) return false;
  if (isNonRetryable(error)) return false;
  if (error && typeof error === 'object') {
    const { name, code } = error as { name?: unknown; code?: unknown };
    if (typeof name === 'string' && policy.nonRetryableErrors.includes(name)) return false;
    if (typeof code === 'string' && policy.nonRetryableErrors.includes(code)) return false;
  }
  if (policy.isRetryable && !policy.isRetryable(error)) return false;
  return true;
}

function isNonRetryable(error: unknown): boolean {
  return typeof error === 'object' && error !== null && (error as { name?: unknown }).name === 'NonRetryableError';
}
