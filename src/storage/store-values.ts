/**
 * Checks and normal forms every store applies to what it is given, so that
 * the stores agree on them.
 *
 * @module
 */
import type { HistoryRecord, NewHistoryEntry, StepRecord, WorkflowRecord } from './workflow-store.js';

/** A date field: a copy of a valid `Date`, or null; anything else is a `TypeError` naming `field`. */
export function checkedDate(value: unknown, field: string): Date | null {
  const ms = checkedTime(value, field);
  return ms === null ? null : new Date(ms);
}

/** {@link checkedDate}'s check, giving the time in epoch ms. */
export function checkedTime(value: unknown, field: string): number | null {
  if (value === null || value === undefined) return null;
  if (value instanceof Date) {
    const ms = value.getTime();
    if (!Number.isNaN(ms)) return ms;
  }
  throw new TypeError(`${field} must be a valid Date or null`);
}

/**
 * A history entry with every optional field made explicit (null) and its
 * `at` checked; `detail` goes through `detail` (a store's JSON normal form).
 */
export function normalizeHistory(entry: NewHistoryEntry, detail: (value: unknown) => unknown): NewHistoryEntry {
  const out: NewHistoryEntry = {
    kind: entry.kind,
    stepName: entry.stepName ?? null,
    from: entry.from ?? null,
    to: entry.to ?? null,
    actor: entry.actor ?? null,
    reason: entry.reason ?? null,
    action: entry.action ?? null,
    detail: detail(entry.detail),
  };
  const at = checkedDate(entry.at ?? null, 'at');
  if (at !== null) out.at = at;
  return out;
}

/** A history entry a claim writes itself: no actor, reason, action or detail. */
export function claimHistoryEntry(kind: HistoryRecord['kind'], stepName: string | null, from: string | null, to: string | null): NewHistoryEntry {
  return { kind, stepName, from, to, actor: null, reason: null, action: null, detail: null };
}

/**
 * A deep copy of a stored JSON value (plain objects, arrays and primitives,
 * as a JSON column returns them): what `structuredClone` would make of it,
 * several times faster.
 */
export function copyJson<T>(value: T): T {
  return (value !== null && typeof value === 'object' ? cloneJson(value) : value) as T;
}

function cloneJson(value: unknown): unknown {
  if (value === null || typeof value !== 'object') return value;
  if (Array.isArray(value)) return value.map(cloneJson);
  const out: Record<string, unknown> = {};
  for (const key of Object.keys(value)) {
    const item = cloneJson((value as Record<string, unknown>)[key]);
    // JSON may carry an own "__proto__" key; plain assignment would set the prototype instead.
    if (key === '__proto__') Object.defineProperty(out, key, { value: item, enumerable: true, writable: true, configurable: true });
    else out[key] = item;
  }
  return out;
}

/** The fields of a row type that hold a `Date` (or null). */
export type TimeField<R> = { [K in keyof R]: R[K] extends Date | null ? K : never }[keyof R];

/** A row type with its time fields held as `T` (a store may keep epoch ms where the record has a `Date`). */
export type WithTimes<R, T> = Omit<R, TimeField<R>> & { [K in TimeField<R>]: null extends R[K] ? T | null : T };

/** A new `Date` from a `Date` or epoch ms, or null. */
function dateOf(value: Date | number | null): Date | null {
  return value === null ? null : new Date(value);
}

/**
 * A copy of a workflow record that shares nothing mutable with it (its JSON
 * fields must hold plain JSON). Its times may be `Date`s or epoch ms (the
 * memory store's stored form); the copy has `Date`s.
 */
export function copyWorkflowRecord(r: WithTimes<WorkflowRecord, Date | number>): WorkflowRecord {
  return {
    id: r.id,
    tenantId: r.tenantId,
    type: r.type,
    serviceSlug: r.serviceSlug,
    status: r.status,
    definitionVersion: r.definitionVersion,
    input: copyJson(r.input),
    output: copyJson(r.output),
    error: copyJson(r.error),
    idempotencyKey: r.idempotencyKey,
    currentStep: r.currentStep,
    retryCount: r.retryCount,
    createdAt: new Date(r.createdAt),
    updatedAt: new Date(r.updatedAt),
    completedAt: dateOf(r.completedAt),
  };
}

/** A copy of a step record, as {@link copyWorkflowRecord} copies a workflow. */
export function copyStepRecord(r: WithTimes<StepRecord, Date | number>): StepRecord {
  return {
    workflowId: r.workflowId,
    name: r.name,
    position: r.position,
    dependsOn: [...r.dependsOn],
    status: r.status,
    attempts: r.attempts,
    retryCount: r.retryCount,
    maxAttempts: r.maxAttempts,
    startedAt: dateOf(r.startedAt),
    completedAt: dateOf(r.completedAt),
    dueAt: dateOf(r.dueAt),
    leaseOwner: r.leaseOwner,
    leaseToken: r.leaseToken,
    leaseExpiresAt: dateOf(r.leaseExpiresAt),
    callbackTokenHash: r.callbackTokenHash,
    callbackResult: copyJson(r.callbackResult),
    pollCount: r.pollCount,
    pollDeadlineAt: dateOf(r.pollDeadlineAt),
    output: copyJson(r.output),
    error: copyJson(r.error),
    completionSeq: r.completionSeq,
  };
}

/** A workflow with its steps, copied (see {@link copyWorkflowRecord}). */
export function copyRecords(records: { workflow: WorkflowRecord; steps: readonly StepRecord[] }): { workflow: WorkflowRecord; steps: StepRecord[] } {
  return { workflow: copyWorkflowRecord(records.workflow), steps: records.steps.map(copyStepRecord) };
}
