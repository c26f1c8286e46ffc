import { z } from 'zod';
import { systemClock, type Clock, type ClockTimer } from '../core/clock.js';
import { isCallbackWait, type CallbackWait, type ResolvedStep, type WorkflowDefinition } from '../core/define-workflow.js';
import { childLogger, type Logger } from '../core/logger.js';
import { retryDelay, shouldRetry, type ResolvedRetryPolicy } from '../core/retry-policy.js';
import { assertStepTransition, NON_TERMINAL_STEP_STATUSES, type StepStatus } from '../core/step-status.js';
import { assertWorkflowTransition, isWorkflowStatus, type WorkflowStatus } from '../core/workflow-status.js';
import { ConflictError, InvalidDefinitionError, NotFoundError, ValidationError, isSagalineError, type ValidationIssue } from '../errors.js';
import { createEventEmitter, safeEmit, type WorkflowEventEmitter, type WorkflowEventName, type WorkflowEventPayload } from '../events/workflow-events.js';
import type {
  ClaimedStep,
  HistoryRecord,
  NewHistoryEntry,
  NewStep,
  StepPatch,
  StepRecord,
  StoredError,
  WorkflowRecord,
  WorkflowStore,
  WorkflowTransaction,
} from '../storage/workflow-store.js';
import type { EngineOptions } from './engine-config.js';
import type {
  AdminActionOptions,
  CallbackResult,
  ListWorkflowsQuery,
  ListWorkflowsResult,
  StartOptions,
  StepDetail,
  WorkflowDetail,
  WorkflowEngineApi,
  WorkflowSummary,
} from './engine-types.js';
import { newStepRecord } from '../storage/new-records.js';
import { newWorkflowId } from './ids.js';
import { CALLBACK_SECRET_BYTES, callbackToken, parseCallbackToken } from './callback-token.js';
import { fromBase64Url, hashToken, randomToken, toBase64Url } from './tokens.js';

/** A lease token, a callback token and the callback token's hash, minted together for one claim. */
type TokenPair = { leaseToken: string; callbackSecret: string; callbackTokenHash: string };

/**
 * A claimed step with the plaintext tokens of its claim. `releaseSlot`, set
 * by the launch that runs it, frees its concurrency slot once its last write
 * has committed (before that write's events), so that work started from an
 * event handler finds the slot free.
 */
type Claim = ClaimedStep & { callbackSecret: string; leaseToken: string; releaseSlot?: () => void };

/** Times a worker keeps to wake at for steps it scheduled (see `wakeWhenDue`); later ones wait for its poll. */
const MAX_DUE_TIMES = 1_024;

/** A step a transaction made due later (`due`), written at store time `at`. */
interface ScheduledStep {
  at: Date;
  due: Date;
}

type PendingEvent = { [E in WorkflowEventName]: { name: E; payload: WorkflowEventPayload<E> } }[WorkflowEventName];

/** What a handler call ended with. */
type Outcome = { ok: true; value: unknown } | { ok: false; error: unknown; aborted?: 'lease_lost' | 'admin' | 'shutdown' | 'finished' };

const defaultLogger: Logger = {
  debug: () => {},
  info: () => {},
  warn: (m, c) => console.warn(`[sagaline] ${m}`, c ?? ''),
  error: (m, c) => console.error(`[sagaline] ${m}`, c ?? ''),
};

const startSchema = z.object({
  tenantId: z.string().min(1).max(200),
  serviceSlug: z.string().min(1).max(200).optional(),
  idempotencyKey: z.string().min(1).max(200).optional(),
});

const callbackSchema = z.object({
  status: z.enum(['success', 'failed']),
  output: z.unknown().optional(),
  endpoint: z.string().max(2048).optional(),
  credentials: z.unknown().optional(),
  metadata: z.unknown().optional(),
  error: z.unknown().optional(),
});

class StepTimeoutError extends Error {
  override readonly name = 'StepTimeoutError';
  readonly code = 'timeout';
}

class AbortedError extends Error {
  override readonly name = 'AbortedError';
  constructor(readonly why: 'lease_lost' | 'admin' | 'shutdown' | 'finished') {
    super(`handler aborted: ${why}`);
  }
}

/** The abort reason given to a handler's signal once its attempt has finished (shared: no stack per step). */
const ATTEMPT_OVER = new AbortedError('finished');

/**
 * One handler attempt: its abort side, and what the handler context's
 * `signal` and `logger` read (see {@link withAttempt}). The `AbortController`
 * (and its signal) is made only when the handler reads `ctx.signal`: most
 * handlers never do, and a controller, its signal and its event dispatch cost
 * more than a trivial step. Aborting before that is remembered and given to
 * the signal when it is made. The logger is made on first read too.
 */
class Attempt {
  private controller: AbortController | null = null;
  private reason: unknown = undefined;
  private listener: ((reason: unknown) => void) | null = null;
  private log: Logger | null = null;
  aborted = false;

  constructor(
    private readonly parentLogger: Logger,
    private readonly workflowId: string,
    private readonly stepName: string,
  ) {}

  get logger(): Logger {
    return (this.log ??= childLogger(this.parentLogger, { workflowId: this.workflowId, stepName: this.stepName }));
  }

  get signal(): AbortSignal {
    if (!this.controller) {
      this.controller = new AbortController();
      if (this.aborted) this.controller.abort(this.reason);
    }
    return this.controller.signal;
  }

  /** Aborts the attempt (the first reason wins), and tells the listener. */
  abort(reason: unknown): void {
    if (this.aborted) return;
    this.aborted = true;
    this.reason = reason;
    this.controller?.abort(reason);
    const listener = this.listener;
    // Dropped once called: it closes over the whole step (its claim, snapshots and result), and the
    // attempt can stay reachable after its step is done. Kept, it made the objects of every finished
    // step survive young collections until a full one (measured with `--trace-gc-nvp`).
    this.listener = null;
    listener?.(reason);
  }

  /** Calls `fn` once with the reason when the attempt is aborted (at once if it already was). */
  onAbort(fn: (reason: unknown) => void): void {
    if (this.aborted) fn(this.reason);
    else this.listener = fn;
  }
}

const ATTEMPT = Symbol('sagaline.attempt');

type WithAttempt = { readonly [ATTEMPT]: Attempt };

/**
 * A handler context's `signal` and `logger`: own enumerable getters, as an
 * object literal's `get` accessors would be (a spread of the context copies
 * them), but the same two functions for every context. Accessors written in
 * an object literal are new closures on every call, and an object with
 * accessors of its own kept what they closed over alive through young
 * collections, until a full one (measured with `--trace-gc-nvp`).
 */
const ATTEMPT_ACCESSORS: PropertyDescriptorMap = {
  signal: {
    get(this: WithAttempt) {
      return this[ATTEMPT].signal;
    },
    enumerable: true,
    configurable: true,
  },
  logger: {
    get(this: WithAttempt) {
      return this[ATTEMPT].logger;
    },
    enumerable: true,
    configurable: true,
  },
};

/** `fields` with the attempt's `signal` and `logger` (see {@link ATTEMPT_ACCESSORS}). */
function withAttempt<T extends object>(attempt: Attempt, fields: T): T & { readonly signal: AbortSignal; readonly logger: Logger } {
  Object.defineProperty(fields, ATTEMPT, { value: attempt });
  return Object.defineProperties(fields, ATTEMPT_ACCESSORS) as T & { readonly signal: AbortSignal; readonly logger: Logger };
}

/**
 * A worker with steps in flight claims for the store's wake-ups (work made
 * due by other processes) at most once per this many milliseconds, so that
 * under load one claim takes the work of many notifications instead of one
 * claim per notification (of which every listening process but one finds
 * nothing). An idle worker claims at once. In the 3-process bench with group
 * commit at 32 clients, 10 ms ran 9% slower than workers polling every 20 ms
 * without notifications, 25 ms as fast, 50 ms 4% slower.
 */
const STORE_WAKE_INTERVAL_MS = 25;

/**
 * The workflow engine: starts workflows, claims due steps from the store and
 * runs them, applies callbacks, and carries out the admin operations. Every
 * status change is validated against the transition tables and committed
 * before its event is emitted.
 *
 * Create it with {@link createEngine}.
 */
export class WorkflowEngine implements WorkflowEngineApi {
  /** Typed events, emitted after the transition they report was stored. */
  readonly events: WorkflowEventEmitter = createEventEmitter();
  readonly workerId: string;
  private readonly store: WorkflowStore;
  private readonly clock: Clock;
  private readonly logger: Logger;
  private readonly concurrency: number;
  private readonly leaseMs: number;
  private readonly idlePollMs: number;
  private readonly shutdownTimeoutMs: number;
  private readonly random: () => number;
  private readonly definitions = new Map<string, Map<string, WorkflowDefinition<any, any>>>();
  private readonly latest = new Map<string, WorkflowDefinition<any, any>>();
  /** Handlers running in this process, by `workflowId\0stepName`. */
  private readonly running = new Map<string, { attempt: Attempt; leaseToken: string }>();
  private inFlight = 0;
  /** Token pairs minted for claims that did not use them. */
  private readonly tokenPool: TokenPair[] = [];
  /** Whether the last claim filled every free slot (so more work may be waiting when a slot frees). */
  private saturated = false;
  /** Every claimed step being processed in this engine, until its result is written. */
  private readonly launches = new Set<Promise<void>>();
  private unsubscribe: Promise<(() => Promise<void>) | null> | null = null;
  private workerLoop: Promise<void> | null = null;
  private stopping = false;
  private wakeUp: (() => void) | null = null;
  private wakePending = false;
  /** Times (engine clock, in order) at which steps this engine scheduled for later fall due: retries, polls, callback timeouts. */
  private readonly dueTimes: number[] = [];
  /** Armed for the first of {@link dueTimes}; wakes the loop. */
  private dueTimer: ClockTimer | null = null;
  /** A store wake-up deferred by {@link STORE_WAKE_INTERVAL_MS}. */
  private storeWakeTimer: ClockTimer | null = null;
  /** When the worker loop last began a claim (engine clock). */
  private lastClaimAt = -Infinity;

