/**
 * Error classes thrown by sagaline. Every error extends {@link SagalineError}
 * and carries a string `code`; check `err.code` rather than `instanceof` when
 * errors may cross module formats (ESM and CJS copies of the package).
 *
 * @module
 */

/** The string codes carried by {@link SagalineError} subclasses. */
export type SagalineErrorCode =
  | 'not_found'
  | 'conflict'
  | 'validation'
  | 'invalid_transition'
  | 'invalid_definition'
  | 'store'
  | 'stale_lease'
  | 'unauthorized'
  | 'forbidden';

/** Context fields attached to an error when they are known. */
export interface SagalineErrorContext {
  workflowId?: string;
  stepName?: string;
  status?: string;
  attempts?: number;
}

/**
 * Base class of every error sagaline throws.
 *
 * @example
 * ```ts
 * try { await engine.rollback(id) } catch (err) {
 *   if (err instanceof SagalineError && err.code === 'conflict') console.log(err.status)
 * }
 * ```
 */
export class SagalineError extends Error {
  override readonly name: string = 'SagalineError';
  readonly code: SagalineErrorCode;
  readonly workflowId?: string;
  readonly stepName?: string;
  readonly status?: string;
  readonly attempts?: number;

  constructor(code: SagalineErrorCode, message: string, context: SagalineErrorContext = {}, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    if (context.workflowId !== undefined) this.workflowId = context.workflowId;
    if (context.stepName !== undefined) this.stepName = context.stepName;
    if (context.status !== undefined) this.status = context.status;
    if (context.attempts !== undefined) this.attempts = context.attempts;
  }
}

/** A workflow, step or callback token does not exist (HTTP 404). */
export class NotFoundError extends SagalineError {
  override readonly name = 'NotFoundError';
  constructor(message: string, context: SagalineErrorContext = {}) {
    super('not_found', message, context);
  }
}

/** An operation is not allowed from the current status (HTTP 409). */
export class ConflictError extends SagalineError {
  override readonly name = 'ConflictError';
  constructor(message: string, context: SagalineErrorContext = {}) {
    super('conflict', message, context);
  }
}

/** One issue found while validating input. `path` names the field. */
export interface ValidationIssue {
  path: (string | number)[];
  message: string;
  code: string;
}

/** Input failed validation; `issues` name every offending field (HTTP 422). */
export class ValidationError extends SagalineError {
  override readonly name = 'ValidationError';
  readonly issues: ValidationIssue[];
  constructor(message: string, issues: ValidationIssue[], context: SagalineErrorContext = {}) {
    super('validation', message, context);
    this.issues = issues;
  }
}

/** A status change that the transition tables do not allow. */
export class InvalidTransitionError extends SagalineError {
  override readonly name = 'InvalidTransitionError';
  readonly entity: 'workflow' | 'step';
  readonly from: string;
  readonly to: string;
  constructor(entity: 'workflow' | 'step', from: string, to: string, context: SagalineErrorContext = {}) {
    super('invalid_transition', `illegal ${entity} transition ${from} -> ${to}`, { ...context, status: from });
    this.entity = entity;
    this.from = from;
    this.to = to;
  }
}

/** A workflow definition is malformed (cycle, unknown or duplicate step, bad retry value). */
export class InvalidDefinitionError extends SagalineError {
  override readonly name = 'InvalidDefinitionError';
  constructor(message: string, context: SagalineErrorContext = {}) {
    super('invalid_definition', message, context);
  }
}

/**
 * A fenced write found a different lease token than expected: the lease was
 * lost (expired and reclaimed, or cleared by an admin operation). Nothing was written.
 */
export class StaleLeaseError extends SagalineError {
  override readonly name = 'StaleLeaseError';
  constructor(message: string, context: SagalineErrorContext = {}) {
    super('stale_lease', message, context);
  }
}

/** The storage adapter failed; the original error is in `cause`. */
export class StoreError extends SagalineError {
  override readonly name = 'StoreError';
  constructor(message: string, options?: { cause?: unknown }) {
    super('store', message, {}, options);
  }
}

/**
 * Throw from a step handler to fail the attempt without retrying, whatever the
 * step's retry policy says.
 *
 * @example
 * ```ts
 * if (plan === 'unknown') throw new NonRetryableError('plan does not exist')
 * ```
 */
export class NonRetryableError extends Error {
  override readonly name = 'NonRetryableError';
  readonly code: string;
  constructor(message: string, options?: { cause?: unknown; code?: string }) {
    super(message, options);
    this.code = options?.code ?? 'non_retryable';
  }
}

/** True when `err` is a sagaline error with the given code (works across ESM/CJS copies). */
export function isSagalineError(err: unknown, code?: SagalineErrorCode): err is SagalineError {
  if (typeof err !== 'object' || err === null) return false;
  const c = (err as { code?: unknown }).code;
  if (!(err instanceof Error) || typeof c !== 'string') return false;
  return code === undefined ? err instanceof SagalineError || 'code' in err : c === code;
}
