import { InvalidTransitionError, type SagalineErrorContext } from '../errors.js';

/** Step statuses, forward execution and rollback. */
export const STEP_STATUS = {
  pending: 'pending',
  running: 'running',
  waiting_callback: 'waiting_callback',
  waiting_poll: 'waiting_poll',
  completed: 'completed',
  failed: 'failed',
  skipped: 'skipped',
  compensating: 'compensating',
  compensated: 'compensated',
  compensation_failed: 'compensation_failed',
} as const;

/** A step's status. */
export type StepStatus = (typeof STEP_STATUS)[keyof typeof STEP_STATUS];

/** Every step status. */
export const STEP_STATUSES = Object.values(STEP_STATUS) as readonly StepStatus[];

/** Statuses in which a step still has forward work to do. */
export const NON_TERMINAL_STEP_STATUSES: readonly StepStatus[] = ['pending', 'running', 'waiting_callback', 'waiting_poll'];

/**
 * Allowed step transitions: `from -> to[]`.
 *
 * A retry after a failed attempt goes back to `pending` (with a due time);
 * a failed poll or compensation attempt stays in its status and is not a transition.
 */
export const STEP_TRANSITIONS: Readonly<Record<StepStatus, readonly StepStatus[]>> = {
  pending: ['running', 'skipped'],
  running: ['completed', 'failed', 'pending', 'waiting_callback', 'waiting_poll', 'skipped'],
  waiting_callback: ['completed', 'failed', 'pending', 'skipped'],
  waiting_poll: ['completed', 'failed', 'skipped'],
  failed: ['pending'],
  completed: ['compensating'],
  skipped: [],
  compensating: ['compensated', 'compensation_failed'],
  compensation_failed: ['compensating'],
  compensated: [],
};

/** True when `from -> to` is in {@link STEP_TRANSITIONS}. */
export function canTransitionStep(from: StepStatus, to: StepStatus): boolean {
  return STEP_TRANSITIONS[from].includes(to);
}

/** Throws {@link InvalidTransitionError} unless `from -> to` is allowed. */
export function assertStepTransition(from: StepStatus, to: StepStatus, context: SagalineErrorContext = {}): void {
  if (!canTransitionStep(from, to)) throw new InvalidTransitionError('step', from, to, context);
}

/** Runtime check for a step status string. */
export function isStepStatus(value: unknown): value is StepStatus {
  return typeof value === 'string' && (STEP_STATUSES as readonly string[]).includes(value);
}
