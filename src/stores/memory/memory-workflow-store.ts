/**
 * An in-process {@link WorkflowStore} for tests, demos and single-process
 * embedding where durability is not needed. It follows the same contract as
 * the database stores (`runWorkflowStoreContract`), including the per-workflow
 * lock of {@link MemoryWorkflowStore.transact}, fenced writes and the claim rule.
 *
 * @module
 */
import { systemClock, type Clock } from '../../core/clock.js';
import { isStepStatus, type StepStatus } from '../../core/step-status.js';
import { isWorkflowStatus, type WorkflowStatus } from '../../core/workflow-status.js';
import { ConflictError, NotFoundError, StaleLeaseError, StoreError } from '../../errors.js';
import type {
  ClaimedStep,
  ClaimRequest,
  CreateWorkflowInput,
  CreateWorkflowResult,
  HistoryRecord,
  NewHistoryEntry,
  NewStepClaim,
  StepPatch,
  StepRecord,
  StoreListQuery,
  WorkflowPatch,
  WorkflowRecord,
  WorkflowStore,
  WorkflowTransaction,
} from '../../storage/workflow-store.js';
import { newStepRecord } from '../../storage/new-records.js';
import {
  checkedDate,
  checkedTime,
  claimHistoryEntry,
  copyJson,
  copyStepRecord,
  copyWorkflowRecord,
  normalizeHistory,
  type WithTimes,
} from '../../storage/store-values.js';

/** Options of {@link MemoryWorkflowStore}. */
export interface MemoryWorkflowStoreOptions {
  /**
   * The clock used for every time comparison (due times, leases) and for the
   * times the store assigns itself.
   *
   * @default systemClock
   */
  clock?: Clock;
}

const CLAIMABLE_STEP_STATUSES: ReadonlySet<StepStatus> = new Set<StepStatus>([
  'pending',
  'running',
  'waiting_callback',
  'waiting_poll',
  'compensating',
]);

const ACTIVE_WORKFLOW_STATUSES: ReadonlySet<WorkflowStatus> = new Set<WorkflowStatus>(['pending', 'running', 'rolling_back']);

/**
 * A step row as the store keeps it: times are epoch milliseconds. The store
 * keeps every row for the life of the process, and a `Date` takes several
 * times the heap of a number, which the garbage collector then copies; rows
 * are handed out as copies with `Date`s (see {@link copyStepRecord}).
 */
type StoredStep = WithTimes<StepRecord, number>;
/** A workflow row as the store keeps it (times in epoch ms). */
type StoredWorkflow = WithTimes<WorkflowRecord, number>;
/** A history row as the store keeps it (its time in epoch ms; the workflow id is its entry's). */
type StoredHistory = Omit<HistoryRecord, 'at' | 'workflowId'> & { at: number };
/** A step patch as buffered: checked, times in ms, JSON values in their stored form. */
type StoredStepPatch = Partial<Pick<StoredStep, keyof StepPatch>>;
/** A workflow patch as buffered. */
type StoredWorkflowPatch = Partial<Pick<StoredWorkflow, keyof WorkflowPatch>>;

/** Above this many steps a workflow keeps a map from step name to slot; below it a scan is cheaper. */
const SLOT_MAP_MIN_STEPS = 9;

/** A step row plus its position in the due index. */
interface StepSlot {
  record: StoredStep;
  readonly workflow: WorkflowEntry;
  /** The `dueAt` (ms) under which the slot is in the due index, or null when it is not a claim candidate. */
  indexedDue: number | null;
  /** Bumped whenever the slot leaves the index or changes key; older heap entries are then ignored. */
  version: number;
}

interface WorkflowEntry {
  record: StoredWorkflow;
  /** Steps in definition order. */
  readonly slots: StepSlot[];
  /** Slots by step name, for workflows of {@link SLOT_MAP_MIN_STEPS} steps or more (see {@link slotNamed}). */
  readonly slotsByName: Map<string, StepSlot> | null;
  readonly history: StoredHistory[];
  nextSeq: number;
}

/** The slot of the step called `name`, if the workflow has one. */
function slotNamed(entry: WorkflowEntry, name: string): StepSlot | undefined {
  if (entry.slotsByName !== null) return entry.slotsByName.get(name);
  for (const slot of entry.slots) if (slot.record.name === name) return slot;
  return undefined;
}

