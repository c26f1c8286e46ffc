/**
 * sagaline: durable provisioning workflows (sagas) for TypeScript backends.
 *
 * The core entry: definitions, the engine, statuses, errors and events. It
 * imports nothing but zod and eventemitter3; stores and HTTP bindings live in
 * their own entries (`sagaline/memory`, `sagaline/kysely`, `sagaline/fetch`, …).
 *
 * @module
 */
export { defineWorkflow, step, isCallbackWait } from './core/define-workflow.js';
export type {
  CallbackWait,
  CompensateContext,
  OnFailure,
  PollContext,
  PollResult,
  ResolvedStep,
  StepContext,
  StepDefinition,
  StepOptions,
  StepOutputOf,
  WorkflowDefinition,
  WorkflowOptions,
} from './core/define-workflow.js';
export { DEFAULT_RETRY_POLICY, baseRetryDelay, resolveRetryPolicy, retryDelay, shouldRetry } from './core/retry-policy.js';
export type { ResolvedRetryPolicy, RetryPolicy } from './core/retry-policy.js';
export {
  WORKFLOW_STATUS,
  WORKFLOW_STATUSES,
  WORKFLOW_TRANSITIONS,
  assertWorkflowTransition,
  canTransitionWorkflow,
  isWorkflowStatus,
} from './core/workflow-status.js';
export type { WorkflowStatus } from './core/workflow-status.js';
export {
  NON_TERMINAL_STEP_STATUSES,
  STEP_STATUS,
  STEP_STATUSES,
  STEP_TRANSITIONS,
  assertStepTransition,
  canTransitionStep,
  isStepStatus,
} from './core/step-status.js';
export type { StepStatus } from './core/step-status.js';
export { systemClock } from './core/clock.js';
export type { Clock, ClockTimer } from './core/clock.js';
export { silentLogger } from './core/logger.js';
export type { Logger } from './core/logger.js';
export {
  ConflictError,
  InvalidDefinitionError,
  InvalidTransitionError,
  NonRetryableError,
  NotFoundError,
  SagalineError,
  StaleLeaseError,
  StoreError,
  ValidationError,
  isSagalineError,
} from './errors.js';
export type { SagalineErrorCode, SagalineErrorContext, ValidationIssue } from './errors.js';
export { createEngine, WorkflowEngine } from './engine/workflow-engine.js';
export type { EngineOptions } from './engine/engine-config.js';
export type {
  AdminActionOptions,
  CallbackResult,
  HistoryEntry,
  ListWorkflowsQuery,
  ListWorkflowsResult,
  StartOptions,
  StepDetail,
  WorkflowDetail,
  WorkflowEngineApi,
  WorkflowSummary,
} from './engine/engine-types.js';
export { createEventEmitter, safeEmit } from './events/workflow-events.js';
export type {
  AdminEventFields,
  StepEventBase,
  WorkflowEventBase,
  WorkflowEventEmitter,
  WorkflowEventName,
  WorkflowEventPayload,
  WorkflowEvents,
} from './events/workflow-events.js';
export type {
  ClaimRequest,
  ClaimToken,
  ClaimedStep,
  CreateWorkflowInput,
  CreateWorkflowResult,
  HistoryRecord,
  NewHistoryEntry,
  NewStep,
  StepPatch,
  StepRecord,
  StoreListQuery,
  StoredError,
  SubscribeOptions,
  TransactOptions,
  WorkflowPatch,
  WorkflowRecord,
  WorkflowStore,
  WorkflowTransaction,
} from './storage/workflow-store.js';
