/**
 * A {@link WorkflowStore} wrapper that fails chosen calls: "the N-th call of
 * method M". It counts every call of every method, and also the writes made
 * inside a transaction (`tx.updateWorkflow`, `tx.updateStep`,
 * `tx.appendHistory`) and the commit that ends one (`tx.commit`), so that every
 * failure path of the engine can be reached by sweeping N.
 *
 * Timing of a fault on a store method:
 * - `before`: the call never reaches the store (a refused connection, a
 *   statement that failed): nothing is written.
 * - `after`: the store did the work, then the caller sees an error (the reply
 *   was lost): everything is written.
 * A fault on a `tx.*` point throws inside the transaction's callback, so the
 * store must write nothing at all.
 *
 * With `checkAtomicity`, a transaction that failed before its commit is
 * compared with a snapshot taken just before it (when no other write ran
 * meanwhile): any difference is a half-written state, kept in
 * {@link FaultyStore.atomicityViolations}.
 *
 * Without armed faults the wrapper only counts: tests also use it to know when
 * the engine has no store call in flight ({@link FaultyStore.inFlight}).
 */
import type {
  ClaimedStep,
  ClaimRequest,
  CreateWorkflowInput,
  CreateWorkflowResult,
  HistoryRecord,
  NewHistoryEntry,
  StepPatch,
  StepRecord,
  StoreListQuery,
  WorkflowPatch,
  WorkflowRecord,
  WorkflowStore,
  TransactOptions,
  WorkflowTransaction,
} from '../../../src/storage/workflow-store.js';

/** Every method of the storage port the wrapper can fail. */
export const STORE_METHODS = [
  'now',
  'createWorkflow',
  'getWorkflow',
  'getSteps',
  'getHistory',
  'listWorkflows',
  'claimSteps',
  'transact',
  'extendLease',
  'nextDueAt',
  'subscribe',
] as const;

/** Points inside a transaction the wrapper can fail. */
export const TX_POINTS = ['tx.updateWorkflow', 'tx.updateStep', 'tx.appendHistory', 'tx.commit'] as const;

export type StoreMethod = (typeof STORE_METHODS)[number];
export type TxPoint = (typeof TX_POINTS)[number];
export type FaultPoint = StoreMethod | TxPoint;
export type FaultTiming = 'before' | 'after';

/** Fail the `nth` call (1-based, counted since the last reset) of `point`. */
export interface Fault {
  point: FaultPoint;
  nth: number;
  /** For store methods; ignored for `tx.*` points. @default 'before' */
  timing?: FaultTiming;
}

/** The error an armed fault throws. */
export class InjectedFault extends Error {
  override readonly name = 'InjectedFault';
  readonly code = 'injected_fault';
  constructor(
    readonly point: FaultPoint,
    readonly nth: number,
    readonly timing: FaultTiming,
  ) {
    super(`injected fault: ${point} call #${nth} (${timing})`);
  }
}

/** True when `err` is an injected fault, or carries one as its cause. */
export function isInjectedFault(err: unknown): err is InjectedFault {
  for (let e = err, depth = 0; e !== null && e !== undefined && depth < 5; e = (e as { cause?: unknown }).cause, depth++) {
    if (e instanceof InjectedFault) return true;
  }
  return false;
}

const WRITES: ReadonlySet<FaultPoint> = new Set<FaultPoint>(['createWorkflow', 'claimSteps', 'transact', 'extendLease']);

/** See the module notes. */
export class FaultyStore implements WorkflowStore {
  /** Calls per point since the last {@link resetCounts}. */
  readonly calls = new Map<FaultPoint, number>();
  /** Faults that fired, in order. */
  readonly fired: InjectedFault[] = [];
  /** Half-written transactions found by the atomicity check. */
  readonly atomicityViolations: string[] = [];
  /** Store calls that have started and not yet settled. */
  inFlight = 0;
  /** While true, every store method call fails before reaching the store (an outage). */
  down = false;
  /**
   * Called before each store method call reaches the store (after it is
   * counted); the call waits for it. Tests use it to force an interleaving of
   * concurrent operations, or to shuffle them.
   */
  delay: ((point: StoreMethod, nth: number) => void | Promise<void>) | null = null;
  private readonly running = new Map<StoreMethod, number>();
  private armed: Fault[] = [];
  private activeWrites = 0;
  private writeEpoch = 0;

  /** Present when the inner store offers wake-ups. */
  readonly subscribe?: (listener: () => void) => Promise<() => Promise<void>>;

  constructor(
    readonly inner: WorkflowStore,
    private readonly options: { checkAtomicity?: boolean } = {},
  ) {
    const subscribe = inner.subscribe?.bind(inner);
    if (subscribe) this.subscribe = (listener) => this.call('subscribe', () => subscribe(listener));
  }

  /** Adds faults; each fires once. */
  arm(...faults: Fault[]): void {
    this.armed.push(...faults);
  }

  /** Removes every armed fault that has not fired. */
  disarm(): void {
    this.armed = [];
  }

  /** Faults still armed. */
  pending(): readonly Fault[] {
    return this.armed;
  }

  resetCounts(): void {
    this.calls.clear();
  }

  count(point: FaultPoint): number {
    return this.calls.get(point) ?? 0;
  }

  /** Calls of `point` that have started and not yet settled. */
  inFlightOf(point: StoreMethod): number {
    return this.running.get(point) ?? 0;
  }

  // ---------------------------------------------------------------- the port

  now(): Promise<Date> {
    return this.call('now', () => this.inner.now());
  }