  constructor(options: EngineOptions) {
    if (!options || typeof options !== 'object') throw new InvalidDefinitionError('createEngine needs an options object');
    if (!options.store) throw new InvalidDefinitionError('createEngine: "store" is required');
    this.store = options.store;
    this.clock = options.clock ?? systemClock;
    this.logger = options.logger ?? defaultLogger;
    this.concurrency = intOption(options.concurrency, 10, 'concurrency', 1);
    this.leaseMs = intOption(options.leaseMs, 30_000, 'leaseMs', 10);
    this.idlePollMs = intOption(options.idlePollMs, 1000, 'idlePollMs', 1);
    this.shutdownTimeoutMs = intOption(options.shutdownTimeoutMs, 30_000, 'shutdownTimeoutMs', 0);
    this.random = options.random ?? Math.random;
    this.workerId = options.workerId ?? `worker_${randomToken(6)}`;
    if (!Array.isArray(options.workflows) || options.workflows.length === 0) {
      throw new InvalidDefinitionError('createEngine: "workflows" must list at least one definition');
    }
    for (const def of options.workflows) {
      if (!def || def.kind !== 'sagaline.workflow') throw new InvalidDefinitionError('createEngine: every entry of "workflows" must come from defineWorkflow()');
      if (def.steps.length === 0) throw new InvalidDefinitionError(`createEngine: workflow "${def.name}" has no steps`);
      let versions = this.definitions.get(def.name);
      if (!versions) this.definitions.set(def.name, (versions = new Map()));
      versions.set(def.version, def);
      this.latest.set(def.name, def);
    }
  }

  // ---------------------------------------------------------------- starting and reading

  /**
   * Starts a workflow. The input is validated with the definition's schema;
   * with an `idempotencyKey` a repeated start for the same tenant returns the
   * existing workflow.
   */
  async start(type: string, options: StartOptions): Promise<WorkflowDetail> {
    const def = typeof type === 'string' ? this.latest.get(type) : undefined;
    if (!def) {
      throw new ValidationError(`unknown workflow type ${JSON.stringify(type)}`, [
        { path: ['type'], message: `unknown workflow type; registered: ${[...this.latest.keys()].join(', ')}`, code: 'unknown_type' },
      ]);
    }
    const opts = startSchema.safeParse(options ?? {});
    if (!opts.success) throw zodToValidation('invalid start options', opts.error.issues, []);
    const input = def.input.safeParse((options as StartOptions).input);
    if (!input.success) throw zodToValidation(`invalid input for workflow "${type}"`, input.error.issues, ['input']);
    let jsonInput: unknown;
    try {
      jsonInput = toJson(input.data);
    } catch {
      throw new ValidationError('workflow input must be JSON-serializable', [{ path: ['input'], message: 'not JSON-serializable', code: 'invalid_type' }]);
    }
    const now = await this.store.now();
    const id = newWorkflowId(now.getTime());
    // A running worker with free slots runs the first steps itself: they are created claimed by it.
    const roots = def.steps.filter((s) => s.dependsOn.length === 0).length;
    const local = this.workerLoop && !this.stopping ? Math.min(roots, Math.max(0, this.concurrency - this.inFlight)) : 0;
    const pairs = local > 0 ? await this.takeTokenPairs(local) : [];
    const claims = new Map<string, TokenPair>();
    const steps: NewStep[] = def.steps.map((s) => {
      const step: NewStep = { name: s.name, position: s.position, dependsOn: [...s.dependsOn], maxAttempts: s.retry.maximumAttempts, dueAt: null };
      if (s.dependsOn.length > 0) return step;
      step.dueAt = now;
      const pair = pairs[claims.size];
      if (pair) {
        claims.set(s.name, pair);
        step.claim = {
          workerId: this.workerId,
          leaseToken: pair.leaseToken,
          leaseExpiresAt: deadline(now, this.leaseMs, this.clockSlack()),
          callbackTokenHash: pair.callbackTokenHash,
        };
      }
      return step;
    });
    const entry = (kind: 'workflow' | 'step', stepName: string | null, from: string | null, to: string, action: string | null): NewHistoryEntry => ({
      kind,
      stepName,
      from,
      to,
      actor: null,
      reason: null,
      action,
      detail: null,
      at: now,
    });
    // The history a claim would have written: the workflow starts running, then each claimed step.
    const history: NewHistoryEntry[] = [entry('workflow', null, null, 'pending', 'start')];
    if (claims.size > 0) history.push(entry('workflow', null, 'pending', 'running', null));
    for (const name of claims.keys()) history.push(entry('step', name, 'pending', 'running', null));
    // On an error the tokens are dropped: a commit whose reply was lost may have stored them.
    const result = await this.store.createWorkflow({
      workflow: {
        id,
        tenantId: opts.data.tenantId,
        type: def.name,
        serviceSlug: opts.data.serviceSlug ?? null,
        status: claims.size > 0 ? 'running' : 'pending',
        definitionVersion: def.version,
        input: jsonInput,
        idempotencyKey: opts.data.idempotencyKey ?? null,
        createdAt: now,
      },
      steps,
      history,
    });
    if (!result.created) {
      this.returnTokenPairs(pairs);
      return this.get(result.workflow.id);
    }
    this.emit({ name: 'workflow:started', payload: { workflowId: id, tenantId: opts.data.tenantId, type: def.name, at: now } });
    // The new rows are exactly what was written: answer without reading them back.
    const stepRecords = steps.map((s) => newStepRecord(id, s, now));
    const detail = toDetail(
      result.workflow,
      stepRecords,
      history.map((h, i) => ({ ...h, at: now, seq: i + 1, workflowId: id })),
    );
    for (const [stepName, pair] of claims) {
      void this.launch(
        {
          workflow: { ...result.workflow },
          steps: stepRecords.map((s) => ({ ...s })),
          stepName,
          previousStatus: 'pending',
          now,
          leaseToken: pair.leaseToken,
          callbackSecret: pair.callbackSecret,
        },
        true,
      );
    }
    // Roots left for a claim (no worker here, or no free slot): wake the loop.
    if (claims.size < roots) this.wake();
    return detail;
  }

  /** Puts token pairs that no step took back into the pool (they were never stored). */
  private returnTokenPairs(pairs: TokenPair[]): void {
    for (const pair of pairs) if (this.tokenPool.length < 256) this.tokenPool.push(pair);
  }

  /** A workflow with its steps and history. Throws `not_found` for an unknown id. */
  async get(id: string): Promise<WorkflowDetail> {
    if (typeof id !== 'string' || id.length === 0 || id.length > 200) throw new NotFoundError(`workflow ${JSON.stringify(id)} not found`, {});
    const workflow = await this.store.getWorkflow(id);
    if (!workflow) throw new NotFoundError(`workflow ${id} not found`, { workflowId: id });
    const [steps, history] = await Promise.all([this.store.getSteps(id), this.store.getHistory(id)]);
    return toDetail(workflow, steps, history);
  }

  /** Workflows of every tenant (or one, with `tenantId`), newest first, with a keyset cursor. */
  async list(query: ListWorkflowsQuery = {}): Promise<ListWorkflowsResult> {
    const limit = query.limit ?? 50;
    const issues: ValidationIssue[] = [];
    if (!Number.isInteger(limit) || limit < 1 || limit > 200) issues.push({ path: ['limit'], message: 'must be an integer from 1 to 200', code: 'out_of_range' });
    if (query.status !== undefined && !isWorkflowStatus(query.status)) issues.push({ path: ['status'], message: 'unknown workflow status', code: 'invalid_enum' });
    for (const key of ['createdAfter', 'createdBefore'] as const) {
      const v = query[key];
      if (v !== undefined && (!(v instanceof Date) || Number.isNaN(v.getTime()))) issues.push({ path: [key], message: 'must be a valid Date', code: 'invalid_date' });
    }
    let after: { createdAt: Date; id: string } | undefined;
    if (query.cursor !== undefined) {
      after = decodeCursor(query.cursor) ?? undefined;
      if (!after) issues.push({ path: ['cursor'], message: 'invalid cursor', code: 'invalid_cursor' });
    }
    if (issues.length > 0) throw new ValidationError('invalid list query', issues);
    const rows = await this.store.listWorkflows({
      ...(query.tenantId !== undefined ? { tenantId: query.tenantId } : {}),
      ...(query.status !== undefined ? { status: query.status } : {}),
      ...(query.type !== undefined ? { type: query.type } : {}),
      ...(query.serviceSlug !== undefined ? { serviceSlug: query.serviceSlug } : {}),
      ...(query.createdAfter !== undefined ? { createdAfter: query.createdAfter } : {}),
      ...(query.createdBefore !== undefined ? { createdBefore: query.createdBefore } : {}),
      ...(after ? { after } : {}),
      limit: limit + 1,
    });
    const page = rows.slice(0, limit);
    const last = page[page.length - 1];
    return { items: page.map(toSummary), nextCursor: rows.length > limit && last ? encodeCursor(last) : null };
  }

