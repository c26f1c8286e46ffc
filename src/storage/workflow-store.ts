/**
 * The storage port. A store persists workflows, steps and history, and claims
 * due steps under a lease; it never decides workflow semantics. Every status
 * change is computed by the engine (checked against the transition tables) and
 * handed to the store as plain writes, with one exception defined here: the
 * claim, which is the only write a store makes on its own (see {@link WorkflowStore.claimSteps}).
 *
 * Implementations: `MemoryWorkflowStore` (`sagaline/memory`) and
 * `KyselyWorkflowStore` (`sagaline/kysely`). Every implementation must pass
 * `runWorkflowStoreContract` from `sagaline/testing`.
 *
 * @module
 */
import type { StepStatus } from '../core/step-status.js';
import type { WorkflowStatus } from '../core/workflow-status.js';

/** An error as stored on a step or workflow: a stable code and a message. */
export interface StoredError {
  code: string;
  message: string;
  /** The step the error came from, on a workflow's error. */
  step?: string;
  /** Extra JSON-safe detail (e.g. the callback's error payload). */
  detail?: unknown;
}

/** A workflow row. Times are `Date`s; JSON columns are plain values. */
export interface WorkflowRecord {
  id: string;
  tenantId: string;
  type: string;
  serviceSlug: string | null;
  status: WorkflowStatus;
  /** The definition version the workflow started with. */
  definitionVersion: string;
  input: unknown;
  output: unknown;
  error: StoredError | null;
  idempotencyKey: string | null;
  /** The step most recently started or waited on, for display. */
  currentStep: string | null;
  /** Sum of the steps' `retryCount` (kept by the engine's patches and by reclaims), so lists need no step reads. */
  retryCount: number;
  createdAt: Date;
  updatedAt: Date;
  completedAt: Date | null;
}

/** A step row. */
export interface StepRecord {
  workflowId: string;
  name: string;
  /** Index of the step in the definition (steps are returned in this order). */
  position: number;
  dependsOn: string[];
  status: StepStatus;
  /** Attempts started in the current phase (forward run, or compensation). */
  attempts: number;
  /** Automatic retries plus admin retries (DESIGN §2). */
  retryCount: number;
  /** The retry policy's `maximumAttempts`, recorded so that readers need no definition. */
  maxAttempts: number;
  startedAt: Date | null;
  completedAt: Date | null;
  /** When the step is next claimable; `null` when it is not (not ready, or finished). */
  dueAt: Date | null;
  leaseOwner: string | null;
  leaseToken: string | null;
  leaseExpiresAt: Date | null;
  /** SHA-256 (hex) of the current callback token; `null` once used or not minted. */
  callbackTokenHash: string | null;
  /** A callback result that arrived while the handler was still running. */
  callbackResult: unknown;
  pollCount: number;
  /** Deadline of the poll loop (`pollTimeoutMs` after `run` returned). */
  pollDeadlineAt: Date | null;
  output: unknown;
  error: StoredError | null;
  /** Monotonic order in which steps completed within the workflow (for reverse-order compensation). */
  completionSeq: number | null;
}

/** One audit row: a transition, an admin action, or a note. */
export interface HistoryRecord {
  /** Store-assigned: 1, 2, 3, … within each workflow. */
  seq: number;
  workflowId: string;
  at: Date;
  kind: 'workflow' | 'step' | 'admin' | 'note';
  stepName: string | null;
  from: string | null;
  to: string | null;
  actor: string | null;
  reason: string | null;
  /** For `admin`: the operation name; for `note`: what happened (e.g. `lease_reclaimed`). */
  action: string | null;
  detail: unknown;
}

/** A history row to append; the store assigns `seq` (and `at` when omitted, from its clock). */
export type NewHistoryEntry = Omit<HistoryRecord, 'seq' | 'workflowId' | 'at'> & { at?: Date };

/** Fields of a new step row (the rest start at zero / null). */
export interface NewStep {
  name: string;
  position: number;
  dependsOn: string[];
  maxAttempts: number;
  /** Roots are due at once; other steps start with `null` (not ready). */
  dueAt: Date | null;
  /**
   * Creates the step already claimed, as a claim at `createdAt` would leave
   * it: `running`, attempt 1, started at `createdAt`, leased to `workerId`
   * until `leaseExpiresAt`, with a fresh callback-token hash. For an engine
   * that runs a new workflow's first steps itself; the history entries the
   * claim would write are the caller's to pass.
   */
  claim?: NewStepClaim;
}

/** The lease a step is created with (see {@link NewStep.claim}). */
export interface NewStepClaim {
  workerId: string;
  leaseToken: string;
  leaseExpiresAt: Date;
  callbackTokenHash: string;
}

/** What {@link WorkflowStore.createWorkflow} inserts, atomically. */
export interface CreateWorkflowInput {
  workflow: Omit<WorkflowRecord, 'updatedAt' | 'completedAt' | 'output' | 'error' | 'currentStep' | 'retryCount'>;
  steps: NewStep[];
  history: NewHistoryEntry[];
}

