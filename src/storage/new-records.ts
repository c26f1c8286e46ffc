/**
 * The rows `createWorkflow` writes, as records: what a store returns for a
 * new workflow, and what an engine that created it knows of its steps
 * without reading them back.
 *
 * @module
 */
import type { CreateWorkflowInput, NewStep, StepRecord, WorkflowRecord } from './workflow-store.js';

/**
 * The workflow row `createWorkflow` writes for `workflow`: its fields as
 * given, with `input` as the store keeps it (its own copy), created and
 * updated at `createdAt`, no output, error or current step, no retries, not
 * completed.
 */
export function newWorkflowRecord(workflow: CreateWorkflowInput['workflow'], input: unknown, createdAt: Date): WorkflowRecord {
  return {
    id: workflow.id,
    tenantId: workflow.tenantId,
    type: workflow.type,
    serviceSlug: workflow.serviceSlug ?? null,
    status: workflow.status,
    definitionVersion: workflow.definitionVersion,
    input,
    output: null,
    error: null,
    idempotencyKey: workflow.idempotencyKey ?? null,
    currentStep: null,
    retryCount: 0,
    createdAt: new Date(createdAt.getTime()),
    updatedAt: new Date(createdAt.getTime()),
    completedAt: null,
  };
}

/**
 * The step row `createWorkflow` writes for `step`: pending, nothing run, no
 * lease; or, with `step.claim`, running its first attempt since `createdAt`
 * under that lease.
 */
export function newStepRecord(workflowId: string, step: NewStep, createdAt: Date): StepRecord {
  const claim = step.claim;
  const record: StepRecord = {
    workflowId,
    name: step.name,
    position: step.position,
    dependsOn: [...step.dependsOn],
    status: 'pending',
    attempts: 0,
    retryCount: 0,
    maxAttempts: step.maxAttempts,
    startedAt: null,
    completedAt: null,
    dueAt: step.dueAt,
    leaseOwner: null,
    leaseToken: null,
    leaseExpiresAt: null,
    callbackTokenHash: null,
    callbackResult: null,
    pollCount: 0,
    pollDeadlineAt: null,
    output: null,
    error: null,
    completionSeq: null,
  };
  if (claim) {
    record.status = 'running';
    record.attempts = 1;
    record.startedAt = new Date(createdAt.getTime());
    record.leaseOwner = claim.workerId;
    record.leaseToken = claim.leaseToken;
    record.leaseExpiresAt = new Date(claim.leaseExpiresAt.getTime());
    record.callbackTokenHash = claim.callbackTokenHash;
  }
  return record;
}