  // ---------------------------------------------------------------- admin operations

  /**
   * Completes a stuck workflow: every `pending, running, waiting_callback,
   * waiting_poll` step becomes `skipped`, failed and completed steps keep
   * their status, and running handlers are aborted (their late results are
   * discarded by the lease fence). Allowed from `pending, running, failed`.
   */
  async forceComplete(id: string, options: AdminActionOptions = {}): Promise<WorkflowDetail> {
    const admin = adminFields(options);
    const events: PendingEvent[] = [];
    const skipped = await this.transactOrNotFound(id, (tx) => {
      const wf = tx.workflow;
      if (!(['pending', 'running', 'failed'] as WorkflowStatus[]).includes(wf.status)) {
        throw new ConflictError(`cannot force-complete workflow ${id}: it is ${wf.status} (allowed from pending, running, failed)`, {
          workflowId: id,
          status: wf.status,
        });
      }
      const w = this.writer(tx, events);
      w.admin('force_complete', admin);
      const names = w.skipActiveSteps('force_complete');
      w.setWorkflowStatus('completed', { completedAt: tx.now, output: collectOutputs(w.steps()), currentStep: null });
      events.push({ name: 'workflow:force_completed', payload: { ...w.base(), ...admin, skippedSteps: names } });
      return names;
    });
    this.abortLocal(id, skipped, 'admin');
    this.flush(events);
    return this.get(id);
  }

  /**
   * Retries a failed step: `failed -> pending` with `retryCount + 1`, a fresh
   * set of attempts, due now; the workflow goes back to `running` and its
   * dependents run after it. Allowed when the workflow is `failed` (or
   * `running`) and the step is `failed`.
   */
  async retryStep(id: string, stepName: string, options: AdminActionOptions = {}): Promise<WorkflowDetail> {
    const admin = adminFields(options);
    const events: PendingEvent[] = [];
    await this.transactOrNotFound(id, (tx) => {
      const step = tx.steps.find((s) => s.name === stepName);
      if (!step) throw new NotFoundError(`step ${JSON.stringify(stepName)} not found in workflow ${id}`, { workflowId: id, stepName });
      const wf = tx.workflow;
      if (wf.status !== 'failed' && wf.status !== 'running') {
        throw new ConflictError(`cannot retry step ${stepName} of workflow ${id}: the workflow is ${wf.status} (allowed from failed, or running)`, {
          workflowId: id,
          stepName,
          status: wf.status,
        });
      }
      if (step.status !== 'failed') {
        throw new ConflictError(`cannot retry step ${stepName} of workflow ${id}: the step is ${step.status} (only a failed step can be retried)`, {
          workflowId: id,
          stepName,
          status: step.status,
        });
      }
      const w = this.writer(tx, events);
      w.admin('retry_step', admin, stepName);
      w.setStep(stepName, 'pending', {
        retryCount: step.retryCount + 1,
        attempts: 0,
        error: null,
        dueAt: tx.now,
        completedAt: null,
        ...clearLease(),
      });
      w.bumpWorkflowRetries(1);
      if (wf.status === 'failed') w.setWorkflowStatus('running', { error: null, currentStep: stepName });
    });
    this.flush(events);
    this.wake();
    return this.get(id);
  }

  /**
   * Rolls a workflow back: stops scheduling, aborts running handlers, skips
   * every unfinished step, then compensates completed steps one by one in
   * reverse completion order. A compensation that exhausts its retries leaves
   * the workflow `rollback_failed`; calling `rollback` again resumes there.
   * Allowed from `pending, running, failed, completed, rollback_failed`.
   */
  async rollback(id: string, options: AdminActionOptions = {}): Promise<WorkflowDetail> {
    const admin = adminFields(options);
    const events: PendingEvent[] = [];
    const skipped = await this.transactOrNotFound(id, (tx) => {
      const wf = tx.workflow;
      if (!(['pending', 'running', 'failed', 'completed', 'rollback_failed'] as WorkflowStatus[]).includes(wf.status)) {
        throw new ConflictError(`cannot roll back workflow ${id}: it is ${wf.status} (allowed from pending, running, failed, completed, rollback_failed)`, {
          workflowId: id,
          status: wf.status,
        });
      }
      const w = this.writer(tx, events);
      w.admin('rollback', admin);
      return this.beginRollback(w, admin);
    });
    this.abortLocal(id, skipped, 'admin');
    this.flush(events);
    this.wake();
    return this.get(id);
  }

  /**
   * Completes or fails a step waiting for a callback. A callback that arrives
   * while the handler is still running is kept and applied when it returns.
   * An unknown, used or expired token is refused with the same `not_found`
   * error, whichever it was.
   */
  async completeCallback(token: string, result: CallbackResult): Promise<void> {
    const refused = () => new NotFoundError('callback token is unknown, used or expired');
    if (typeof token !== 'string' || token.length < 16 || token.length > 200) throw refused();
    const parsed = callbackSchema.safeParse(result);
    if (!parsed.success) throw zodToValidation('invalid callback result', parsed.error.issues, []);
    let payload: CallbackResult;
    try {
      payload = toJson(stripUndefined(parsed.data)) as CallbackResult;
    } catch {
      throw new ValidationError('callback result must be JSON-serializable', [{ path: [], message: 'not JSON-serializable', code: 'invalid_type' }]);
    }
    // The token names its workflow and step; only the hash of its secret is stored, on that step.
    const target = parseCallbackToken(token);
    if (!target) throw refused();
    const hash = await hashToken(target.secret);
    // Checked first by a read, which takes no lock: a guessed token goes no further.
    const stored = await this.store.getSteps(target.workflowId);
    if (!stored.some((s) => s.position === target.position && s.callbackTokenHash === hash)) throw refused();
    let applied = false;
    let events: PendingEvent[] = [];
    try {
      ({ value: applied, events } = await this.transactWithEvents(target.workflowId, (tx, events) => {
        const step = tx.steps.find((s) => s.position === target.position);
        if (!step || step.callbackTokenHash !== hash) return false;
        if (!(['pending', 'running', 'failed'] as WorkflowStatus[]).includes(tx.workflow.status)) return false;
        const def = this.definitionOf(tx.workflow);
        const resolved = def?.steps.find((s) => s.name === step.name);
        if (!resolved) return false;
        const w = this.writer(tx, events);
        if (step.status === 'running') {
          // The handler has not returned yet: keep the result; applying it is the handler's write.
          w.patchStep(step.name, { callbackResult: payload, callbackTokenHash: null });
          w.note('callback_received', step.name, { early: true });
          return true;
        }
        if (step.status !== 'waiting_callback') return false;
        if (step.dueAt && step.dueAt.getTime() <= tx.now.getTime()) return false;
        w.patchStep(step.name, { callbackTokenHash: null });
        w.note('callback_received', step.name, { early: false });
        this.applyCallback(w, step, resolved, payload);
        return true;
      }, true));
    } catch (err) {
      if (isSagalineError(err, 'not_found')) throw refused();
      throw err;
    }
    if (!applied) throw refused();
    this.flush(events);
    this.wake();
  }

  // ---------------------------------------------------------------- running work

  /**
   * One pass over due work: claims as many due steps as free slots allow and
   * runs them to their next stored state. Resolves to the number of steps claimed.
   */
  async tick(): Promise<number> {
    const free = this.concurrency - this.inFlight;
    if (free <= 0) return 0;
    const claimed = await this.claim(free);
    await Promise.all(claimed.map((c) => this.launch(c, false)));
    return claimed.length;
  }

  /** Ticks until nothing is due at the current time. Resolves to the number of steps processed. */
  async drain(): Promise<number> {
    let total = 0;
    for (;;) {
      const n = await this.tick();
      if (n === 0) return total;
      total += n;
    }
  }

  /** Starts the background loop. Idempotent. */
  startWorker(): void {
    if (this.workerLoop) return;
    this.stopping = false;
    if (this.store.subscribe && !this.unsubscribe) {
      const wakeups = {
        onError: (err: Error) => this.logger.warn('store wake-ups interrupted; polling until they resume', { error: describeError(err) }),
        onResume: () => this.logger.info('store wake-ups resumed'),
      };
      this.unsubscribe = this.store.subscribe(() => this.wakeFromStore(), wakeups).catch((err: unknown) => {
        this.logger.warn('could not subscribe to store wake-ups; polling only', { error: describeError(err) });
        return null;
      });
    }
    this.workerLoop = this.loop().catch((err: unknown) => {
      this.logger.error('worker loop crashed', { error: describeError(err) });
    });
  }