/** Result of {@link WorkflowStore.createWorkflow}. */
export interface CreateWorkflowResult {
  /** False when `(tenantId, idempotencyKey)` already existed: `workflow` is the existing one. */
  created: boolean;
  workflow: WorkflowRecord;
}

/** A partial update of a workflow row. */
export type WorkflowPatch = Partial<Pick<WorkflowRecord, 'status' | 'output' | 'error' | 'currentStep' | 'completedAt' | 'retryCount'>>;

/** A partial update of a step row. */
export type StepPatch = Partial<
  Pick<
    StepRecord,
    | 'status'
    | 'attempts'
    | 'retryCount'
    | 'startedAt'
    | 'completedAt'
    | 'dueAt'
    | 'leaseOwner'
    | 'leaseToken'
    | 'leaseExpiresAt'
    | 'callbackTokenHash'
    | 'callbackResult'
    | 'pollCount'
    | 'pollDeadlineAt'
    | 'output'
    | 'error'
    | 'completionSeq'
  >
>;

/**
 * A transaction over one workflow, holding its row lock: the snapshot was read
 * under the lock and nothing else changes the workflow or its steps until the
 * transaction ends. Writes are buffered and applied, in order, when the
 * callback resolves; if it throws, nothing is written.
 *
 * `workflow` and `steps` are the callback's own copies, and it may change
 * them (the engine applies each write it buffers to them): nothing done to
 * them reaches the store or a later transaction, and a store decides nothing
 * on them once handed out (fences compare with the store's own state). Only
 * the update methods write.
 */
export interface WorkflowTransaction {
  /** The store's time when the lock was taken (the database clock, or the injected one). */
  readonly now: Date;
  readonly workflow: WorkflowRecord;
  /** The workflow's steps in definition order. */
  readonly steps: readonly StepRecord[];
  updateWorkflow(patch: WorkflowPatch): void;
  /**
   * Updates one step. With `expectLeaseToken` the write is fenced: if the row's
   * lease token differs when applied (`null` expects no lease; omitted means no
   * fence), the whole transaction fails with a `stale_lease` error and nothing
   * is written. Fields left out of `patch` (or `undefined`) are not changed.
   */
  updateStep(name: string, patch: StepPatch, options?: { expectLeaseToken?: string | null }): void;
  appendHistory(entries: NewHistoryEntry[]): void;
}

/** How {@link WorkflowStore.transact} may run. */
export interface TransactOptions {
  /**
   * Allow a lock-free read and a compare-and-set write, re-running `fn` on a
   * conflict (see {@link WorkflowStore.transact}). Default false.
   */
  optimistic?: boolean;
}

/** A token pair handed to a claim: the lease token and the hash of a fresh callback token. */
export interface ClaimToken {
  leaseToken: string;
  callbackTokenHash: string;
}

/** What {@link WorkflowStore.claimSteps} claims. */
export interface ClaimRequest {
  workerId: string;
  leaseMs: number;
  /** At most this many steps. */
  limit: number;
  /** At least `limit` tokens; the i-th claimed step takes `tokens[i]`. */
  tokens: ClaimToken[];
}

/** One claimed step with the state the engine needs to run it. */
export interface ClaimedStep {
  /** The workflow after the claim. */
  workflow: WorkflowRecord;
  /** All of the workflow's steps after the claim, in definition order. */
  steps: StepRecord[];
  stepName: string;
  /** The step's status before the claim. */
  previousStatus: StepStatus;
  /** The store's time of the claim. */
  now: Date;
}

/** Filters and keyset position for {@link WorkflowStore.listWorkflows}. Newest first: `(createdAt, id)` descending. */
export interface StoreListQuery {
  tenantId?: string;
  status?: WorkflowStatus;
  type?: string;
  serviceSlug?: string;
  createdAfter?: Date;
  createdBefore?: Date;
  /** Return rows strictly after this position in the order (i.e. older). */
  after?: { createdAt: Date; id: string };
  limit: number;
}

/** Options of {@link WorkflowStore.subscribe}. */
export interface SubscribeOptions {
  /**
   * Wake-ups stopped (a lost `LISTEN` connection, say), or an attempt to
   * resume them failed. The store keeps trying by itself, and workers poll
   * meanwhile; this is for the host's log. A throw is ignored.
   */
  onError?(error: Error): void;
  /** Wake-ups work again after {@link onError}. A throw is ignored. */
  onResume?(): void;
}

