/**
 * Maps the engine's camelCase results to the snake_case wire shapes of
 * `admin-schemas.ts`, formatting times as ISO 8601 UTC and passing every
 * user-data value (inputs, outputs, error and history detail) through the
 * redaction function.
 *
 * @module
 */
import type { HistoryEntry, StepDetail, WorkflowDetail, WorkflowSummary } from '../engine/engine-types.js';
import type { StoredError } from '../storage/workflow-store.js';
import type { RedactFunction, RedactLocation } from './admin-config.js';
import type {
  HistoryEntryResponse,
  StepResponse,
  WorkflowDetailResponse,
  WorkflowErrorResponse,
  WorkflowResponse,
} from './admin-schemas.js';

const keep: RedactFunction = (value) => value;

/** A time as ISO 8601 UTC; accepts what stores may hand back (Date, epoch ms, ISO text). */
export function toIsoTimestamp(value: Date | string | number): string {
  const date = value instanceof Date ? value : new Date(value);
  if (Number.isNaN(date.getTime())) throw new TypeError('invalid timestamp in engine result');
  return date.toISOString();
}

function toIsoOrNull(value: Date | string | number | null | undefined): string | null {
  return value === null || value === undefined ? null : toIsoTimestamp(value);
}

/** JSON has no `undefined`: an absent value is `null` on the wire. */
function orNull(value: unknown): unknown {
  return value === undefined ? null : value;
}

function toWireError(error: StoredError | null | undefined, redact: RedactFunction, location: RedactLocation): WorkflowErrorResponse | null {
  if (!error) return null;
  const wire: WorkflowErrorResponse = { code: String(error.code), message: String(error.message) };
  if (typeof error.step === 'string') wire.step = error.step;
  if (error.detail !== undefined) wire.detail = redact(error.detail, location);
  return wire;
}

/** One workflow as listed. */
export function toWorkflowResponse(workflow: WorkflowSummary, redact: RedactFunction = keep): WorkflowResponse {
  return {
    id: workflow.id,
    tenant_id: workflow.tenantId,
    type: workflow.type,
    service_slug: workflow.serviceSlug ?? null,
    status: workflow.status,
    current_step: workflow.currentStep ?? null,
    retry_count: workflow.retryCount ?? 0,
    error: toWireError(workflow.error, redact, { workflowId: workflow.id, field: 'error', stepName: workflow.error?.step ?? null }),
    created_at: toIsoTimestamp(workflow.createdAt),
    updated_at: toIsoTimestamp(workflow.updatedAt),
    completed_at: toIsoOrNull(workflow.completedAt),
  };
}

/** One step. */
export function toStepResponse(workflowId: string, step: StepDetail, redact: RedactFunction = keep): StepResponse {
  return {
    name: step.name,
    status: step.status,
    depends_on: [...step.dependsOn],
    retry_count: step.retryCount ?? 0,
    max_retries: step.maxRetries ?? 0,
    started_at: toIsoOrNull(step.startedAt),
    completed_at: toIsoOrNull(step.completedAt),
    next_attempt_at: toIsoOrNull(step.nextAttemptAt),
    next_poll_at: toIsoOrNull(step.nextPollAt),
    poll_count: step.pollCount ?? 0,
    output: orNull(redact(step.output, { workflowId, field: 'output', stepName: step.name })),
    error: toWireError(step.error, redact, { workflowId, field: 'error', stepName: step.name }),
  };
}

/** One history row. */
export function toHistoryEntryResponse(workflowId: string, entry: HistoryEntry, redact: RedactFunction = keep): HistoryEntryResponse {
  return {
    at: toIsoTimestamp(entry.at),
    kind: entry.kind,
    step_name: entry.stepName ?? null,
    from: entry.from ?? null,
    to: entry.to ?? null,
    actor: entry.actor ?? null,
    reason: entry.reason ?? null,
    action: entry.action ?? null,
    detail: orNull(redact(entry.detail, { workflowId, field: 'history', stepName: entry.stepName ?? null })),
  };
}

/**
 * A workflow with its input, output, steps and history.
 *
 * @example
 * ```ts
 * const wire = toWorkflowDetailResponse(await engine.get(id), redactSecrets);
 * wire.steps[0]?.retry_count;
 * ```
 */
export function toWorkflowDetailResponse(workflow: WorkflowDetail, redact: RedactFunction = keep): WorkflowDetailResponse {
  return {
    ...toWorkflowResponse(workflow, redact),
    input: orNull(redact(workflow.input, { workflowId: workflow.id, field: 'input', stepName: null })),
    output: orNull(redact(workflow.output, { workflowId: workflow.id, field: 'output', stepName: null })),
    steps: workflow.steps.map((step) => toStepResponse(workflow.id, step, redact)),
    history: (workflow.history ?? []).map((entry) => toHistoryEntryResponse(workflow.id, entry, redact)),
  };
}
