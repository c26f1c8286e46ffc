import type { StepStatus } from '../core/step-status.js';
import type { WorkflowStatus } from '../core/workflow-status.js';
import type { StoredError } from '../storage/workflow-store.js';

/** Who did an admin operation, and why; recorded in the workflow's history. */
export interface AdminActionOptions {
  actor?: string;
  reason?: string;
}

/** A step as the engine reports it (camelCase; the HTTP layer maps to snake_case). */
export interface StepDetail {
  name: string;
  status: StepStatus;
  dependsOn: string[];
  retryCount: number;
  /** `maximumAttempts - 1`. */
  maxRetries: number;
  attempts: number;
  startedAt: Date | null;
  completedAt: Date | null;
  /** When a `pending` step (or a `compensating` one) is next due. */
  nextAttemptAt: Date | null;
  /** When a `waiting_poll` step polls next. */
  nextPollAt: Date | null;
  pollCount: number;
  output: unknown;
  error: StoredError | null;
}

/** One history row as reported. */
export interface HistoryEntry {
  at: Date;
  kind: 'workflow' | 'step' | 'admin' | 'note';
  stepName: string | null;
  from: string | null;
  to: string | null;
  actor: string | null;
  reason: string | null;
  action: string | null;
  detail: unknown;
}

/** A workflow summary (list rows). */
export interface WorkflowSummary {
  id: string;
  tenantId: string;
  type: string;
  serviceSlug: string | null;
  status: WorkflowStatus;
  definitionVersion: string;
  currentStep: string | null;
  /** Sum of the steps' retry counts. */
  retryCount: number;
  error: StoredError | null;
  createdAt: Date;
  updatedAt: Date;
  completedAt: Date | null;
}

/** A workflow with its input, output, steps (definition order) and history. */
export interface WorkflowDetail extends WorkflowSummary {
  input: unknown;
  output: unknown;
  steps: StepDetail[];
  history: HistoryEntry[];
}

/** Filters for {@link WorkflowEngine.list}. */
export interface ListWorkflowsQuery {
  tenantId?: string;
  status?: WorkflowStatus;
  type?: string;
  serviceSlug?: string;
  createdAfter?: Date;
  createdBefore?: Date;
  /** 1–200. @default 50 */
  limit?: number;
  /** The opaque `nextCursor` of the previous page. */
  cursor?: string;
}

/** One page of {@link WorkflowEngine.list}. */
export interface ListWorkflowsResult {
  items: WorkflowSummary[];
  /** `null` on the last page. */
  nextCursor: string | null;
}

/** Options of {@link WorkflowEngine.start}. */
export interface StartOptions<TInput = unknown> {
  tenantId: string;
  input: TInput;
  serviceSlug?: string;
  /** Unique per tenant: a repeated start with the same key returns the existing workflow. */
  idempotencyKey?: string;
}

/** What an external system reports for a callback step. */
export interface CallbackResult {
  status: 'success' | 'failed';
  /** Becomes the step's output on success (merged with `endpoint`/`credentials`/`metadata` when given). */
  output?: unknown;
  endpoint?: string;
  credentials?: unknown;
  metadata?: unknown;
  error?: unknown;
}

/** The engine's public surface, as used by the HTTP layer and hosts. */
export interface WorkflowEngineApi {
  start(type: string, options: StartOptions): Promise<WorkflowDetail>;
  /** Throws `not_found` for an unknown id. */
  get(id: string): Promise<WorkflowDetail>;
  list(query?: ListWorkflowsQuery): Promise<ListWorkflowsResult>;
  forceComplete(id: string, options?: AdminActionOptions): Promise<WorkflowDetail>;
  retryStep(id: string, stepName: string, options?: AdminActionOptions): Promise<WorkflowDetail>;
  rollback(id: string, options?: AdminActionOptions): Promise<WorkflowDetail>;
  /** Throws `not_found` for an unknown, used or expired token (indistinguishably). */
  completeCallback(token: string, result: CallbackResult): Promise<void>;
}