  /**
   * Stops the background loop, then waits for running handlers (up to
   * `shutdownTimeoutMs`) before aborting the rest. Aborted steps are picked
   * up again by any worker once their lease expires.
   */
  async stop(): Promise<void> {
    this.stopping = true;
    this.dueTimes.length = 0;
    this.armDueTimer();
    this.storeWakeTimer?.cancel();
    this.storeWakeTimer = null;
    this.wake();
    const loop = this.workerLoop;
    if (loop) await loop;
    this.workerLoop = null;
    const unsubscribe = this.unsubscribe ? await this.unsubscribe : null;
    this.unsubscribe = null;
    if (unsubscribe) {
      await unsubscribe().catch((err: unknown) => this.logger.warn('unsubscribing from store wake-ups failed', { error: describeError(err) }));
    }
    if (this.launches.size > 0) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const timedOut = new Promise<'timeout'>((resolve) => {
        timer = setTimeout(() => resolve('timeout'), this.shutdownTimeoutMs);
      });
      const outcome = await Promise.race([Promise.all([...this.launches]).then(() => 'done' as const), timedOut]);
      if (timer) clearTimeout(timer);
      if (outcome === 'timeout') {
        // Abandon what is still running: nothing is written for it, and its lease expires for another worker.
        for (const r of this.running.values()) r.attempt.abort(new AbortedError('shutdown'));
        await Promise.all([...this.launches]);
      }
    }
  }

  private async loop(): Promise<void> {
    let failures = 0;
    while (!this.stopping) {
      let claimed = 0;
      const free = this.concurrency - this.inFlight;
      if (free > 0) {
        try {
          this.lastClaimAt = this.clock.now();
          const batch = await this.claim(free);
          claimed = batch.length;
          this.saturated = claimed === free;
          for (const c of batch) void this.launch(c, true);
          failures = 0;
        } catch (err) {
          failures++;
          this.logger.error('claiming due steps failed', { error: describeError(err), failures });
        }
      } else {
        // Every slot is taken, and work may be waiting for one (this wake-up may be for it): the
        // next freed slot must wake the loop rather than leave that work to the next poll.
        this.saturated = true;
      }
      if (this.stopping) break;
      if (claimed > 0 && claimed === free) continue;
      const waitMs = failures > 0 ? Math.min(this.idlePollMs * 2 ** Math.min(failures, 5), 30_000) : this.idlePollMs;
      await this.sleep(waitMs);
    }
  }

  private sleep(ms: number): Promise<void> {
    if (this.wakePending) {
      this.wakePending = false;
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.wakeUp = null;
        resolve();
      }, ms);
      this.wakeUp = () => {
        clearTimeout(timer);
        this.wakeUp = null;
        resolve();
      };
    });
  }

  /** A wake-up from the store: at once when idle or the last claim is old enough, else once the interval is over. */
  private wakeFromStore(): void {
    const wait = this.lastClaimAt + STORE_WAKE_INTERVAL_MS - this.clock.now();
    if (wait <= 0 || this.inFlight === 0) return this.wake();
    if (this.storeWakeTimer || this.stopping) return;
    this.storeWakeTimer = this.clock.setTimeout(() => {
      this.storeWakeTimer = null;
      this.wake();
    }, wait);
  }

  private wake(): void {
    if (!this.workerLoop) return;
    if (this.wakeUp) this.wakeUp();
    else this.wakePending = true;
  }

  private async claim(limit: number): Promise<Claim[]> {
    const pairs = await this.takeTokenPairs(limit);
    const claimed = await this.store.claimSteps({
      workerId: this.workerId,
      leaseMs: this.leaseMs,
      limit,
      tokens: pairs.map((p) => ({ leaseToken: p.leaseToken, callbackTokenHash: p.callbackTokenHash })),
    });
    const byLease = new Map(pairs.map((p) => [p.leaseToken, p]));
    const result = claimed.map((c) => {
      const step = c.steps.find((s) => s.name === c.stepName);
      const pair = step?.leaseToken ? byLease.get(step.leaseToken) : undefined;
      if (!step || !pair) throw new Error(`store returned a claim without one of the request's lease tokens (${c.workflow.id}/${c.stepName})`);
      byLease.delete(pair.leaseToken);
      return { ...c, callbackSecret: pair.callbackSecret, leaseToken: pair.leaseToken };
    });
    // Tokens no step took were never stored anywhere: keep them for the next claim.
    for (const unused of byLease.values()) if (this.tokenPool.length < 256) this.tokenPool.push(unused);
    return result;
  }

  /**
   * `n` fresh token pairs, from the pool of unused ones first. Synchronous
   * where hashing is (Node): a chained step takes one per step.
   */
  private takeTokenPairs(n: number): TokenPair[] | Promise<TokenPair[]> {
    const pairs = this.tokenPool.length > 0 ? this.tokenPool.splice(0, n) : [];
    let pending: Promise<TokenPair>[] | null = null;
    for (let i = pairs.length; i < n; i++) {
      const pair = this.newTokenPair();
      if (pair instanceof Promise) (pending ??= []).push(pair);
      else pairs.push(pair);
    }
    return pending ? Promise.all(pending).then((more) => [...pairs, ...more]) : pairs;
  }

  /**
   * Runs a claimed step in one concurrency slot. With `chain`, a dependent the
   * step made due is claimed in the same transaction as its result and run in
   * the same slot, saving a claim round trip per step.
   */
  private launch(first: Claim, chain = false): Promise<void> {
    this.inFlight++;
    let holding = true;
    const release = () => {
      if (!holding) return;
      holding = false;
      this.inFlight--;
    };
    const launched = (async () => {
      let current: Claim | null = first;
      while (current) {
        const c: Claim = current;
        c.releaseSlot = release;
        current = await this.process(c, chain && !this.stopping).catch((err: unknown) => {
          this.logger.error('processing a claimed step failed; it will be retried when its lease expires', {
            workflowId: c.workflow.id,
            stepName: c.stepName,
            error: describeError(err),
          });
          return null;
        });
      }
    })().finally(() => {
      release();
      this.launches.delete(launched);
      // A freed slot only matters if the last claim left work behind; new work wakes the loop itself.
      if (this.saturated || this.stopping) this.wake();
    });
    this.launches.add(launched);
    return launched;
  }

  private async process(c: Claim, chain: boolean): Promise<Claim | null> {
    const step = c.steps.find((s) => s.name === c.stepName)!;
    const def = this.definitionOf(c.workflow);
    const resolved = def?.steps.find((s) => s.name === step.name);
    if (!def || !resolved) {
      return await this.failForDefinition(c, step);
    }
    if (step.status === 'running') {
      if (c.previousStatus === 'running' && step.attempts > resolved.retry.maximumAttempts) {
        return await this.writeFenced(c, chain, (w, current) => {
          this.failAttempt(w, current, resolved, { code: 'lease_expired', message: 'the step lost its lease on its last attempt' }, false);
        });
      }
      if (c.previousStatus === 'pending' || c.previousStatus === 'running') {
        this.emit({
          name: 'step:started',
          payload: { ...eventBase(c.workflow, c.now), stepName: step.name, attempt: step.attempts, reclaimed: c.previousStatus === 'running' },
        });
      }
      const outcome = await this.runHandler(c, resolved, (attempt) =>
        resolved.definition.run(withAttempt(attempt, {
          workflowId: c.workflow.id,
          tenantId: c.workflow.tenantId,
          stepName: step.name,
          attempt: step.attempts,
          retryCount: step.retryCount,
          input: c.workflow.input,
          deps: dependencyOutputs(c.steps, resolved),
          idempotencyKey: `${c.workflow.id}:${step.name}`,
          callbackToken: callbackToken(c.workflow.id, step.position, c.callbackSecret),
          waitForCallback: (options?: { timeoutMs?: number }): CallbackWait<any> => ({
            kind: 'sagaline.wait_for_callback',
            timeoutMs: options?.timeoutMs ?? null,
          }),
        })),
      );
      if (outcome.ok === false && outcome.aborted) return null;
      return await this.writeFenced(c, chain, (w, current) => this.finishRun(w, current, resolved, outcome));
    }
    if (step.status === 'waiting_callback') {
      return await this.writeFenced(c, chain, (w, current) => {
        if (current.status !== 'waiting_callback') return;
        this.failAttempt(w, current, resolved, { code: 'callback_timeout', message: 'no callback arrived before the timeout' }, true);
      });
    }
    if (step.status === 'waiting_poll') {
      if (step.pollDeadlineAt && c.now.getTime() >= step.pollDeadlineAt.getTime()) {
        return await this.writeFenced(c, chain, (w, current) => {
          this.failAttempt(w, current, resolved, { code: 'poll_timeout', message: `polling did not finish within ${resolved.pollTimeoutMs} ms` }, false);
        });
      }
      const poll = resolved.definition.poll;
      if (!poll) {
        return await this.failForDefinition(c, step);
      }
      const outcome = await this.runHandler(c, resolved, (attempt) =>
        poll(withAttempt(attempt, {
          workflowId: c.workflow.id,
          tenantId: c.workflow.tenantId,
          stepName: step.name,
          attempt: step.attempts,
          retryCount: step.retryCount,
          input: c.workflow.input,
          deps: dependencyOutputs(c.steps, resolved),
          idempotencyKey: `${c.workflow.id}:${step.name}`,
          runOutput: step.output,
          pollCount: step.pollCount,
        })),
      );
      if (outcome.ok === false && outcome.aborted) return null;
      return await this.writeFenced(c, chain, (w, current) => this.finishPoll(w, current, resolved, outcome));
    }
    if (step.status === 'compensating') {
      const compensate = resolved.definition.compensate;
      if (!compensate) {
        return await this.writeFenced(c, chain, (w, current) => {
          w.setStep(current.name, 'compensated', { dueAt: null, ...clearLease() });
          w.emit({ name: 'step:compensated', payload: { ...w.base(), stepName: current.name, attempt: current.attempts } });
          this.scheduleNextCompensation(w);
        });
      }
      const outcome = await this.runHandler(c, resolved, (attempt) =>
        compensate(withAttempt(attempt, {
          workflowId: c.workflow.id,
          tenantId: c.workflow.tenantId,
          stepName: step.name,
          attempt: step.attempts,
          input: c.workflow.input,
          output: step.output,
          idempotencyKey: `${c.workflow.id}:${step.name}:compensate`,
        })),
      );
      if (outcome.ok === false && outcome.aborted) return null;
      return await this.writeFenced(c, chain, (w, current) => this.finishCompensation(w, current, resolved, outcome));
    }
    return null;
  }

  /**
   * Runs a handler with a timeout, a heartbeat that extends the lease, and an
   * abort signal. `call` gets the attempt, whose `signal` and `logger` the
   * handler context reads (see {@link withAttempt}).
   */
  private async runHandler(
    c: ClaimedStep & { leaseToken: string },
    resolved: ResolvedStep,
    call: (attempt: Attempt) => unknown,
  ): Promise<Outcome> {
    const key = runKey(c.workflow.id, c.stepName);
    const attempt = new Attempt(this.logger, c.workflow.id, c.stepName);
    this.running.set(key, { attempt, leaseToken: c.leaseToken });
    const timers: ClockTimer[] = [];
    let heartbeat: ClockTimer | null = null;
    const beat = () => {
      heartbeat = this.clock.setTimeout(() => {
        this.store.extendLease(c.workflow.id, c.stepName, c.leaseToken, this.leaseMs).then(
          (kept) => {
            if (!kept) attempt.abort(new AbortedError('lease_lost'));
            else if (!attempt.aborted) beat();
          },
          (err: unknown) => {
            this.logger.warn('lease heartbeat failed', { workflowId: c.workflow.id, stepName: c.stepName, error: describeError(err) });
            if (!attempt.aborted) beat();
          },
        );
      }, Math.max(1, Math.floor(this.leaseMs / 3)));
    };
    beat();
    timers.push(this.clock.setTimeout(() => attempt.abort(new StepTimeoutError(`step timed out after ${resolved.timeoutMs} ms`)), resolved.timeoutMs));
    // Settled by whichever comes first: the handler's result or the attempt's abort.
    const outcome = new Promise<Outcome>((resolve) => {
      attempt.onAbort((reason) => {
        if (reason instanceof AbortedError) resolve({ ok: false, error: reason, aborted: reason.why });
        else resolve({ ok: false, error: reason });
      });
      let result: unknown;
      try {
        result = call(attempt);
      } catch (error) {
        resolve({ ok: false, error });
        return;
      }
      if (isThenable(result)) {
        Promise.resolve(result).then(
          (value: unknown) => resolve({ ok: true, value }),
          (error: unknown) => resolve({ ok: false, error }),
        );
      } else {
        resolve({ ok: true, value: result });
      }
    });
    try {
      return await outcome;
    } finally {
      for (const t of timers) t.cancel();
      (heartbeat as ClockTimer | null)?.cancel();
      // Tell anything the handler left running that the attempt is over.
      attempt.abort(ATTEMPT_OVER);
      if (this.running.get(key)?.attempt === attempt) this.running.delete(key);
    }
  }

  /**
   * Writes a claimed step's result under the workflow lock, only if the lease
   * is still ours. With `chain`, also claims one dependent made due by this
   * write, in the same transaction, and returns it.
   */
  private async writeFenced(c: Claim, chain: boolean, write: (w: TxWriter, step: StepRecord) => void): Promise<Claim | null> {
    let pair: TokenPair | null = null;
    if (chain) {
      const pairs = this.takeTokenPairs(1);
      pair = (Array.isArray(pairs) ? pairs : await pairs)[0] ?? null;
    }
    const { value: outcome, events } = await this.transactWithEvents(
      c.workflow.id,
      (tx, events) => {
        const current = tx.steps.find((s) => s.name === c.stepName);
        if (!current || current.leaseToken !== c.leaseToken) return { written: false as const, next: null, moreReady: false };
        const w = this.writer(tx, events, c.leaseToken);
        write(w, current);
        // Checked again here: stop() may have been called while the handler ran, and nothing new starts once it was.
        const next = pair && !this.stopping ? this.claimReadyStep(w, pair) : null;
        return { written: true as const, next, moreReady: w.readyNow.length > (next ? 1 : 0) };
      },
      true,
    );
    if (pair && (!outcome.written || !outcome.next) && this.tokenPool.length < 256) this.tokenPool.push(pair);
    if (!outcome.written) {
      this.logger.info('discarded a result whose lease was lost', { workflowId: c.workflow.id, stepName: c.stepName });
      return null;
    }
    // Nothing chained: this launch ends here, so its slot is free before the events (a handler of
    // `workflow:completed` that starts a workflow may then have its first step created claimed).
    if (!outcome.next) c.releaseSlot?.();
    this.flush(events);
    // Dependents this write made due beyond the one chained here are for the claim loop.
    if (outcome.moreReady) this.wake();
    return outcome.next;
  }

  /** Claims (inside the result's transaction) the first step that write made due, as a claim would. */
  private claimReadyStep(w: TxWriter, pair: TokenPair): Claim | null {
    if (w.workflow().status !== 'running') return null;
    const now = w.now.getTime();
    const ready = w.readyNow.map((name) => w.steps().find((s) => s.name === name)).find(
      (s): s is StepRecord => !!s && s.status === 'pending' && s.dueAt !== null && s.dueAt.getTime() <= now && !s.leaseToken,
    );
    if (!ready) return null;
    w.setStep(ready.name, 'running', {
      attempts: ready.attempts + 1,
      startedAt: w.now,
      leaseOwner: this.workerId,
      leaseToken: pair.leaseToken,
      leaseExpiresAt: w.after(this.leaseMs),
      callbackTokenHash: pair.callbackTokenHash,
      callbackResult: null,
    });
    w.setCurrentStep(ready.name);
    // The writer's rows are this run's own (a store that runs the callback again makes a new writer).
    return {
      workflow: w.workflow(),
      steps: w.steps(),
      stepName: ready.name,
      previousStatus: 'pending',
      now: w.now,
      leaseToken: pair.leaseToken,
      callbackSecret: pair.callbackSecret,
    };
  }

  /** A writer for `tx`, fenced by `fence` when given, whose deadlines carry the store's clock slack. */
  private writer(tx: WorkflowTransaction, events: PendingEvent[], fence?: string): TxWriter {
    return new TxWriter(tx, events, fence, this.clockSlack());
  }

  /** How far the store's clock may be ahead of the times it hands out (see `WorkflowStore.clockSlackMs`). */
  private clockSlack(): number {
    const slack = this.store.clockSlackMs?.() ?? 0;
    return Number.isFinite(slack) && slack > 0 ? slack : 0;
  }

  private newTokenPair(): TokenPair | Promise<TokenPair> {
    const leaseToken = randomToken(16);
    const callbackSecret = randomToken(CALLBACK_SECRET_BYTES);
    const hash = hashToken(callbackSecret);
    return typeof hash === 'string'
      ? { leaseToken, callbackSecret, callbackTokenHash: hash }
      : hash.then((callbackTokenHash) => ({ leaseToken, callbackSecret, callbackTokenHash }));
  }

  private finishRun(w: TxWriter, step: StepRecord, resolved: ResolvedStep, outcome: Outcome): void {
    if (step.status !== 'running') return;
    if (!outcome.ok) {
      this.failAttempt(w, step, resolved, toStoredError(outcome.error), isRetryableOutcome(resolved.retry, outcome.error, step.attempts));
      return;
    }
    const value = outcome.value;
    if (isCallbackWait(value)) {
      if (step.callbackResult !== null && step.callbackResult !== undefined) {
        this.applyCallback(w, step, resolved, step.callbackResult as CallbackResult);
        return;
      }
      const timeoutAt = value.timeoutMs !== null ? w.after(Math.max(0, value.timeoutMs)) : null;
      w.setStep(step.name, 'waiting_callback', { dueAt: timeoutAt, ...clearLease() });
      w.setCurrentStep(step.name);
      w.emit({ name: 'step:waiting_callback', payload: { ...w.base(), stepName: step.name, attempt: step.attempts, timeoutAt } });
      return;
    }
    let output: unknown;
    try {
      output = toJson(value);
    } catch {
      this.failAttempt(w, step, resolved, { code: 'invalid_output', message: 'the step returned a value that is not JSON-serializable' }, false);
      return;
    }
    if (resolved.definition.poll) {
      const nextPollAt = w.after(resolved.pollIntervalMs);
      w.setStep(step.name, 'waiting_poll', {
        output,
        dueAt: nextPollAt,
        pollCount: 0,
        pollDeadlineAt: w.after(resolved.pollTimeoutMs),
        callbackTokenHash: null,
        ...clearLease(),
      });
      w.setCurrentStep(step.name);
      w.emit({ name: 'step:waiting_poll', payload: { ...w.base(), stepName: step.name, attempt: step.attempts, nextPollAt } });
      return;
    }
    this.completeStep(w, step, output);
  }

  private finishPoll(w: TxWriter, step: StepRecord, resolved: ResolvedStep, outcome: Outcome): void {
    if (step.status !== 'waiting_poll') return;
    if (!outcome.ok) {
      const error = toStoredError(outcome.error);
      if (isRetryableOutcome(resolved.retry, outcome.error, step.attempts)) {
        const delayMs = retryDelay(resolved.retry, step.attempts, this.random);
        const nextAttemptAt = this.capToDeadline(step, w.after(delayMs));
        w.patchStep(step.name, { attempts: step.attempts + 1, retryCount: step.retryCount + 1, error, dueAt: nextAttemptAt, ...clearLease() });
        w.bumpWorkflowRetries(1);
        w.emit({ name: 'step:retry_scheduled', payload: { ...w.base(), stepName: step.name, attempt: step.attempts, error, nextAttemptAt, delayMs } });
      } else {
        this.failAttempt(w, step, resolved, error, false);
      }
      return;
    }
    const result = outcome.value as { done?: unknown; output?: unknown } | null;
    if (!result || typeof result !== 'object' || typeof result.done !== 'boolean') {
      this.failAttempt(w, step, resolved, { code: 'invalid_poll_result', message: 'poll must return { done: true, output } or { done: false }' }, false);
      return;
    }
    if (result.done) {
      let output: unknown;
      try {
        output = toJson(result.output);
      } catch {
        this.failAttempt(w, step, resolved, { code: 'invalid_output', message: 'the poll returned an output that is not JSON-serializable' }, false);
        return;
      }
      this.completeStep(w, step, output);
      return;
    }
    const nextPollAt = this.capToDeadline(step, w.after(resolved.pollIntervalMs));
    w.patchStep(step.name, { pollCount: step.pollCount + 1, dueAt: nextPollAt, ...clearLease() });
  }

  private capToDeadline(step: StepRecord, at: Date): Date {
    return step.pollDeadlineAt && step.pollDeadlineAt.getTime() < at.getTime() ? step.pollDeadlineAt : at;
  }

  private finishCompensation(w: TxWriter, step: StepRecord, resolved: ResolvedStep, outcome: Outcome): void {
    if (step.status !== 'compensating') return;
    if (outcome.ok) {
      w.setStep(step.name, 'compensated', { dueAt: null, error: null, ...clearLease() });
      w.emit({ name: 'step:compensated', payload: { ...w.base(), stepName: step.name, attempt: step.attempts } });
      this.scheduleNextCompensation(w);
      return;
    }
    const error = toStoredError(outcome.error);
    if (isRetryableOutcome(resolved.compensationRetry, outcome.error, step.attempts)) {
      const delayMs = retryDelay(resolved.compensationRetry, step.attempts, this.random);
      const nextAttemptAt = w.after(delayMs);
      w.patchStep(step.name, { retryCount: step.retryCount + 1, error, dueAt: nextAttemptAt, ...clearLease() });
      w.bumpWorkflowRetries(1);
      w.emit({ name: 'step:retry_scheduled', payload: { ...w.base(), stepName: step.name, attempt: step.attempts, error, nextAttemptAt, delayMs } });
      return;
    }
    w.setStep(step.name, 'compensation_failed', { dueAt: null, error, ...clearLease() });
    w.emit({ name: 'step:compensation_failed', payload: { ...w.base(), stepName: step.name, attempt: step.attempts, error } });
    const wfError: StoredError = { ...error, step: step.name };
    w.setWorkflowStatus('rollback_failed', { error: wfError, currentStep: step.name });
    w.emit({ name: 'workflow:rollback_failed', payload: { ...w.base(), stepName: step.name, error: wfError } });
  }

  private applyCallback(w: TxWriter, step: StepRecord, resolved: ResolvedStep, payload: CallbackResult): void {
    if (payload.status === 'success') {
      const output =
        payload.output !== undefined
          ? payload.output
          : stripUndefined({ endpoint: payload.endpoint, credentials: payload.credentials, metadata: payload.metadata });
      this.completeStep(w, step, output ?? null);
      return;
    }
    const detail = payload.error;
    const message =
      typeof detail === 'string'
        ? detail
        : detail && typeof detail === 'object' && typeof (detail as { message?: unknown }).message === 'string'
          ? (detail as { message: string }).message
          : 'the callback reported a failure';
    this.failAttempt(w, step, resolved, { code: 'callback_failed', message: truncate(message), ...(detail !== undefined ? { detail } : {}) }, true);
  }

  private completeStep(w: TxWriter, step: StepRecord, output: unknown): void {
    let seq = 1;
    for (const s of w.steps()) if (s.completionSeq !== null && s.completionSeq >= seq) seq = s.completionSeq + 1;
    w.setStep(step.name, 'completed', {
      output,
      error: null,
      completedAt: w.now,
      dueAt: null,
      completionSeq: seq,
      callbackTokenHash: null,
      callbackResult: null,
      ...clearLease(),
    });
    w.emit({ name: 'step:completed', payload: { ...w.base(), stepName: step.name, attempt: step.attempts, output } });
    // Dependents whose dependencies are now all complete become due.
    const steps = w.steps();
    // The step itself was just completed; the others are looked up (built on first need: a chain needs none).
    let byName: Map<string, StepRecord> | null = null;
    const completed = (name: string) => name === step.name || (byName ??= new Map(steps.map((o) => [o.name, o]))).get(name)?.status === 'completed';
    let next: string | null = null;
    for (const s of steps) {
      if (s.status !== 'pending' || s.dueAt !== null || !s.dependsOn.includes(step.name)) continue;
      if (s.dependsOn.every(completed)) {
        w.patchStep(s.name, { dueAt: w.now });
        w.readyNow.push(s.name);
        next ??= s.name;
      }
    }
    const wf = w.workflow();
    const allDone = steps.every((s) => s.status === 'completed' || s.status === 'skipped');
    const blocked = steps.find((s) => s.status === 'failed');
    if (allDone && (wf.status === 'running' || wf.status === 'pending')) {
      w.setWorkflowStatus('completed', { completedAt: w.now, output: collectOutputs(steps), currentStep: null });
      w.emit({ name: 'workflow:completed', payload: w.base() });
    } else if (wf.status === 'running' && blocked && !steps.some(canStillMove)) {
      // An operator retried one of several failed steps and that branch is done: another step is
      // still failed and nothing else can run, so the workflow is failed again, not running forever.
      const wfError: StoredError = { ...(blocked.error ?? { code: 'step_failed', message: `step ${blocked.name} failed` }), step: blocked.name };
      w.setWorkflowStatus('failed', { error: wfError, currentStep: blocked.name });
      w.emit({ name: 'workflow:failed', payload: { ...w.base(), error: wfError } });
    } else if (next) {
      w.setCurrentStep(next);
    }
  }

  private failAttempt(w: TxWriter, step: StepRecord, resolved: ResolvedStep, error: StoredError, retryable: boolean): void {
    if (retryable && step.attempts < resolved.retry.maximumAttempts) {
      const delayMs = retryDelay(resolved.retry, step.attempts, this.random);
      const nextAttemptAt = w.after(delayMs);
      w.setStep(step.name, 'pending', {
        error,
        dueAt: nextAttemptAt,
        retryCount: step.retryCount + 1,
        callbackTokenHash: null,
        callbackResult: null,
        ...clearLease(),
      });
      w.bumpWorkflowRetries(1);
      w.emit({ name: 'step:retry_scheduled', payload: { ...w.base(), stepName: step.name, attempt: step.attempts, error, nextAttemptAt, delayMs } });
      return;
    }
    w.setStep(step.name, 'failed', { error, dueAt: null, callbackTokenHash: null, callbackResult: null, ...clearLease() });
    w.emit({ name: 'step:failed', payload: { ...w.base(), stepName: step.name, attempt: step.attempts, error } });
    const wf = w.workflow();
    if (wf.status !== 'running' && wf.status !== 'pending') return;
    const def = this.definitionOf(wf);
    const wfError: StoredError = { ...error, step: step.name };
    if (def?.onFailure === 'rollback') {
      const admin = { actor: 'sagaline', reason: `step ${step.name} failed: ${error.code}` };
      w.admin('rollback', admin);
      w.patchWorkflow({ error: wfError });
      const skipped = this.beginRollback(w, admin);
      w.afterCommit(() => this.abortLocal(wf.id, skipped, 'admin'));
      return;
    }
    w.setWorkflowStatus('failed', { error: wfError, currentStep: step.name });
    w.emit({ name: 'workflow:failed', payload: { ...w.base(), error: wfError } });
  }

  /** Moves the workflow to `rolling_back`, skips unfinished steps, and schedules the first compensation. */
  private beginRollback(w: TxWriter, admin: { actor: string | null; reason: string | null }): string[] {
    w.setWorkflowStatus('rolling_back', {});
    w.emit({ name: 'workflow:rolling_back', payload: { ...w.base(), ...admin } });
    const skipped = w.skipActiveSteps('rollback');
    this.scheduleNextCompensation(w);
    return skipped;
  }

  /** The next compensation is the latest-completed step still to undo; none left means rolled back. */
  private scheduleNextCompensation(w: TxWriter): void {
    const def = this.definitionOf(w.workflow());
    const candidates = w
      .steps()
      .filter((s) => {
        if (s.status === 'compensation_failed') return true;
        if (s.status !== 'completed') return false;
        return def?.steps.find((d) => d.name === s.name)?.definition.compensate !== undefined;
      })
      .sort((a, b) => (b.completionSeq ?? 0) - (a.completionSeq ?? 0));
    const next = candidates[0];
    if (next) {
      w.setStep(next.name, 'compensating', { attempts: 0, dueAt: w.now, error: null, ...clearLease() });
      w.setCurrentStep(next.name);
      return;
    }
    w.setWorkflowStatus('rolled_back', { completedAt: w.now, currentStep: null });
    w.emit({ name: 'workflow:rolled_back', payload: w.base() });
  }

  private async failForDefinition(c: Claim, step: StepRecord): Promise<Claim | null> {
    const error: StoredError = {
      code: 'definition_mismatch',
      message: `workflow ${c.workflow.type} version ${c.workflow.definitionVersion} (step ${step.name}) is not registered with this engine`,
    };
    this.logger.error('cannot resume workflow under a different definition', { workflowId: c.workflow.id, stepName: step.name, version: c.workflow.definitionVersion });
    return this.writeFenced(c, false, (w, current) => {
      const wfError = { ...error, step: current.name };
      if (current.status === 'compensating') {
        w.setStep(current.name, 'compensation_failed', { error, dueAt: null, ...clearLease() });
        w.setWorkflowStatus('rollback_failed', { error: wfError });
        return;
      }
      w.setStep(current.name, 'failed', { error, dueAt: null, ...clearLease() });
      const wf = w.workflow();
      if (wf.status === 'running' || wf.status === 'pending') w.setWorkflowStatus('failed', { error: wfError, currentStep: current.name });
    });
  }

  private definitionOf(wf: WorkflowRecord): WorkflowDefinition<any, any> | undefined {
    return this.definitions.get(wf.type)?.get(wf.definitionVersion);
  }

  private abortLocal(workflowId: string, stepNames: string[], why: 'admin'): void {
    for (const name of stepNames) this.running.get(runKey(workflowId, name))?.attempt.abort(new AbortedError(why));
  }

  /**
   * A transaction whose callback collects events; each run of the callback
   * gets a fresh list (an optimistic store may run it more than once), and
   * the list of the run whose writes applied is returned with its value.
   */
  private async transactWithEvents<T>(
    workflowId: string,
    fn: (tx: WorkflowTransaction, events: PendingEvent[]) => T,
    optimistic: boolean,
  ): Promise<{ value: T; events: PendingEvent[] }> {
    let events: PendingEvent[] = [];
    const value = await this.store.transact(
      workflowId,
      (tx) => {
        events = [];
        return fn(tx, events);
      },
      { optimistic },
    );
    return { value, events };
  }

  private async transactOrNotFound<T>(id: string, fn: (tx: WorkflowTransaction) => T): Promise<T> {
    if (typeof id !== 'string' || id.length === 0 || id.length > 200) throw new NotFoundError(`workflow ${JSON.stringify(id)} not found`);
    return this.store.transact(id, fn);
  }

  private emit(event: PendingEvent): void {
    safeEmit(this.events, this.logger, event.name, event.payload as never);
  }

  private flush(events: PendingEvent[]): void {
    for (const e of events) {
      if (e.name === ('__after_commit' as never)) (e.payload as unknown as () => void)();
      else if (e.name === ('__scheduled' as never)) {
        const { at, due } = e.payload as unknown as ScheduledStep;
        this.wakeWhenDue(at, due);
      } else this.emit(e);
    }
  }

  /**
   * Wakes the worker loop once a step this engine scheduled is due (`due`,
   * written at store time `at`), rather than at its next poll: the delay is
   * measured on the engine's clock from now, which is no earlier than `at`.
   */
  private wakeWhenDue(at: Date, due: Date): void {
    if (!this.workerLoop || this.stopping) return;
    const when = this.clock.now() + Math.max(0, due.getTime() - at.getTime());
    let i = this.dueTimes.length;
    while (i > 0 && this.dueTimes[i - 1]! > when) i--;
    // Already kept, or beyond the MAX_DUE_TIMES kept: left to the poll.
    if (this.dueTimes[i - 1] === when || i >= MAX_DUE_TIMES) return;
    this.dueTimes.splice(i, 0, when);
    if (this.dueTimes.length > MAX_DUE_TIMES) this.dueTimes.pop();
    if (i === 0) this.armDueTimer();
  }

  /** (Re)arms the timer for the first of {@link dueTimes}; when it fires, the loop wakes and the next one is armed. */
  private armDueTimer(): void {
    this.dueTimer?.cancel();
    const first = this.dueTimes[0];
    this.dueTimer =
      first === undefined
        ? null
        : this.clock.setTimeout(() => {
            this.dueTimes.shift();
            this.wake();
            this.armDueTimer();
          }, first - this.clock.now());
  }
}