interface DueEntry {
  due: number;
  /** Insertion order, so that equal due times are claimed first come, first served. */
  seq: number;
  version: number;
  slot: StepSlot;
}

/**
 * A binary min-heap of claim candidates ordered by `(due, seq)`, with lazy
 * deletion: entries whose `version` no longer matches their slot are dropped
 * when they surface.
 */
class DueHeap {
  private items: DueEntry[] = [];

  get size(): number {
    return this.items.length;
  }

  peek(): DueEntry | undefined {
    return this.items[0];
  }

  push(entry: DueEntry): void {
    const items = this.items;
    items.push(entry);
    let i = items.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      const p = items[parent]!;
      if (!before(entry, p)) break;
      items[i] = p;
      i = parent;
    }
    items[i] = entry;
  }

  pop(): DueEntry | undefined {
    const items = this.items;
    const top = items[0];
    const last = items.pop();
    if (top === undefined || last === undefined || items.length === 0) return top;
    const n = items.length;
    let i = 0;
    for (;;) {
      const left = 2 * i + 1;
      if (left >= n) break;
      const right = left + 1;
      let child = left;
      if (right < n && before(items[right]!, items[left]!)) child = right;
      const c = items[child]!;
      if (!before(c, last)) break;
      items[i] = c;
      i = child;
    }
    items[i] = last;
    return top;
  }

  /** Drops stale entries and rebuilds the heap. */
  compact(): void {
    const live = this.items.filter((e) => e.version === e.slot.version);
    live.sort((a, b) => (before(a, b) ? -1 : 1));
    // A sorted array is a valid heap.
    this.items = live;
  }
}

function before(a: DueEntry, b: DueEntry): boolean {
  return a.due < b.due || (a.due === b.due && a.seq < b.seq);
}

/**
 * A {@link WorkflowStore} that keeps everything in memory.
 *
 * - `transact` holds an async mutex per workflow; claims skip the steps of a
 *   workflow whose mutex is held, so every change to a workflow is serialized.
 * - Claimable steps are kept in a due-time index, so a claim costs
 *   `O((k + leased) log n)` rather than a scan of every step.
 * - Every record handed out is a copy, and every value handed in is copied:
 *   callers can never mutate stored state. JSON columns (`input`, `output`,
 *   `error`, `callbackResult`, history `detail`) are stored as their JSON form,
 *   as a database store would (a `Date` inside them comes back as an ISO string,
 *   `undefined` properties are dropped).
 * - Nothing survives the process: use `KyselyWorkflowStore` for durability.
 *
 * @example
 * ```ts
 * import { createEngine } from 'sagaline';
 * import { MemoryWorkflowStore } from 'sagaline/memory';
 * import { createManualClock } from 'sagaline/testing';
 *
 * const clock = createManualClock();
 * const engine = createEngine({ store: new MemoryWorkflowStore({ clock }), workflows: [provisionService], clock });
 * ```
 */
export class MemoryWorkflowStore implements WorkflowStore {
  private readonly clock: Clock;
  private readonly workflows = new Map<string, WorkflowEntry>();
  /** Workflows ascending by `(createdAt, id)`; listed from the end. */
  private readonly byCreation: WorkflowEntry[] = [];
  /** `tenantId \0 idempotencyKey` -> workflow id. */
  private readonly idempotency = new Map<string, string>();
  /** Locked workflow ids -> waiters, in arrival order. Present only while the lock is held. */
  private readonly locks = new Map<string, (() => void)[]>();
  private readonly due = new DueHeap();
  /** Number of slots with `indexedDue !== null`. */
  private indexedCount = 0;
  private dueSeq = 0;

  /** Creates an empty store. */
  constructor(options: MemoryWorkflowStoreOptions = {}) {
    this.clock = options.clock ?? systemClock;
  }

  /** The injected clock's time. */
  async now(): Promise<Date> {
    return new Date(this.clock.now());
  }

