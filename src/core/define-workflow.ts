import { z } from 'zod';
import { InvalidDefinitionError } from '../errors.js';
import { resolveRetryPolicy, type ResolvedRetryPolicy, type RetryPolicy } from './retry-policy.js';
import type { Logger } from './logger.js';

type Awaitable<T> = T | Promise<T>;

/** Marker returned by `ctx.waitForCallback()`: the step waits for an external callback. */
export interface CallbackWait<T = unknown> {
  readonly kind: 'sagaline.wait_for_callback';
  /** How long to wait before the step fails with `callback_timeout`; `null` waits forever. */
  readonly timeoutMs: number | null;
  /** Type-only: the output the callback is expected to deliver. */
  readonly __output?: T;
}

/** What a `poll` handler returns: done with the step's output, or poll again later. */
export type PollResult<T = unknown> = { done: true; output: T } | { done: false };

/** Context given to a step's `run`. */
export interface StepContext<TInput = unknown, TDeps = Record<string, unknown>> {
  readonly workflowId: string;
  readonly tenantId: string;
  readonly stepName: string;
  /** 1 for the first attempt. */
  readonly attempt: number;
  readonly retryCount: number;
  /** The workflow's validated input. */
  readonly input: TInput;
  /** Outputs of the steps this one depends on, by step name. */
  readonly deps: TDeps;
  /** `<workflowId>:<stepName>`, stable across attempts: pass it to the systems you call. */
  readonly idempotencyKey: string;
  /** Aborted on timeout, lease loss, force-complete, rollback or engine stop. */
  readonly signal: AbortSignal;
  readonly logger: Logger;
  /** The callback token of this attempt (single use; only its SHA-256 is stored). */
  readonly callbackToken: string;
  /**
   * Return this to wait for `engine.completeCallback(token, result)`.
   *
   * @example
   * ```ts
   * run: async (ctx) => {
   *   await vendor.createAccount({ callbackToken: ctx.callbackToken });
   *   return ctx.waitForCallback<{ accountId: string }>({ timeoutMs: 3_600_000 });
   * }
   * ```
   */
  waitForCallback<T = unknown>(options?: { timeoutMs?: number }): CallbackWait<T>;
}

/** Context given to a step's `poll`. */
export interface PollContext<TInput = unknown, TDeps = Record<string, unknown>, TRun = unknown>
  extends Omit<StepContext<TInput, TDeps>, 'waitForCallback' | 'callbackToken'> {
  /** What `run` returned. */
  readonly runOutput: TRun;
  /** Polls made so far (0 on the first poll). */
  readonly pollCount: number;
}

/** Context given to a step's `compensate`. */
export interface CompensateContext<TInput = unknown, TOutput = unknown> {
  readonly workflowId: string;
  readonly tenantId: string;
  readonly stepName: string;
  readonly attempt: number;
  readonly input: TInput;
  /** The output the step completed with. */
  readonly output: TOutput;
  /** `<workflowId>:<stepName>:compensate`, stable across attempts. */
  readonly idempotencyKey: string;
  readonly signal: AbortSignal;
  readonly logger: Logger;
}

/** The output a step ends with, given what `run` returns and whether it polls. */
export type StepOutputOf<TRun, TPoll> = [TPoll] extends [never]
  ? Awaited<TRun> extends CallbackWait<infer C>
    ? C
    : Awaited<TRun>
  : PollOutputOf<TPoll>;

/** The output carried by the `{ done: true }` branch of a poll handler's result type. */
export type PollOutputOf<TPoll> = TPoll extends { done: true; output: infer O } ? O : never;

/** Options of {@link step}. */
export interface StepOptions<TInput, TDeps, TRun, TPoll extends PollResult<unknown> = never> {
  /**
   * Steps that must complete before this one starts. Omitted: the step
   * declared just before this one (none for the first). `[]`: a root.
   */
  dependsOn?: readonly string[];
  run: (ctx: StepContext<TInput, TDeps>) => Awaitable<TRun>;
  /** Undoes the step during rollback. Without it the step stays `completed` on rollback. */
  compensate?: (ctx: CompensateContext<TInput, StepOutputOf<TRun, TPoll>>) => Awaitable<void>;
  /** Makes the step a poll loop: called every `pollIntervalMs` after `run` until it returns `{ done: true }`. */
  poll?: (ctx: PollContext<TInput, TDeps, Awaited<TRun>>) => Awaitable<TPoll>;
  /** @default 5000 */
  pollIntervalMs?: number;
  /** The poll loop fails with `poll_timeout` after this long. @default 3_600_000 (one hour) */
  pollTimeoutMs?: number;
  /** Retry policy for `run` and `poll` attempts. */
  retry?: RetryPolicy;
  /** Retry policy for `compensate`. @default the same fields as `retry` */
  compensationRetry?: RetryPolicy;
  /** A `run`, `poll` or `compensate` call taking longer is aborted and counts as a failed attempt. @default 300_000 */
  timeoutMs?: number;
}