/** `ms` after `from` by a clock that may be up to `slackMs` ahead of it: late by the slack, never early by that clock. */
function deadline(from: Date, ms: number, slackMs: number): Date {
  return new Date(from.getTime() + ms + slackMs);
}

/**
 * Buffers a transaction's writes, keeps an up-to-date view of the rows so
 * later decisions in the same transaction see earlier ones, validates every
 * status change against the transition tables and records it in history.
 */
class TxWriter {
  private readonly wf: WorkflowRecord;
  private readonly rows: StepRecord[];
  /** Steps this transaction made due (dependents of a completed step), in definition order. */
  readonly readyNow: string[] = [];

  /** The transaction's time, read once: every write and event of the transaction carries it. */
  readonly now: Date;

  constructor(
    private readonly tx: WorkflowTransaction,
    private readonly events: PendingEvent[],
    private readonly fence?: string,
    /** How far the store's clock may be ahead of `now` (see `WorkflowStore.clockSlackMs`). */
    private readonly slackMs = 0,
  ) {
    // The transaction's own copies (see WorkflowTransaction): each write is applied to them after
    // the store has been told, so the store sees them as they were before that write.
    this.wf = tx.workflow;
    this.rows = tx.steps as StepRecord[];
    this.now = tx.now;
  }

  workflow(): WorkflowRecord {
    return this.wf;
  }