  /** Inserts a workflow with its steps and history, or returns the existing one for the same `(tenantId, idempotencyKey)`. */
  async createWorkflow(input: CreateWorkflowInput): Promise<CreateWorkflowResult> {
    const w = input.workflow;
    const idempotencyKey = w.idempotencyKey ?? null;
    const idemKey = idempotencyKey === null ? null : `${w.tenantId}\u0000${idempotencyKey}`;
    if (idemKey !== null) {
      const existingId = this.idempotency.get(idemKey);
      const existing = existingId === undefined ? undefined : this.workflows.get(existingId);
      if (existing) return { created: false, workflow: copyWorkflowRecord(existing.record) };
    }
    if (this.workflows.has(w.id)) throw new ConflictError(`workflow ${w.id} already exists`, { workflowId: w.id });
    if (!isWorkflowStatus(w.status)) throw new TypeError(`workflow ${w.id}: unknown status ${String(w.status)}`);
    const createdAt = checkedDate(w.createdAt, 'createdAt');
    if (createdAt === null) throw new TypeError(`workflow ${w.id}: createdAt is required`);

    const createdMs = createdAt.getTime();
    const record: StoredWorkflow = {
      id: w.id,
      tenantId: w.tenantId,
      type: w.type,
      serviceSlug: w.serviceSlug ?? null,
      status: w.status,
      definitionVersion: w.definitionVersion,
      input: toJson(w.input),
      output: null,
      error: null,
      idempotencyKey,
      currentStep: null,
      retryCount: 0,
      createdAt: createdMs,
      updatedAt: createdMs,
      completedAt: null,
    };
    const steps = [...input.steps].sort((a, b) => a.position - b.position);
    const entry: WorkflowEntry = {
      record,
      slots: [],
      slotsByName: steps.length >= SLOT_MAP_MIN_STEPS ? new Map() : null,
      history: [],
      nextSeq: 1,
    };
    const names = new Set<string>();
    for (const s of steps) {
      if (names.has(s.name)) throw new StoreError(`workflow ${w.id}: duplicate step ${s.name}`);
      names.add(s.name);
      const slot: StepSlot = {
        record: storedStep(
          newStepRecord(w.id, { ...s, dueAt: checkedDate(s.dueAt, 'dueAt'), ...(s.claim ? { claim: checkClaim(s.claim) } : {}) }, createdAt),
        ),
        workflow: entry,
        indexedDue: null,
        version: 0,
      };
      entry.slots.push(slot);
      entry.slotsByName?.set(s.name, slot);
    }
    const history = input.history.map((e) => normalizeHistory(e, toJson));
    const now = this.clock.now();

    // Everything above may throw; nothing below does.
    this.workflows.set(w.id, entry);
    this.insertByCreation(entry);
    if (idemKey !== null) this.idempotency.set(idemKey, w.id);
    this.appendHistoryRows(entry, history, now);
    for (const slot of entry.slots) this.reindex(slot);
    return { created: true, workflow: copyWorkflowRecord(record) };
  }

  /** The workflow, or null when the id is unknown. */
  async getWorkflow(id: string): Promise<WorkflowRecord | null> {
    const entry = this.workflows.get(id);
    return entry ? copyWorkflowRecord(entry.record) : null;
  }

  /** Steps in definition order (empty for an unknown workflow). */
  async getSteps(workflowId: string): Promise<StepRecord[]> {
    const entry = this.workflows.get(workflowId);
    return entry ? entry.slots.map((s) => copyStepRecord(s.record)) : [];
  }

  /** History in `seq` order (empty for an unknown workflow). */
  async getHistory(workflowId: string): Promise<HistoryRecord[]> {
    const entry = this.workflows.get(workflowId);
    return entry ? entry.history.map((h) => copyHistory(h, workflowId)) : [];
  }

  /** Workflows matching the filters, newest first by `(createdAt, id)`, at most `limit`. */
  async listWorkflows(query: StoreListQuery): Promise<WorkflowRecord[]> {
    const limit = Math.floor(query.limit);
    if (!(limit > 0)) return [];
    const rows = this.byCreation;
    let start = rows.length - 1;
    if (query.after) start = Math.min(start, this.lowerBound(query.after.createdAt.getTime(), query.after.id) - 1);
    // '' sorts before every id, so this finds the first row at or after createdBefore.
    if (query.createdBefore) start = Math.min(start, this.lowerBound(query.createdBefore.getTime(), '') - 1);
    const afterMs = query.createdAfter ? query.createdAfter.getTime() : -Infinity;
    const out: WorkflowRecord[] = [];
    for (let i = start; i >= 0 && out.length < limit; i--) {
      const entry = rows[i]!;
      if (entry.record.createdAt < afterMs) break;
      const r = entry.record;
      if (query.tenantId !== undefined && r.tenantId !== query.tenantId) continue;
      if (query.status !== undefined && r.status !== query.status) continue;
      if (query.type !== undefined && r.type !== query.type) continue;
      if (query.serviceSlug !== undefined && r.serviceSlug !== query.serviceSlug) continue;
      out.push(copyWorkflowRecord(r));
    }
    return out;
  }

