import type { NewStep, StepRecord } from './workflow-store.js';

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