  /** `ms` after the transaction's time, by the store's clock: the time plus the store's slack, so not early by that clock. */
  after(ms: number): Date {
    return deadline(this.now, ms, this.slackMs);
  }

  steps(): StepRecord[] {
    return this.rows;
  }

  base() {
    return { workflowId: this.wf.id, tenantId: this.wf.tenantId, type: this.wf.type, at: this.now };
  }

  emit(event: PendingEvent): void {
    this.events.push(event);
  }

  afterCommit(fn: () => void): void {
    this.events.push({ name: '__after_commit', payload: fn } as unknown as PendingEvent);
  }

  /** The earliest later time this transaction made a step due at, for the engine to wake at once committed. */
  private scheduled: ScheduledStep | null = null;

  setStep(name: string, to: StepStatus, patch: StepPatch): void {
    const row = this.row(name);
    assertStepTransition(row.status, to, { workflowId: this.wf.id, stepName: name });
    this.tx.appendHistory([{ kind: 'step', stepName: name, from: row.status, to, actor: null, reason: null, action: null, detail: null, at: this.now }]);
    // Every caller passes a patch of its own making.
    patch.status = to;
    this.patchStep(name, patch);
  }

  patchStep(name: string, patch: StepPatch): void {
    if (patch.dueAt && patch.dueAt.getTime() > this.now.getTime()) this.schedule(patch.dueAt);
    const row = this.row(name);
    const fenced = this.fence !== undefined && row.leaseToken === this.fence;
    this.tx.updateStep(name, patch, fenced ? { expectLeaseToken: this.fence ?? null } : undefined);
    Object.assign(row, patch);
  }