  /**
   * Claims due steps under the claim rule of {@link WorkflowStore}. Runs
   * without awaiting, so no other call interleaves with it; steps of a
   * workflow locked by {@link transact} are skipped.
   */
  async claimSteps(request: ClaimRequest): Promise<ClaimedStep[]> {
    const nowMs = this.clock.now();
    const max = Math.min(Math.floor(request.limit), request.tokens.length);
    if (!(max > 0)) return [];
    const claimed: { slot: StepSlot; previousStatus: StepStatus }[] = [];
    const setAside: DueEntry[] = [];
    try {
      while (claimed.length < max) {
        const top = this.due.peek();
        if (top === undefined || top.due > nowMs) break;
        this.due.pop();
        const slot = top.slot;
        if (top.version !== slot.version) continue;
        setAside.push(top);
        const lease = slot.record.leaseExpiresAt;
        if ((lease !== null && lease > nowMs) || this.locks.has(slot.record.workflowId)) continue;
        const token = request.tokens[claimed.length]!;
        claimed.push({ slot, previousStatus: slot.record.status });
        this.claimOne(slot, request.workerId, request.leaseMs, token, nowMs);
      }
    } finally {
      // Claiming changes neither dueAt nor candidacy, so every live entry goes back as it was.
      for (const entry of setAside) this.due.push(entry);
    }
    return claimed.map(({ slot, previousStatus }) => ({
      workflow: copyWorkflowRecord(slot.workflow.record),
      steps: slot.workflow.slots.map((s) => copyStepRecord(s.record)),
      stepName: slot.record.name,
      previousStatus,
      now: new Date(nowMs),
    }));
  }

  /**
   * Runs `fn` holding the workflow's lock and applies its buffered writes
   * atomically when it resolves. The lock is not reentrant: calling `transact`
   * for the same workflow inside `fn` never resolves.
   *
   * @throws a `not_found` error for an unknown workflow; a `stale_lease` error
   *   when a fenced write finds another lease token (nothing is written then).
   */
  async transact<T>(workflowId: string, fn: (tx: WorkflowTransaction) => T | Promise<T>): Promise<T> {
    if (!this.workflows.has(workflowId)) throw new NotFoundError(`workflow ${workflowId} not found`, { workflowId });
    await this.acquire(workflowId);
    let tx: MemoryTransaction | undefined;
    try {
      const entry = this.workflows.get(workflowId);
      if (!entry) throw new NotFoundError(`workflow ${workflowId} not found`, { workflowId });
      tx = new MemoryTransaction(entry, this.clock.now());
      const result = await fn(tx);
      tx.close();
      this.commit(entry, tx);
      return result;
    } finally {
      tx?.close();
      this.release(workflowId);
    }
  }

  /**
   * Heartbeat: moves the lease to `now + leaseMs` if `leaseToken` is still the
   * step's lease token. Waits for the workflow's lock like any other write.
   */
  async extendLease(workflowId: string, stepName: string, leaseToken: string, leaseMs: number): Promise<boolean> {
    const known = this.workflows.get(workflowId);
    if (!known || !slotNamed(known, stepName)) return false;
    await this.acquire(workflowId);
    try {
      const entry = this.workflows.get(workflowId);
      const slot = entry && slotNamed(entry, stepName);
      if (!slot || slot.record.leaseToken === null || slot.record.leaseToken !== leaseToken) return false;
      slot.record = patchedStep(slot.record, { leaseExpiresAt: this.clock.now() + leaseMs });
      return true;
    } finally {
      this.release(workflowId);
    }
  }