/** A step as stored in a definition (handlers type-erased). */
export interface StepDefinition<TOutput = unknown> {
  readonly kind: 'sagaline.step';
  readonly dependsOn: readonly string[] | undefined;
  readonly run: (ctx: StepContext<any, any>) => Awaitable<unknown>;
  readonly compensate: ((ctx: CompensateContext<any, any>) => Awaitable<void>) | undefined;
  readonly poll: ((ctx: PollContext<any, any, any>) => Awaitable<PollResult<unknown>>) | undefined;
  readonly pollIntervalMs: number | undefined;
  readonly pollTimeoutMs: number | undefined;
  readonly retry: RetryPolicy | undefined;
  readonly compensationRetry: RetryPolicy | undefined;
  readonly timeoutMs: number | undefined;
  /** Type-only. */
  readonly __output?: TOutput;
}

/**
 * Declares a step for the `steps` object of {@link defineWorkflow}.
 *
 * @example
 * ```ts
 * step({ run: async (ctx) => db.create(ctx.idempotencyKey), compensate: (ctx) => db.drop(ctx.output.id), retry: { maximumAttempts: 4 } })
 * ```
 */
export function step<TInput = any, TRun = unknown, TPoll extends PollResult<unknown> = never, TDeps = Record<string, any>>(
  options: StepOptions<TInput, TDeps, TRun, TPoll>,
): StepDefinition<StepOutputOf<TRun, TPoll>> {
  return {
    kind: 'sagaline.step',
    dependsOn: options.dependsOn,
    run: options.run as StepDefinition['run'],
    compensate: options.compensate as StepDefinition['compensate'],
    poll: options.poll as StepDefinition['poll'],
    pollIntervalMs: options.pollIntervalMs,
    pollTimeoutMs: options.pollTimeoutMs,
    retry: options.retry,
    compensationRetry: options.compensationRetry,
    timeoutMs: options.timeoutMs,
  };
}

/** A step of a defined workflow, with its dependencies and policies resolved. */
export interface ResolvedStep {
  readonly name: string;
  readonly position: number;
  readonly dependsOn: readonly string[];
  readonly definition: StepDefinition;
  readonly retry: ResolvedRetryPolicy;
  readonly compensationRetry: ResolvedRetryPolicy;
  readonly timeoutMs: number;
  readonly pollIntervalMs: number;
  readonly pollTimeoutMs: number;
}

/** What happens when a step exhausts its attempts. */
export type OnFailure = 'halt' | 'rollback';

/** Options of {@link defineWorkflow}. */
export interface WorkflowOptions<TSchema extends z.ZodType> {
  /** The workflow type, used by `engine.start(name, …)`. Letters, digits, `_`, `-`, `.`. */
  name: string;
  /**
   * Recorded on every workflow at start; a workflow whose version is not
   * registered with the engine is not resumed under another definition.
   * @default a fingerprint of the step graph (names and dependencies)
   */
  version?: string | number;
  /** Validates (and transforms) the input at `start()`. */
  input: TSchema;
  /** `'halt'` leaves a failed workflow for an operator; `'rollback'` compensates at once. @default 'halt' */
  onFailure?: OnFailure;
}

/** A defined, validated workflow. Immutable: {@link WorkflowDefinition.step} returns a new definition. */
export interface WorkflowDefinition<TSchema extends z.ZodType = z.ZodType, TOutputs extends Record<string, unknown> = Record<string, unknown>> {
  readonly kind: 'sagaline.workflow';
  readonly name: string;
  readonly version: string;
  readonly input: TSchema;
  readonly onFailure: OnFailure;
  /** Steps in definition order. */
  readonly steps: readonly ResolvedStep[];
  /** Type-only: the outputs of every step. */
  readonly __outputs?: TOutputs;
  /**
   * Adds a step, with the outputs of the steps it depends on fully typed in `ctx.deps`.
   * Dependencies must already be defined, so a chain can never form a cycle.
   *
   * @example
   * ```ts
   * const wf = defineWorkflow({ name: 'provision', input: z.object({ plan: z.string() }) })
   *   .step('create_database', { run: async () => ({ dbId: 'db_1' }) })
   *   .step('register_dns', { dependsOn: ['create_database'], run: async (ctx) => ({ host: `${ctx.deps.create_database.dbId}.example.com` }) });
   * ```
   */
  step<const TName extends string, const TDep extends keyof TOutputs & string = never, TRun = unknown, TPoll extends PollResult<unknown> = never>(
    name: TName extends keyof TOutputs ? never : TName,
    options: StepOptions<z.output<TSchema>, { readonly [K in TDep]: TOutputs[K] }, TRun, TPoll> & { dependsOn?: readonly TDep[] },
  ): WorkflowDefinition<TSchema, TOutputs & { [K in TName]: StepOutputOf<TRun, TPoll> }>;
}