  createWorkflow(input: CreateWorkflowInput): Promise<CreateWorkflowResult> {
    return this.call('createWorkflow', () => this.inner.createWorkflow(input));
  }

  getWorkflow(id: string): Promise<WorkflowRecord | null> {
    return this.call('getWorkflow', () => this.inner.getWorkflow(id));
  }

  getSteps(workflowId: string): Promise<StepRecord[]> {
    return this.call('getSteps', () => this.inner.getSteps(workflowId));
  }

  getHistory(workflowId: string): Promise<HistoryRecord[]> {
    return this.call('getHistory', () => this.inner.getHistory(workflowId));
  }

  clockSlackMs(): number {
    return this.inner.clockSlackMs?.() ?? 0;
  }

  listWorkflows(query: StoreListQuery): Promise<WorkflowRecord[]> {
    return this.call('listWorkflows', () => this.inner.listWorkflows(query));
  }

  claimSteps(request: ClaimRequest): Promise<ClaimedStep[]> {
    return this.call('claimSteps', () => this.inner.claimSteps(request));
  }

  extendLease(workflowId: string, stepName: string, leaseToken: string, leaseMs: number): Promise<boolean> {
    return this.call('extendLease', () => this.inner.extendLease(workflowId, stepName, leaseToken, leaseMs));
  }

  nextDueAt(): Promise<Date | null> {
    return this.call('nextDueAt', () => this.inner.nextDueAt());
  }

  transact<T>(workflowId: string, fn: (tx: WorkflowTransaction) => T | Promise<T>, options?: TransactOptions): Promise<T> {
    return this.call('transact', async () => {
      const watch = this.options.checkAtomicity && this.activeWrites === 1 && this.armed.some((f) => f.point === 'transact' || f.point.startsWith('tx.'));
      const epoch = this.writeEpoch;
      const firedBefore = this.fired.length;
      const before = watch ? await this.snapshot(workflowId) : null;
      try {
        return await this.inner.transact(workflowId, async (tx) => {
          const result = await fn(this.wrapTransaction(tx));
          const fault = this.hit('tx.commit');
          if (fault) throw this.fire(fault, 'before');
          return result;
        }, options);
      } catch (err) {
        const firedHere = this.fired.slice(firedBefore).some((f) => f.point.startsWith('tx.'));
        if (before !== null && firedHere && isInjectedFault(err) && epoch === this.writeEpoch && this.activeWrites === 1) {
          const after = await this.snapshot(workflowId);
          if (after !== before) {
            this.atomicityViolations.push(`transaction on ${workflowId} failed with "${(err as Error).message}" but changed the workflow:\nbefore ${before}\nafter  ${after}`);
          }
        }
        throw err;
      }
    });
  }

  async close(): Promise<void> {
    await this.inner.close?.();
  }

  // ---------------------------------------------------------------- internals

  private async call<T>(point: StoreMethod, body: () => Promise<T>): Promise<T> {
    const write = WRITES.has(point);
    this.inFlight++;
    this.running.set(point, (this.running.get(point) ?? 0) + 1);
    if (write) {
      this.activeWrites++;
      this.writeEpoch++;
    }
    try {
      const fault = this.hit(point) ?? (this.down ? { point, nth: this.count(point), timing: 'before' as const } : undefined);
      if (this.delay) await this.delay(point, this.count(point));
      const timing = fault?.timing ?? 'before';
      if (fault && timing === 'before') {
        // Fail asynchronously, as a real store call would.
        await Promise.resolve();
        throw this.fire(fault, 'before');
      }
      const result = await body();
      if (fault) throw this.fire(fault, 'after');
      return result;
    } finally {
      this.inFlight--;
      this.running.set(point, (this.running.get(point) ?? 1) - 1);
      if (write) this.activeWrites--;
    }
  }

  private hit(point: FaultPoint): Fault | undefined {
    const n = (this.calls.get(point) ?? 0) + 1;
    this.calls.set(point, n);
    const i = this.armed.findIndex((f) => f.point === point && f.nth === n);
    if (i < 0) return undefined;
    return this.armed.splice(i, 1)[0];
  }

  private fire(fault: Fault, timing: FaultTiming): InjectedFault {
    const err = new InjectedFault(fault.point, fault.nth, timing);
    this.fired.push(err);
    return err;
  }

  private wrapTransaction(tx: WorkflowTransaction): WorkflowTransaction {
    const guard = (point: TxPoint) => {
      const fault = this.hit(point);
      if (fault) throw this.fire(fault, 'before');
    };
    return {
      get now() {
        return tx.now;
      },
      get workflow() {
        return tx.workflow;
      },
      get steps() {
        return tx.steps;
      },
      updateWorkflow(patch: WorkflowPatch) {
        guard('tx.updateWorkflow');
        tx.updateWorkflow(patch);
      },
      updateStep(name: string, patch: StepPatch, options?: { expectLeaseToken?: string | null }) {
        guard('tx.updateStep');
        tx.updateStep(name, patch, options);
      },
      appendHistory(entries: NewHistoryEntry[]) {
        guard('tx.appendHistory');
        tx.appendHistory(entries);
      },
    };
  }

  private async snapshot(workflowId: string): Promise<string> {
    const [workflow, steps, history] = await Promise.all([
      this.inner.getWorkflow(workflowId),
      this.inner.getSteps(workflowId),
      this.inner.getHistory(workflowId),
    ]);
    return JSON.stringify({ workflow, steps, history });
  }
}