  /** The earliest `dueAt` of a claimable step (ignoring leases and locks), or null. */
  async nextDueAt(): Promise<Date | null> {
    for (;;) {
      const top = this.due.peek();
      if (top === undefined) return null;
      if (top.version === top.slot.version) return new Date(top.due);
      this.due.pop();
    }
  }

  // --- claim ---------------------------------------------------------------

  private claimOne(slot: StepSlot, workerId: string, leaseMs: number, token: ClaimRequest['tokens'][number], nowMs: number): void {
    const entry = slot.workflow;
    const prev = slot.record;
    const next: StoredStepPatch = {
      leaseOwner: workerId,
      leaseToken: token.leaseToken,
      leaseExpiresAt: nowMs + leaseMs,
    };
    const rows: NewHistoryEntry[] = [];
    const workflow: StoredWorkflow = patchedWorkflow(entry.record, {}, nowMs);
    if (workflow.status === 'pending') {
      workflow.status = 'running';
      rows.push(claimHistoryEntry('workflow', null, 'pending', 'running'));
    }
    switch (prev.status) {
      case 'pending':
        next.status = 'running';
        next.attempts = prev.attempts + 1;
        next.startedAt = nowMs;
        next.callbackTokenHash = token.callbackTokenHash;
        next.callbackResult = null;
        rows.push(claimHistoryEntry('step', prev.name, 'pending', 'running'));
        break;
      case 'running':
        next.attempts = prev.attempts + 1;
        next.retryCount = prev.retryCount + 1;
        workflow.retryCount += 1;
        next.startedAt = nowMs;
        next.callbackTokenHash = token.callbackTokenHash;
        // A callback accepted for the lost attempt stays: the vendor will not call again.
        rows.push({
          ...claimHistoryEntry('note', prev.name, null, null),
          action: 'lease_reclaimed',
          detail: { previousLeaseOwner: prev.leaseOwner, attempt: next.attempts },
        });
        break;
      case 'compensating':
        next.attempts = prev.attempts + 1;
        break;
      default:
        break;
    }
    entry.record = workflow;
    this.setStepRecord(slot, patchedStep(prev, next));
    this.appendHistoryRows(entry, rows, nowMs);
  }

  // --- transactions ----------------------------------------------------------

  private commit(entry: WorkflowEntry, tx: MemoryTransaction): void {
    if (tx.writes.length === 0) return;
    const now = tx.nowMs;
    // Any write touches the workflow's updatedAt, even one that only changes steps or history.
    let workflow = patchedWorkflow(entry.record, {}, now);
    const steps = new Map<StepSlot, StoredStep>();
    const history: NewHistoryEntry[] = [];
    // Compute the whole result first, so that a stale fence leaves everything untouched.
    for (const write of tx.writes) {
      switch (write.kind) {
        case 'workflow':
          workflow = patchedWorkflow(workflow, write.patch, now);
          break;
        case 'step': {
          const current = steps.get(write.slot) ?? write.slot.record;
          if (write.expectLeaseToken !== undefined && current.leaseToken !== write.expectLeaseToken) {
            throw new StaleLeaseError(
              `step ${current.name} of workflow ${current.workflowId}: lease token ${String(current.leaseToken)} is not the expected ${String(write.expectLeaseToken)}`,
              { workflowId: current.workflowId, stepName: current.name, status: current.status, attempts: current.attempts },
            );
          }
          steps.set(write.slot, patchedStep(current, write.patch));
          break;
        }
        case 'history':
          history.push(...write.entries);
          break;
      }
    }
    const wasActive = ACTIVE_WORKFLOW_STATUSES.has(entry.record.status);
    entry.record = workflow;
    for (const [slot, record] of steps) this.setStepRecord(slot, record);
    if (wasActive !== ACTIVE_WORKFLOW_STATUSES.has(workflow.status)) {
      for (const slot of entry.slots) this.reindex(slot);
    }
    this.appendHistoryRows(entry, history, now);
  }

  private acquire(workflowId: string): Promise<void> {
    const waiters = this.locks.get(workflowId);
    if (waiters === undefined) {
      this.locks.set(workflowId, []);
      return Promise.resolve();
    }
    return new Promise((resolve) => waiters.push(resolve));
  }

  private release(workflowId: string): void {
    const waiters = this.locks.get(workflowId);
    const next = waiters?.shift();
    // Hand the lock straight to the next waiter so a claim can never slip in between.
    if (next) next();
    else this.locks.delete(workflowId);
  }

