import { InvalidTransitionError, type SagalineErrorContext } from '../errors.js';

/**
 * Workflow statuses. `as const` so that {@link WorkflowStatus} is the exact union.
 */
export const WORKFLOW_STATUS = {
  pending: 'pending',
  running: 'running',
  completed: 'completed',
  failed: 'failed',
  rolling_back: 'rolling_back',
  rolled_back: 'rolled_back',
  rollback_failed: 'rollback_failed',
} as const;

/** A workflow's status. */
export type WorkflowStatus = (typeof WORKFLOW_STATUS)[keyof typeof WORKFLOW_STATUS];

/** Every workflow status, in lifecycle order. */
export const WORKFLOW_STATUSES = Object.values(WORKFLOW_STATUS) as readonly WorkflowStatus[];

/**
 * Allowed workflow transitions: `from -> to[]`. Written out so that a reader
 * (and the reliability suite) can check any history against it.
 */
export const WORKFLOW_TRANSITIONS: Readonly<Record<WorkflowStatus, readonly WorkflowStatus[]>> = {
  pending: ['running', 'completed', 'rolling_back'],
  running: ['completed', 'failed', 'rolling_back'],
  failed: ['running', 'completed', 'rolling_back'],
  completed: ['rolling_back'],
  rolling_back: ['rolled_back', 'rollback_failed'],
  rollback_failed: ['rolling_back'],
  rolled_back: [],
};

/** True when `from -> to` is in {@link WORKFLOW_TRANSITIONS}. */
export function canTransitionWorkflow(from: WorkflowStatus, to: WorkflowStatus): boolean {
  return WORKFLOW_TRANSITIONS[from].includes(to);
}

/** Throws {@link InvalidTransitionError} unless `from -> to` is allowed. */
export function assertWorkflowTransition(from: WorkflowStatus, to: WorkflowStatus, context: SagalineErrorContext = {}): void {
  if (!canTransitionWorkflow(from, to)) throw new InvalidTransitionError('workflow', from, to, context);
}

/** Statuses a workflow can be in while steps are still scheduled. */
export const ACTIVE_WORKFLOW_STATUSES: readonly WorkflowStatus[] = ['pending', 'running', 'rolling_back'];

/** Runtime check for a workflow status string. */
export function isWorkflowStatus(value: unknown): value is WorkflowStatus {
  return typeof value === 'string' && (WORKFLOW_STATUSES as readonly string[]).includes(value);
}
