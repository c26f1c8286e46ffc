import type { NewStep, StepRecord } from './workflow-store.js';

/** The step row `createWorkflow` writes for `step`: pending, nothing run, no lease. */
export function newStepRecord(workflowId: string, step: NewStep): StepRecord {
  return {
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
}