const NAME_RE = /^[A-Za-z][A-Za-z0-9_.-]{0,127}$/;

/**
 * Defines a workflow: a DAG of named steps. Validates the graph (unknown,
 * duplicate or cyclic dependencies) and every retry policy at once, with the
 * offending names in the message.
 *
 * @example
 * ```ts
 * const provision = defineWorkflow({
 *   name: 'provision_service',
 *   input: z.object({ plan: z.string() }),
 *   steps: {
 *     create_database: step({ run: async () => ({ dbId: 'db_1' }), compensate: async () => {} }),
 *     register_dns: step({ run: async (ctx) => ({ host: 'x.example.com' }) }),
 *   },
 * });
 * ```
 */
export function defineWorkflow<TSchema extends z.ZodType, TSteps extends Record<string, StepDefinition<any>> = {}>(
  options: WorkflowOptions<TSchema> & { steps?: TSteps },
): WorkflowDefinition<TSchema, { [K in keyof TSteps & string]: TSteps[K] extends StepDefinition<infer O> ? O : unknown }> {
  if (typeof options !== 'object' || options === null) throw new InvalidDefinitionError('defineWorkflow needs an options object');
  const { name } = options;
  if (typeof name !== 'string' || !NAME_RE.test(name)) {
    throw new InvalidDefinitionError(`workflow name ${JSON.stringify(name)} is invalid: use 1-128 letters, digits, "_", "-" or ".", starting with a letter`);
  }
  if (!options.input || typeof (options.input as { safeParse?: unknown }).safeParse !== 'function') {
    throw new InvalidDefinitionError(`workflow "${name}": "input" must be a zod schema`);
  }
  const onFailure = options.onFailure ?? 'halt';
  if (onFailure !== 'halt' && onFailure !== 'rollback') {
    throw new InvalidDefinitionError(`workflow "${name}": onFailure must be 'halt' or 'rollback', got ${JSON.stringify(onFailure)}`);
  }
  if (options.steps !== undefined && Object.keys(options.steps).length === 0) {
    throw new InvalidDefinitionError(`workflow "${name}" has no steps`);
  }
  const entries = Object.entries(options.steps ?? {});
  const raw: { name: string; definition: StepDefinition }[] = entries.map(([stepName, definition]) => ({ name: stepName, definition }));
  return buildDefinition(name, options.version, options.input, onFailure, raw) as never;
}

function buildDefinition(
  name: string,
  explicitVersion: string | number | undefined,
  input: z.ZodType,
  onFailure: OnFailure,
  raw: { name: string; definition: StepDefinition }[],
): WorkflowDefinition<any, any> {
  const steps = resolveSteps(name, raw);
  if (explicitVersion !== undefined && (typeof explicitVersion !== 'string' && typeof explicitVersion !== 'number')) {
    throw new InvalidDefinitionError(`workflow "${name}": version must be a string or a number`);
  }
  const version = explicitVersion !== undefined ? String(explicitVersion) : fingerprint(steps);
  const definition: WorkflowDefinition<any, any> = {
    kind: 'sagaline.workflow',
    name,
    version,
    input,
    onFailure,
    steps,
    step(stepName: string, stepOptions: StepOptions<any, any, any, any>) {
      return buildDefinition(name, explicitVersion, input, onFailure, [
        ...raw,
        { name: stepName, definition: step(stepOptions) as StepDefinition },
      ]);
    },
  } as WorkflowDefinition<any, any>;
  return Object.freeze(definition);
}

function positiveInt(value: unknown, fallback: number, where: string, field: string, min = 1): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min) {
    throw new InvalidDefinitionError(`${where}: "${field}" must be an integer >= ${min}, got ${JSON.stringify(value)}`);
  }
  return value;
}