  private schedule(due: Date): void {
    if (!this.scheduled) {
      this.scheduled = { at: this.now, due };
      this.events.push({ name: '__scheduled', payload: this.scheduled } as unknown as PendingEvent);
    } else if (due.getTime() < this.scheduled.due.getTime()) this.scheduled.due = due;
  }

  setWorkflowStatus(to: WorkflowStatus, patch: Omit<Parameters<WorkflowTransaction['updateWorkflow']>[0], 'status'>): void {
    assertWorkflowTransition(this.wf.status, to, { workflowId: this.wf.id });
    this.tx.appendHistory([{ kind: 'workflow', stepName: null, from: this.wf.status, to, actor: null, reason: null, action: null, detail: null, at: this.now }]);
    this.patchWorkflow({ ...patch, status: to });
  }

  patchWorkflow(patch: Parameters<WorkflowTransaction['updateWorkflow']>[0]): void {
    this.tx.updateWorkflow(patch);
    Object.assign(this.wf, patch);
  }

  setCurrentStep(name: string | null): void {
    if (this.wf.currentStep !== name) this.patchWorkflow({ currentStep: name });
  }

  bumpWorkflowRetries(n: number): void {
    this.patchWorkflow({ retryCount: this.wf.retryCount + n });
  }

  admin(action: string, who: { actor: string | null; reason: string | null }, stepName: string | null = null): void {
    this.tx.appendHistory([{ kind: 'admin', stepName, from: this.wf.status, to: null, actor: who.actor, reason: who.reason, action, detail: null, at: this.now }]);
  }