  // --- indexes ---------------------------------------------------------------

  /** Replaces a step row, keeping the due index in step. */
  private setStepRecord(slot: StepSlot, record: StoredStep): void {
    slot.record = record;
    this.reindex(slot);
  }

  /** Puts the slot in the due index under its current `dueAt`, or takes it out when it is not a claim candidate. */
  private reindex(slot: StepSlot): void {
    const r = slot.record;
    const want =
      r.dueAt !== null && CLAIMABLE_STEP_STATUSES.has(r.status) && ACTIVE_WORKFLOW_STATUSES.has(slot.workflow.record.status) ? r.dueAt : null;
    if (want === slot.indexedDue) return;
    if (slot.indexedDue !== null) this.indexedCount--;
    slot.version++;
    slot.indexedDue = want;
    if (want === null) return;
    this.indexedCount++;
    this.due.push({ due: want, seq: this.dueSeq++, version: slot.version, slot });
    if (this.due.size > 2 * this.indexedCount + 1024) this.due.compact();
  }

  /** Appends normalized entries (see `normalizeHistory`); `nowMs` is the time of those without their own. */
  private appendHistoryRows(entry: WorkflowEntry, rows: NewHistoryEntry[], nowMs: number): void {
    for (const row of rows) {
      entry.history.push({
        seq: entry.nextSeq++,
        at: row.at ? row.at.getTime() : nowMs,
        kind: row.kind,
        stepName: row.stepName,
        from: row.from,
        to: row.to,
        actor: row.actor,
        reason: row.reason,
        action: row.action,
        detail: row.detail,
      });
    }
  }

  private insertByCreation(entry: WorkflowEntry): void {
    const rows = this.byCreation;
    const last = rows[rows.length - 1];
    if (last === undefined || compareKey(last.record.createdAt, last.record.id, entry.record.createdAt, entry.record.id) < 0) {
      rows.push(entry);
      return;
    }
    rows.splice(this.lowerBound(entry.record.createdAt, entry.record.id), 0, entry);
  }

  /** Index of the first workflow at or after `(createdMs, id)` in ascending order. */
  private lowerBound(createdMs: number, id: string): number {
    const rows = this.byCreation;
    let lo = 0;
    let hi = rows.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      const row = rows[mid]!;
      if (compareKey(row.record.createdAt, row.record.id, createdMs, id) < 0) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }
}

function compareKey(aMs: number, aId: string, bMs: number, bId: string): number {
  if (aMs !== bMs) return aMs < bMs ? -1 : 1;
  return aId < bId ? -1 : aId > bId ? 1 : 0;
}

type BufferedWrite =
  | { kind: 'workflow'; patch: StoredWorkflowPatch }
  | { kind: 'step'; slot: StepSlot; patch: StoredStepPatch; expectLeaseToken: string | null | undefined }
  | { kind: 'history'; entries: NewHistoryEntry[] };

/** A transaction over one workflow: a snapshot taken under the lock and a buffer of writes. */
class MemoryTransaction implements WorkflowTransaction {
  readonly writes: BufferedWrite[] = [];
  private closed = false;
  private workflowCopy: WorkflowRecord | undefined;
  private stepsCopy: readonly StepRecord[] | undefined;

  constructor(
    private readonly entry: WorkflowEntry,
    readonly nowMs: number,
  ) {}

  get now(): Date {
    return new Date(this.nowMs);
  }

  get workflow(): WorkflowRecord {
    this.workflowCopy ??= copyWorkflowRecord(this.entry.record);
    return this.workflowCopy;
  }

  get steps(): readonly StepRecord[] {
    this.stepsCopy ??= this.entry.slots.map((s) => copyStepRecord(s.record));
    return this.stepsCopy;
  }

  updateWorkflow(patch: WorkflowPatch): void {
    this.assertOpen();
    this.writes.push({ kind: 'workflow', patch: normalizeWorkflowPatch(patch) });
  }