function resolveSteps(workflow: string, raw: { name: string; definition: StepDefinition }[]): ResolvedStep[] {
  const seen = new Set<string>();
  const duplicates = new Set<string>();
  for (const { name } of raw) {
    if (seen.has(name)) duplicates.add(name);
    seen.add(name);
  }
  if (duplicates.size > 0) {
    throw new InvalidDefinitionError(`workflow "${workflow}" has duplicate step names: ${[...duplicates].join(', ')}`);
  }
  const resolved: ResolvedStep[] = raw.map(({ name, definition }, position) => {
    const where = `workflow "${workflow}" step "${name}"`;
    if (!NAME_RE.test(name)) throw new InvalidDefinitionError(`${where}: invalid step name (letters, digits, "_", "-", "." starting with a letter)`);
    if (!definition || definition.kind !== 'sagaline.step') throw new InvalidDefinitionError(`${where}: not created with step()`);
    if (typeof definition.run !== 'function') throw new InvalidDefinitionError(`${where}: "run" must be a function`);
    if (definition.compensate !== undefined && typeof definition.compensate !== 'function') {
      throw new InvalidDefinitionError(`${where}: "compensate" must be a function`);
    }
    if (definition.poll !== undefined && typeof definition.poll !== 'function') throw new InvalidDefinitionError(`${where}: "poll" must be a function`);
    const previous = raw[position - 1];
    const dependsOn = definition.dependsOn !== undefined ? [...definition.dependsOn] : previous ? [previous.name] : [];
    if (!Array.isArray(dependsOn) || dependsOn.some((d) => typeof d !== 'string')) {
      throw new InvalidDefinitionError(`${where}: "dependsOn" must be an array of step names`);
    }
    const unknown = dependsOn.filter((d) => !seen.has(d));
    if (unknown.length > 0) throw new InvalidDefinitionError(`${where} depends on unknown steps: ${unknown.join(', ')}`);
    if (dependsOn.includes(name)) throw new InvalidDefinitionError(`workflow "${workflow}" has a cycle: ${name} -> ${name}`);
    if (new Set(dependsOn).size !== dependsOn.length) throw new InvalidDefinitionError(`${where}: "dependsOn" lists a step twice`);
    const retry = resolveRetryPolicy(definition.retry, where);
    const compensationRetry = resolveRetryPolicy({ ...definition.retry, ...definition.compensationRetry }, `${where} compensationRetry`);
    return {
      name,
      position,
      dependsOn,
      definition,
      retry,
      compensationRetry,
      timeoutMs: positiveInt(definition.timeoutMs, 300_000, where, 'timeoutMs'),
      pollIntervalMs: positiveInt(definition.pollIntervalMs, 5000, where, 'pollIntervalMs'),
      pollTimeoutMs: positiveInt(definition.pollTimeoutMs, 3_600_000, where, 'pollTimeoutMs'),
    };
  });
  const cycle = findCycle(resolved);
  if (cycle) throw new InvalidDefinitionError(`workflow "${workflow}" has a cycle: ${cycle.join(' -> ')}`);
  return resolved;
}

function findCycle(steps: ResolvedStep[]): string[] | null {
  const byName = new Map(steps.map((s) => [s.name, s]));
  const state = new Map<string, 'visiting' | 'done'>();
  const path: string[] = [];
  const visit = (name: string): string[] | null => {
    const s = state.get(name);
    if (s === 'done') return null;
    if (s === 'visiting') return [...path.slice(path.indexOf(name)), name];
    state.set(name, 'visiting');
    path.push(name);
    for (const dep of byName.get(name)?.dependsOn ?? []) {
      const found = visit(dep);
      if (found) return found;
    }
    path.pop();
    state.set(name, 'done');
    return null;
  };
  for (const s of steps) {
    const found = visit(s.name);
    if (found) return found.reverse();
  }
  return null;
}

/** FNV-1a over the step graph: changes when a step is added, removed, renamed or re-wired. */
function fingerprint(steps: readonly ResolvedStep[]): string {
  const text = steps.map((s) => `${s.name}<${s.dependsOn.join(',')}${s.definition.poll ? '|poll' : ''}`).join(';');
  let hash = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    hash ^= text.charCodeAt(i);
    hash = Math.imul(hash, 0x01000193) >>> 0;
  }
  return `g${hash.toString(16).padStart(8, '0')}`;
}

/** True for a value returned by `ctx.waitForCallback()`. */
export function isCallbackWait(value: unknown): value is CallbackWait {
  return typeof value === 'object' && value !== null && (value as { kind?: unknown }).kind === 'sagaline.wait_for_callback';
}