/**
 * The storage port.
 *
 * Claim rule (the one write a store decides): a step is claimable when
 * `dueAt <= now`, its lease is free (`leaseExpiresAt` null or `<= now`), its
 * status is one of `pending, running, waiting_callback, waiting_poll,
 * compensating`, and its workflow is `pending`, `running` or `rolling_back`.
 * Claims take steps in `dueAt` order and, for each, set `leaseOwner`,
 * `leaseToken` (from the request) and `leaseExpiresAt = now + leaseMs`, and:
 * - `pending`: status -> `running`, `attempts + 1`, `startedAt = now`,
 *   `callbackTokenHash` from the request, `callbackResult = null`; a `step`
 *   history row `pending -> running`;
 * - `running` (its lease expired): `attempts + 1`, `retryCount + 1` (and the
 *   workflow's `retryCount + 1`), `startedAt = now`, new `callbackTokenHash`;
 *   `callbackResult` is kept (a callback accepted for the lost attempt is
 *   applied when the new attempt waits); a `note` history row with action
 *   `lease_reclaimed`;
 * - `compensating`: `attempts + 1`;
 * - `waiting_callback`, `waiting_poll`: lease only.
 * A `pending` workflow of a claimed step becomes `running` (with a `workflow`
 * history row). Every write of a claim (and of a transaction) also sets the
 * workflow's `updatedAt` to the store's time; `createWorkflow` sets
 * `updatedAt = createdAt`, `retryCount = 0` and the other omitted fields to null.
 * `dueAt` is left as it is, so a step whose lease expires is
 * claimable again. A step is never handed to two claimers whose leases overlap.
 *
 * Locking: {@link transact} holds the workflow's row lock; claims never claim a
 * step of a workflow locked by a running transaction (they skip or wait), so
 * every step change of a workflow is serialized with the others.
 */
export interface WorkflowStore {
  /** The store's current time (database clock, or the injected clock). */
  now(): Promise<Date>;
  /** Inserts a workflow with its steps and history, or returns the existing one for the same `(tenantId, idempotencyKey)`. */
  createWorkflow(input: CreateWorkflowInput): Promise<CreateWorkflowResult>;
  getWorkflow(id: string): Promise<WorkflowRecord | null>;
  /** Steps in definition order (empty for an unknown workflow). */
  getSteps(workflowId: string): Promise<StepRecord[]>;
  /** History in `seq` order. */
  getHistory(workflowId: string): Promise<HistoryRecord[]>;
  /**
   * How far, in milliseconds, the clock the store's times follow may be
   * ahead of the times it hands out now (`now()` and a transaction's `now`):
   * a store that estimates a database clock between readings of it knows
   * this bound. The engine adds it to the deadlines it counts from those
   * times (due times of retries and polls, leases, timeouts), so that none
   * falls early by that clock. Omitted: 0, an exact clock.
   */
  clockSlackMs?(): number;
  /** Workflows matching the filters, newest first, at most `limit`. */
  listWorkflows(query: StoreListQuery): Promise<WorkflowRecord[]>;
  /** Claims due steps (see the claim rule above). */
  claimSteps(request: ClaimRequest): Promise<ClaimedStep[]>;
  /**
   * Runs `fn` holding the workflow's row lock and applies its buffered writes
   * atomically. Throws a `not_found` {@link SagalineError} for an unknown id.
   * `fn` must not call the store (on a single-connection database that would
   * wait on itself); it decides from the snapshot and buffers writes.
   *
   * With `{ optimistic: true }` a store may instead run `fn` on a consistent
   * snapshot read without a lock, and apply its writes only if the workflow
   * has not changed since (one compare-and-set write); if it has, the store
   * runs `fn` again on the new state. The outcome is the same as under the
   * lock, but `fn` may run more than once (only the last run's writes apply),
   * so it must act only through `tx` or redo its own bookkeeping on every
   * run, and other callers are not held off while it runs. Stores without
   * such a mode take the lock as usual.
   */
  transact<T>(workflowId: string, fn: (tx: WorkflowTransaction) => T | Promise<T>, options?: TransactOptions): Promise<T>;
  /** Heartbeat: `leaseExpiresAt = now + leaseMs` if the lease token still matches. False when the lease was lost. */
  extendLease(workflowId: string, stepName: string, leaseToken: string, leaseMs: number): Promise<boolean>;
  /**
   * The earliest `dueAt` among steps in claimable statuses of active workflows,
   * ignoring leases (a leased step reports its past `dueAt`), or null. An upper
   * bound for how long a worker may sleep; not a promise that a claim will succeed.
   */
  nextDueAt(): Promise<Date | null>;
  /**
   * Optional wake-ups across processes: `listener` is called when another
   * process may have made work due (e.g. Postgres `LISTEN/NOTIFY`). Best
   * effort: workers still poll as a fallback. Resolves to an unsubscribe function.
   * A store that recovers from losing its wake-ups by itself reports the
   * loss, and its return, through `options`.
   */
  subscribe?(listener: () => void, options?: SubscribeOptions): Promise<() => Promise<void>>;
  /** Releases resources the store owns (never the host's database handle). */
  close?(): Promise<void>;
}