  updateStep(name: string, patch: StepPatch, options?: { expectLeaseToken?: string | null }): void {
    this.assertOpen();
    const slot = slotNamed(this.entry, name);
    if (!slot) {
      throw new NotFoundError(`step ${name} not found in workflow ${this.entry.record.id}`, {
        workflowId: this.entry.record.id,
        stepName: name,
      });
    }
    this.writes.push({ kind: 'step', slot, patch: normalizeStepPatch(patch), expectLeaseToken: options?.expectLeaseToken });
  }

  appendHistory(entries: NewHistoryEntry[]): void {
    this.assertOpen();
    this.writes.push({ kind: 'history', entries: entries.map((e) => normalizeHistory(e, toJson)) });
  }

  close(): void {
    this.closed = true;
  }

  private assertOpen(): void {
    if (this.closed) {
      throw new StoreError(`the transaction on workflow ${this.entry.record.id} has already ended; writes must happen inside the callback`);
    }
  }
}

// --- copies and normalization --------------------------------------------------

type FieldKind = 'plain' | 'date' | 'json';

const STEP_PATCH_FIELDS = {
  status: 'plain',
  attempts: 'plain',
  retryCount: 'plain',
  startedAt: 'date',
  completedAt: 'date',
  dueAt: 'date',
  leaseOwner: 'plain',
  leaseToken: 'plain',
  leaseExpiresAt: 'date',
  callbackTokenHash: 'plain',
  callbackResult: 'json',
  pollCount: 'plain',
  pollDeadlineAt: 'date',
  output: 'json',
  error: 'json',
  completionSeq: 'plain',
} as const satisfies Record<keyof StepPatch, FieldKind>;

const WORKFLOW_PATCH_FIELDS = {
  status: 'plain',
  output: 'json',
  error: 'json',
  currentStep: 'plain',
  completedAt: 'date',
  retryCount: 'plain',
} as const satisfies Record<keyof WorkflowPatch, FieldKind>;

/** A patch checked and in stored form: times as ms, JSON values as their JSON form. */
function normalizePatch<P extends object>(patch: object, fields: Record<string, FieldKind>): P {
  const out: Record<string, unknown> = {};
  // `for…in` with an own-property check: the same keys as `Object.keys`, without an array per patch.
  for (const key in patch) {
    if (!Object.hasOwn(patch, key)) continue;
    const value = (patch as Record<string, unknown>)[key];
    // `undefined` means "leave as it is", as with a partial SQL update.
    if (value === undefined) continue;
    const kind = fields[key];
    if (kind === undefined) throw new TypeError(`${key} cannot be updated`);
    out[key] = kind === 'date' ? checkedTime(value, key) : kind === 'json' ? toJson(value) : value;
  }
  return out as P;
}

function normalizeStepPatch(patch: StepPatch): StoredStepPatch {
  if (patch.status !== undefined && !isStepStatus(patch.status)) throw new TypeError(`unknown step status ${String(patch.status)}`);
  return normalizePatch(patch, STEP_PATCH_FIELDS);
}

function normalizeWorkflowPatch(patch: WorkflowPatch): StoredWorkflowPatch {
  if (patch.status !== undefined && !isWorkflowStatus(patch.status)) {
    throw new TypeError(`unknown workflow status ${String(patch.status)}`);
  }
  return normalizePatch(patch, WORKFLOW_PATCH_FIELDS);
}




/** The value as a JSON column would return it; `undefined` becomes null. */
function toJson(value: unknown): unknown {
  if (value === undefined || value === null) return null;
  switch (typeof value) {
    case 'string':
    case 'boolean':
      return value;
    case 'number':
      return Number.isFinite(value) ? value : null;
    default: {
      const text = JSON.stringify(value) as string | undefined;
      return text === undefined ? null : (JSON.parse(text) as unknown);
    }
  }
}

/**
 * A step row in stored form (times as ms), from a new record (see `newStepRecord`).
 * Every stored step is built here or by {@link patchedStep}, with the same
 * fields in the same order, so all share one object shape.
 */