  note(action: string, stepName: string | null, detail: unknown): void {
    this.tx.appendHistory([{ kind: 'note', stepName, from: null, to: null, actor: null, reason: null, action, detail, at: this.now }]);
  }

  /** Every pending, running or waiting step becomes skipped. Returns their names. */
  skipActiveSteps(reason: 'force_complete' | 'rollback'): string[] {
    const names: string[] = [];
    for (const s of this.rows) {
      if (!NON_TERMINAL_STEP_STATUSES.includes(s.status)) continue;
      names.push(s.name);
      const attempt = s.attempts;
      this.setStep(s.name, 'skipped', { dueAt: null, callbackTokenHash: null, callbackResult: null, ...clearLease() });
      this.emit({ name: 'step:skipped', payload: { ...this.base(), stepName: s.name, attempt, reason } });
    }
    return names;
  }

  private row(name: string): StepRecord {
    const row = this.rows.find((s) => s.name === name);
    if (!row) throw new NotFoundError(`step ${name} not found`, { workflowId: this.wf.id, stepName: name });
    return row;
  }
}

/**
 * Creates a {@link WorkflowEngine}.
 *
 * @example
 * ```ts
 * const engine = createEngine({ store: new MemoryWorkflowStore(), workflows: [provisionService] });
 * engine.startWorker();
 * const wf = await engine.start('provision_service', { tenantId: 't_1', input: { plan: 'pro' } });
 * ```
 */
export function createEngine(options: EngineOptions): WorkflowEngine {
  return new WorkflowEngine(options);
}

// ---------------------------------------------------------------- helpers


/** A step that can still move its workflow without an operator: due, running or waiting. */
function canStillMove(s: StepRecord): boolean {
  return s.status === 'running' || s.status === 'waiting_callback' || s.status === 'waiting_poll' || (s.status === 'pending' && s.dueAt !== null);
}

function isThenable(value: unknown): value is PromiseLike<unknown> {
  return (typeof value === 'object' || typeof value === 'function') && value !== null && typeof (value as { then?: unknown }).then === 'function';
}

function runKey(workflowId: string, stepName: string): string {
  return `${workflowId}\u0000${stepName}`;
}

function clearLease(): Pick<StepPatch, 'leaseOwner' | 'leaseToken' | 'leaseExpiresAt'> {
  return { leaseOwner: null, leaseToken: null, leaseExpiresAt: null };
}

function intOption(value: unknown, fallback: number, name: string, min: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min) {
    throw new InvalidDefinitionError(`createEngine: "${name}" must be an integer >= ${min}, got ${JSON.stringify(value)}`);
  }
  return value;
}

function adminFields(options: AdminActionOptions): { actor: string | null; reason: string | null } {
  const issues: ValidationIssue[] = [];
  if (options.actor !== undefined && (typeof options.actor !== 'string' || options.actor.length > 200)) {
    issues.push({ path: ['actor'], message: 'must be a string of at most 200 characters', code: 'invalid_type' });
  }
  if (options.reason !== undefined && (typeof options.reason !== 'string' || options.reason.length > 2000)) {
    issues.push({ path: ['reason'], message: 'must be a string of at most 2000 characters', code: 'invalid_type' });
  }
  if (issues.length > 0) throw new ValidationError('invalid admin options', issues);
  return { actor: options.actor ?? null, reason: options.reason ?? null };
}

function isRetryableOutcome(policy: ResolvedRetryPolicy, error: unknown, attempt: number): boolean {
  return shouldRetry(policy, error, attempt);
}

function dependencyOutputs(steps: readonly StepRecord[], resolved: ResolvedStep): Record<string, unknown> {
  const deps: Record<string, unknown> = {};
  for (const name of resolved.dependsOn) deps[name] = steps.find((s) => s.name === name)?.output ?? null;
  return deps;
}

function collectOutputs(steps: readonly StepRecord[]): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const s of steps) if (s.status === 'completed') out[s.name] = s.output ?? null;
  return out;
}

function toJson(value: unknown): unknown {
  if (value === undefined) return null;
  const text = JSON.stringify(value);
  return text === undefined ? null : (JSON.parse(text) as unknown);
}

function stripUndefined<T extends Record<string, unknown>>(value: T): Partial<T> {
  const out: Partial<T> = {};
  for (const [k, v] of Object.entries(value)) if (v !== undefined) (out as Record<string, unknown>)[k] = v;
  return out;
}

function truncate(message: string, max = 2000): string {
  return message.length > max ? `${message.slice(0, max)}…` : message;
}

function toStoredError(error: unknown): StoredError {
  if (error instanceof Error) {
    const code = (error as { code?: unknown }).code;
    return {
      code: typeof code === 'string' && code.length <= 100 ? code : error.name === 'Error' ? 'step_failed' : error.name,
      message: truncate(error.message || error.name),
    };
  }
  return { code: 'step_failed', message: truncate(typeof error === 'string' ? error : safeString(error)) };
}

function safeString(value: unknown): string {
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return String(value);
  }
}

function describeError(err: unknown): string {
  return err instanceof Error ? `${err.name}: ${err.message}` : String(err);
}

function zodToValidation(message: string, issues: readonly z.core.$ZodIssue[], prefix: (string | number)[]): ValidationError {
  return new ValidationError(
    message,
    issues.map((i) => ({ path: [...prefix, ...i.path.map((p) => (typeof p === 'symbol' ? String(p) : p))], message: i.message, code: i.code })),
  );
}

function encodeCursor(wf: WorkflowRecord): string {
  return toBase64Url(new TextEncoder().encode(JSON.stringify([wf.createdAt.getTime(), wf.id])));
}

function decodeCursor(cursor: string): { createdAt: Date; id: string } | null {
  if (typeof cursor !== 'string' || cursor.length > 400 || !/^[A-Za-z0-9_-]+$/.test(cursor)) return null;
  try {
    const bytes = fromBase64Url(cursor);
    if (!bytes) return null;
    const parsed: unknown = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
    if (!Array.isArray(parsed) || parsed.length !== 2) return null;
    const [t, id] = parsed as [unknown, unknown];
    if (typeof t !== 'number' || !Number.isFinite(t) || typeof id !== 'string' || id.length === 0 || id.length > 200) return null;
    return { createdAt: new Date(t), id };
  } catch {
    return null;
  }
}

function eventBase(wf: WorkflowRecord, at: Date) {
  return { workflowId: wf.id, tenantId: wf.tenantId, type: wf.type, at };
}

function toSummary(wf: WorkflowRecord): WorkflowSummary {
  return {
    id: wf.id,
    tenantId: wf.tenantId,
    type: wf.type,
    serviceSlug: wf.serviceSlug,
    status: wf.status,
    definitionVersion: wf.definitionVersion,
    currentStep: wf.currentStep,
    retryCount: wf.retryCount,
    error: wf.error,
    createdAt: wf.createdAt,
    updatedAt: wf.updatedAt,
    completedAt: wf.completedAt,
  };
}

function toStepDetail(s: StepRecord): StepDetail {
  return {
    name: s.name,
    status: s.status,
    dependsOn: [...s.dependsOn],
    retryCount: s.retryCount,
    maxRetries: Math.max(0, s.maxAttempts - 1),
    attempts: s.attempts,
    startedAt: s.startedAt,
    completedAt: s.completedAt,
    nextAttemptAt: s.status === 'pending' || s.status === 'compensating' ? s.dueAt : null,
    nextPollAt: s.status === 'waiting_poll' ? s.dueAt : null,
    pollCount: s.pollCount,
    output: s.output ?? null,
    error: s.error,
  };
}

function toDetail(wf: WorkflowRecord, steps: StepRecord[], history: HistoryRecord[]): WorkflowDetail {
  return {
    ...toSummary(wf),
    input: wf.input,
    output: wf.output ?? null,
    steps: [...steps].sort((a, b) => a.position - b.position).map(toStepDetail),
    history: history.map((h) => ({
      at: h.at,
      kind: h.kind,
      stepName: h.stepName,
      from: h.from,
      to: h.to,
      actor: h.actor,
      reason: h.reason,
      action: h.action,
      detail: h.detail,
    })),
  };
}