function storedStep(r: StepRecord): StoredStep {
  return {
    workflowId: r.workflowId,
    name: r.name,
    position: r.position,
    dependsOn: r.dependsOn,
    status: r.status,
    attempts: r.attempts,
    retryCount: r.retryCount,
    maxAttempts: r.maxAttempts,
    startedAt: r.startedAt === null ? null : r.startedAt.getTime(),
    completedAt: r.completedAt === null ? null : r.completedAt.getTime(),
    dueAt: r.dueAt === null ? null : r.dueAt.getTime(),
    leaseOwner: r.leaseOwner,
    leaseToken: r.leaseToken,
    leaseExpiresAt: r.leaseExpiresAt === null ? null : r.leaseExpiresAt.getTime(),
    callbackTokenHash: r.callbackTokenHash,
    callbackResult: r.callbackResult,
    pollCount: r.pollCount,
    pollDeadlineAt: r.pollDeadlineAt === null ? null : r.pollDeadlineAt.getTime(),
    output: r.output,
    error: r.error,
    completionSeq: r.completionSeq,
  };
}

/** `r` with `p` applied (a field `p` leaves out is kept); stored rows are never changed in place. */
function patchedStep(r: StoredStep, p: StoredStepPatch): StoredStep {
  return {
    workflowId: r.workflowId,
    name: r.name,
    position: r.position,
    dependsOn: r.dependsOn,
    status: p.status ?? r.status,
    attempts: p.attempts ?? r.attempts,
    retryCount: p.retryCount ?? r.retryCount,
    maxAttempts: r.maxAttempts,
    startedAt: p.startedAt !== undefined ? p.startedAt : r.startedAt,
    completedAt: p.completedAt !== undefined ? p.completedAt : r.completedAt,
    dueAt: p.dueAt !== undefined ? p.dueAt : r.dueAt,
    leaseOwner: p.leaseOwner !== undefined ? p.leaseOwner : r.leaseOwner,
    leaseToken: p.leaseToken !== undefined ? p.leaseToken : r.leaseToken,
    leaseExpiresAt: p.leaseExpiresAt !== undefined ? p.leaseExpiresAt : r.leaseExpiresAt,
    callbackTokenHash: p.callbackTokenHash !== undefined ? p.callbackTokenHash : r.callbackTokenHash,
    callbackResult: p.callbackResult !== undefined ? p.callbackResult : r.callbackResult,
    pollCount: p.pollCount ?? r.pollCount,
    pollDeadlineAt: p.pollDeadlineAt !== undefined ? p.pollDeadlineAt : r.pollDeadlineAt,
    output: p.output !== undefined ? p.output : r.output,
    error: p.error !== undefined ? p.error : r.error,
    completionSeq: p.completionSeq !== undefined ? p.completionSeq : r.completionSeq,
  };
}

/** `r` with `p` applied and `updatedAt` set (every write sets it); same shape for every stored workflow. */
function patchedWorkflow(r: StoredWorkflow, p: StoredWorkflowPatch, updatedAt: number): StoredWorkflow {
  return {
    id: r.id,
    tenantId: r.tenantId,
    type: r.type,
    serviceSlug: r.serviceSlug,
    status: p.status ?? r.status,
    definitionVersion: r.definitionVersion,
    input: r.input,
    output: p.output !== undefined ? p.output : r.output,
    error: p.error !== undefined ? p.error : r.error,
    idempotencyKey: r.idempotencyKey,
    currentStep: p.currentStep !== undefined ? p.currentStep : r.currentStep,
    retryCount: p.retryCount ?? r.retryCount,
    createdAt: r.createdAt,
    updatedAt,
    completedAt: p.completedAt !== undefined ? p.completedAt : r.completedAt,
  };
}

function copyHistory(r: StoredHistory, workflowId: string): HistoryRecord {
  return {
    seq: r.seq,
    workflowId,
    at: new Date(r.at),
    kind: r.kind,
    stepName: r.stepName,
    from: r.from,
    to: r.to,
    actor: r.actor,
    reason: r.reason,
    action: r.action,
    detail: copyJson(r.detail),
  };
}

/** A new step's initial lease, checked and copied. */
function checkClaim(claim: NewStepClaim): NewStepClaim {
  const leaseExpiresAt = checkedDate(claim.leaseExpiresAt, 'leaseExpiresAt');
  if (leaseExpiresAt === null) throw new TypeError('claim.leaseExpiresAt is required');
  for (const field of ['workerId', 'leaseToken', 'callbackTokenHash'] as const) {
    if (typeof claim[field] !== 'string' || claim[field] === '') throw new TypeError(`claim.${field} must be a non-empty string`);
  }
  return { ...claim, leaseExpiresAt };
}
