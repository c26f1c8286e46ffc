/**
 * Model-based test (issue item 8): fast-check generates random sequences of
 * commands — start a workflow, tick, drain, run the background worker until
 * idle (chained claims), advance the clock, deliver a callback (current,
 * duplicate, stale, forged; some twice at once), hold a handler mid-run and
 * release it later, freeze one on a stalled worker whose lease then expires,
 * toggle handler, poll and compensation success / failure, force-complete,
 * retry a step, roll back — and runs them against a real engine on each
 * store. After every command the stored state is checked against a small
 * reference model of the status rules (README, "Status model"):
 *
 * - the admin operations succeed exactly when the rules allow them from the
 *   state just before (otherwise `conflict`, or `not_found` for an unknown
 *   workflow or step, and then nothing at all is written), and do exactly
 *   what §4 says (which steps are skipped, which step compensates first);
 * - a callback is accepted exactly when its token is the latest one minted
 *   for the step, unused and unexpired, while the step runs or waits; any
 *   other is refused with the one `not_found` error; of two identical
 *   callbacks sent at once, exactly one is accepted;
 * - a callback accepted while its handler was still running is never lost,
 *   not even when that handler's lease is lost and the step re-runs;
 * - no handler runs after its step's completion is recorded, no compensation
 *   runs after it is recorded, and compensations start in reverse completion
 *   order (checked by each handler as it starts); a poll that answered "not
 *   done" is recorded before the next poll; a recorded result is always the
 *   current attempt's (a late result from a lost lease is discarded);
 * - the whole history replays through the transition tables to the stored
 *   statuses, only grows, and every move is made by the party allowed to
 *   make it (see `support/invariants.ts`); a workflow that says it is in
 *   progress always has a step that can still move it.
 *
 * A failure prints the shrunk command list and fast-check's seed; set
 * `SAGALINE_MODEL_SEED` (and `SAGALINE_MODEL_PATH`) to replay it.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { createManualClock } from '../../src/core/clock.js';
import { defineWorkflow, step, type WorkflowDefinition } from '../../src/core/define-workflow.js';
import type { StepStatus } from '../../src/core/step-status.js';
import type { WorkflowStatus } from '../../src/core/workflow-status.js';
import type { WorkflowEngine } from '../../src/engine/workflow-engine.js';
import { NonRetryableError } from '../../src/errors.js';
import type { StepRecord } from '../../src/storage/workflow-store.js';
import { deferred, type Deferred } from '../fixtures/harness.js';
import type { StoredWorkflow } from './support/invariants.js';
import { budgetMs, caseTimeoutMs, isLongRun, iterations, perStore, reliabilityStores } from './support/iterations.js';
import { reportedCase } from './support/report.js';
import { createRig, type Rig } from './support/rig.js';

type StepName = 'a' | 'b' | 'c' | 'd';
type RunMode = 'ok' | 'retryable' | 'fatal';

const STEPS: readonly StepName[] = ['a', 'b', 'c', 'd'];
const REFUSED = { code: 'not_found', message: 'callback token is unknown, used or expired' };
const NON_TERMINAL: readonly StepStatus[] = ['pending', 'running', 'waiting_callback', 'waiting_poll'];
const FORCE_FROM: readonly WorkflowStatus[] = ['pending', 'running', 'failed'];
const ROLLBACK_FROM: readonly WorkflowStatus[] = ['pending', 'running', 'failed', 'completed', 'rollback_failed'];
const RETRY_FROM: readonly WorkflowStatus[] = ['failed', 'running'];
const CALLBACK_FROM: readonly WorkflowStatus[] = ['pending', 'running', 'failed'];

/** How each workflow's handlers behave; commands change it. */
interface Behaviour {
  run: Record<StepName, RunMode>;
  pollDone: boolean;
  pollFails: boolean;
  compensationFails: Record<StepName, boolean>;
}

interface Hold {
  workflowId: string;
  step: StepName;
  gate: Deferred<void>;
  reached: boolean;
  /** Held on the stalled worker, whose lease is never renewed. */
  stalled: boolean;
  /** The tick whose handler is held, once it is. */
  tick: Promise<unknown> | null;
}

interface World {
  rig: Rig | null;
  behaviour: Map<string, Behaviour>;
  /** Callback tokens minted for each workflow's step `b`, oldest first, as the handler received them. */
  tokens: Map<string, { token: string; attempt: number }[]>;
  /** Tokens a callback was accepted for. */
  used: Set<string>;
  /** Callbacks accepted while the handler of `b` was still running: they must not be lost. */
  early: Map<string, { attempt: number; accepted: number }>;
  problems: string[];
  hold: Hold | null;
  /** Handlers running that are not held. */
  active: number;
  /** Last poll of each workflow's step `c` since its last run: its pollCount and how it ended. */
  polls: Map<string, { pollCount: number; result: 'not_done' | 'other' }>;
}

function newWorld(): World {
  return { rig: null, behaviour: new Map(), tokens: new Map(), used: new Set(), early: new Map(), problems: [], hold: null, active: 0, polls: new Map() };
}

function behaviourOf(world: World, id: string): Behaviour {
  let b = world.behaviour.get(id);
  if (!b) {
    b = { run: { a: 'ok', b: 'ok', c: 'ok', d: 'ok' }, pollDone: true, pollFails: false, compensationFails: { a: false, b: false, c: false, d: false } };
    world.behaviour.set(id, b);
  }
  return b;
}

type Kind = 'run' | 'poll' | 'compensate';

/**
 * Every handler goes through here: checks that its step may run now (the
 * double-execution and compensation-order checks), then blocks if a command
 * asked to hold it, then does what the behaviour says.
 */
async function handle<T>(world: World, ctx: { workflowId: string; stepName: string; idempotencyKey: string }, kind: Kind, body: () => T | Promise<T>): Promise<T> {
  const rig = world.rig!;
  const name = ctx.stepName as StepName;
  const hold = world.hold;
  const held = hold !== null && !hold.reached && hold.workflowId === ctx.workflowId && hold.step === name;
  if (held) hold.reached = true;
  else world.active++;
  try {
    const key = kind === 'compensate' ? `${ctx.workflowId}:${name}:compensate` : `${ctx.workflowId}:${name}`;
    if (ctx.idempotencyKey !== key) world.problems.push(`${kind} ${key}: idempotency key ${ctx.idempotencyKey}`);
    const stored = await rig.read(ctx.workflowId);
    const s = stored.steps.find((x) => x.name === name);
    if (kind === 'run') {
      // Double execution: the handler starts although the step's completion is recorded.
      if (stored.history.some((h) => h.kind === 'step' && h.stepName === name && h.to === 'completed')) {
        world.problems.push(`run ${key} started after the step's completion was recorded`);
      }
      // Read just after the handler started: a concurrent force-complete or rollback may have skipped it meanwhile.
      if (s?.status !== 'running' && s?.status !== 'skipped') world.problems.push(`run ${key} started while the step is ${s?.status}`);
    } else if (kind === 'poll') {
      if (s?.status !== 'waiting_poll' && s?.status !== 'skipped') world.problems.push(`poll ${key} started while the step is ${s?.status}`);
    } else {
      if (s?.status !== 'compensating') world.problems.push(`compensate ${key} started while the step is ${s?.status}`);
      const undo = rig.compensable(stored.workflow.type);
      const later = stored.steps.filter((o) => o.status === 'completed' && undo.has(o.name) && (o.completionSeq ?? 0) > (s?.completionSeq ?? 0));
      if (later.length > 0) world.problems.push(`compensate ${key} started before ${later.map((o) => o.name).join(', ')}, which completed later`);
    }
    if (held) await hold.gate.promise;
    return await body();
  } finally {
    if (!held) world.active--;
  }
}

function fail(mode: RunMode): void {
  if (mode === 'retryable') throw new Error('the vendor is down');
  if (mode === 'fatal') throw new NonRetryableError('the plan does not exist');
}

function definitions(world: World): WorkflowDefinition<any, any>[] {
  const retry = { maximumAttempts: 2, initialIntervalMs: 1000, backoffCoefficient: 1, jitter: 0 };
  const common = { retry, compensationRetry: retry, timeoutMs: 90_000 };
  const compensate = (name: StepName) => (ctx: { workflowId: string; stepName: string; idempotencyKey: string }) =>
    handle(world, ctx, 'compensate', () => {
      if (behaviourOf(world, ctx.workflowId).compensationFails[name]) throw new Error(`cannot undo ${name}`);
    });
  const plain = (name: StepName) => (ctx: { workflowId: string; stepName: string; idempotencyKey: string; attempt: number }) =>
    handle(world, ctx, 'run', () => {
      fail(behaviourOf(world, ctx.workflowId).run[name]);
      return { step: name, attempt: ctx.attempt };
    });
  const make = (name: string, onFailure: 'halt' | 'rollback') =>
    defineWorkflow({
      name,
      input: z.object({ plan: z.string() }),
      onFailure,
      steps: {
        a: step({ ...common, dependsOn: [], run: plain('a'), compensate: compensate('a') }),
        b: step({
          ...common,
          dependsOn: ['a'],
          run: (ctx) => {
            // Recorded before anything can interleave: this is now the step's only valid token.
            const minted = world.tokens.get(ctx.workflowId) ?? [];
            minted.push({ token: ctx.callbackToken, attempt: ctx.attempt });
            world.tokens.set(ctx.workflowId, minted);
            return handle(world, ctx, 'run', () => {
              fail(behaviourOf(world, ctx.workflowId).run.b);
              return ctx.waitForCallback({ timeoutMs: 60_000 });
            });
          },
          compensate: compensate('b'),
        }),
        c: step({
          ...common,
          dependsOn: ['a'],
          pollIntervalMs: 1000,
          pollTimeoutMs: 20_000,
          run: (ctx) => {
            world.polls.delete(ctx.workflowId);
            return plain('c')(ctx);
          },
          poll: (ctx) => {
            // A poll that answered "not done" is recorded before the next one: the same pollCount never comes twice.
            const previous = world.polls.get(ctx.workflowId);
            if (previous?.result === 'not_done' && ctx.pollCount <= previous.pollCount) {
              world.problems.push(`${ctx.workflowId}/c: poll #${ctx.pollCount} ran again after #${previous.pollCount} answered not done`);
            }
            const held = world.hold?.workflowId === ctx.workflowId && world.hold.step === 'c' && !world.hold.reached;
            world.polls.set(ctx.workflowId, { pollCount: ctx.pollCount, result: 'other' });
            return handle(world, ctx, 'poll', () => {
              const b = behaviourOf(world, ctx.workflowId);
              if (b.pollFails) throw new Error('the certificate authority is down');
              if (b.pollDone) return { done: true as const, output: { cert: 'pem' } };
              // A held poll's answer may be discarded (a timeout fails the attempt meanwhile): not counted.
              if (!held) world.polls.set(ctx.workflowId, { pollCount: ctx.pollCount, result: 'not_done' });
              return { done: false as const };
            });
          },
        }),
        d: step({ ...common, dependsOn: ['b', 'c'], run: plain('d'), compensate: compensate('d') }),
      },
    });
  return [make('model_halt', 'halt'), make('model_rollback', 'rollback')];
}

// ---------------------------------------------------------------- the model and the real system

interface Model {
  workflows: number;
  holding: boolean;
}

interface Real {
  rig: Rig;
  world: World;
  /** A second worker whose clock never moves: no heartbeat, no timeout, as if its process froze. */
  stalled: WorkflowEngine;
  ids: string[];
  /** Each workflow's state after the previous command. */
  last: Map<string, StoredWorkflow>;
}

const statusesOf = (s: StoredWorkflow) => Object.fromEntries(s.steps.map((x) => [x.name, x.status]));
const stepOf = (s: StoredWorkflow, name: string): StepRecord => s.steps.find((x) => x.name === name)!;
/** The workflow a command acts on: by index, or (with `held`) the one whose handler is held, when there is one. */
const pick = (r: Real, index: number, held = false): string => {
  const hold = r.world.hold;
  if (held && hold?.reached) return hold.workflowId;
  return r.ids[index % r.ids.length]!;
};

async function settled<T>(p: Promise<T>): Promise<{ ok: true; value: T } | { ok: false; error: { code?: unknown; message?: unknown } }> {
  try {
    return { ok: true, value: await p };
  } catch (error) {
    return { ok: false, error: error as { code?: unknown; message?: unknown } };
  }
}

/** Runs a tick; if it runs into the held handler, leaves it running in the background. Resolves to the steps claimed, or 'held'. */
async function tickOnce(r: Real, engine: WorkflowEngine = r.rig.engine): Promise<number | 'held'> {
  const hold = r.world.hold;
  const ticking = engine.tick();
  if (!hold || hold.reached) return ticking;
  let done = false;
  let claimed = 0;
  const watched = ticking.then((n) => {
    done = true;
    claimed = n;
  });
  for (let i = 0; !done && !hold.reached; i++) {
    if (i > 100_000) throw new Error('tick neither finished nor reached the held handler');
    await new Promise<void>((resolve) => setImmediate(resolve));
  }
  if (done) return claimed;
  hold.tick = watched.catch((err: unknown) => r.world.problems.push(`held tick failed: ${String(err)}`));
  return 'held';
}

/** The checks made after every command. */
async function verify(r: Real, label: string): Promise<void> {
  const { rig, world } = r;
  await rig.quiesce(() => world.active === 0);
  expect(world.problems, label).toEqual([]);
  expect(await rig.violations(r.ids, { live: true }), label).toEqual([]);
  for (const id of r.ids) {
    const now = await rig.read(id);
    const before = r.last.get(id);
    if (before) {
      // History only grows: nothing is rewritten or removed.
      expect(JSON.stringify(now.history.slice(0, before.history.length)), `${label}: ${id} history rewritten`).toBe(JSON.stringify(before.history));
    }
    r.last.set(id, now);
    // A recorded result is the current attempt's: a late result of an attempt whose lease was lost is never written.
    for (const name of ['a', 'd']) {
      const s = stepOf(now, name);
      const output = s.output as { attempt?: number } | null;
      // (Only while completed: a compensation restarts the attempt count.)
      if (s.status === 'completed' && output !== null && typeof output === 'object' && output.attempt !== undefined) {
        expect(output.attempt, `${label}: ${id}/${name} recorded attempt ${output.attempt}'s result while on attempt ${s.attempts}`).toBe(s.attempts);
      }
    }

    // A callback accepted while the handler ran is applied when the step's handler returns, even if that
    // is a later attempt after the lease was lost; it is dropped only if the attempt fails or the step is skipped.
    const early = world.early.get(id);
    const b = stepOf(now, 'b');
    if (early) {
      const ended = now.history.some((h) => h.seq > early.accepted && h.kind === 'step' && h.stepName === 'b' && ['pending', 'failed', 'skipped'].includes(h.to ?? ''));
      expect(
        !ended && b.status === 'waiting_callback',
        `${label}: ${id}/b lost the callback accepted while its handler ran (attempt ${early.attempt}; now attempt ${b.attempts}, ${b.status})`,
      ).toBe(false);
      if (ended || b.status !== 'running') world.early.delete(id);
    }
  }
}

function stalledWorker(rig: Rig): WorkflowEngine {
  return rig.otherEngine({ workerId: 'worker_stalled', clock: createManualClock(rig.clock.now()) });
}

abstract class Cmd implements fc.AsyncCommand<Model, Real, false> {
  check(m: Readonly<Model>): boolean {
    return m.workflows > 0;
  }
  abstract exec(m: Model, r: Real): Promise<void>;
  abstract toString(): string;
  async run(m: Model, r: Real): Promise<void> {
    await this.exec(m, r);
    await verify(r, this.toString());
  }
}

class Start extends Cmd {
  constructor(
    readonly type: 'model_halt' | 'model_rollback',
    readonly modes: Record<StepName, RunMode> = { a: 'ok', b: 'ok', c: 'ok', d: 'ok' },
  ) {
    super();
  }
  override check(m: Readonly<Model>): boolean {
    return m.workflows < 3;
  }
  async exec(m: Model, r: Real): Promise<void> {
    const d = await r.rig.engine.start(this.type, { tenantId: 't1', input: { plan: 'pro' } });
    expect(d.status).toBe('pending');
    r.ids.push(d.id);
    behaviourOf(r.world, d.id).run = { ...this.modes };
    m.workflows++;
  }
  toString(): string {
    const failing = STEPS.filter((s) => this.modes[s] !== 'ok').map((s) => `${s}=${this.modes[s]}`);
    return `start(${this.type}${failing.length > 0 ? `, ${failing.join(' ')}` : ''})`;
  }
}

class Tick extends Cmd {
  async exec(_m: Model, r: Real): Promise<void> {
    await tickOnce(r);
  }
  toString(): string {
    return 'tick';
  }
}

class Drain extends Cmd {
  async exec(_m: Model, r: Real): Promise<void> {
    for (let i = 0; i < 50; i++) {
      const n = await tickOnce(r);
      if (n === 'held' || n === 0) return;
    }
    throw new Error('drain did not end in 50 ticks');
  }
  toString(): string {
    return 'drain';
  }
}

/**
 * Runs the background worker until nothing is due, then stops it. Unlike a
 * tick, the worker claims each next ready step inside the previous step's
 * result transaction (a chained claim).
 */
class WorkerDrain extends Cmd {
  override check(m: Readonly<Model>): boolean {
    return m.workflows > 0 && !m.holding;
  }
  async exec(_m: Model, r: Real): Promise<void> {
    const { rig, world } = r;
    const engine = rig.engine as unknown as { inFlight: number };
    rig.engine.startWorker();
    try {
      const deadline = Date.now() + 15_000;
      for (let stable = 0; stable < 5; ) {
        if (Date.now() > deadline) throw new Error('the worker did not go idle');
        await new Promise((resolve) => setTimeout(resolve, 1));
        const busy = rig.store.inFlight > 0 || world.active > 0 || engine.inFlight > 0;
        const next = busy ? null : await rig.inner.nextDueAt();
        const idle = !busy && (next === null || next.getTime() > rig.clock.now());
        stable = idle ? stable + 1 : 0;
      }
    } finally {
      await rig.engine.stop();
    }
  }
  toString(): string {
    return 'worker until idle';
  }
}

class Advance extends Cmd {
  constructor(readonly ms: number) {
    super();
  }
  async exec(_m: Model, r: Real): Promise<void> {
    r.rig.clock.advance(this.ms);
  }
  toString(): string {
    return `advance(${this.ms})`;
  }
}

class SetRun extends Cmd {
  constructor(
    readonly wf: number,
    readonly step: StepName,
    readonly mode: RunMode,
  ) {
    super();
  }
  async exec(_m: Model, r: Real): Promise<void> {
    behaviourOf(r.world, pick(r, this.wf)).run[this.step] = this.mode;
  }
  toString(): string {
    return `run(wf${this.wf}.${this.step} = ${this.mode})`;
  }
}

class SetPoll extends Cmd {
  constructor(
    readonly wf: number,
    readonly done: boolean,
    readonly fails: boolean,
  ) {
    super();
  }
  async exec(_m: Model, r: Real): Promise<void> {
    const b = behaviourOf(r.world, pick(r, this.wf));
    b.pollDone = this.done;
    b.pollFails = this.fails;
  }
  toString(): string {
    return `poll(wf${this.wf} done=${this.done} fails=${this.fails})`;
  }
}

class SetCompensation extends Cmd {
  constructor(
    readonly wf: number,
    readonly step: StepName,
    readonly fails: boolean,
  ) {
    super();
  }
  async exec(_m: Model, r: Real): Promise<void> {
    behaviourOf(r.world, pick(r, this.wf)).compensationFails[this.step] = this.fails;
  }
  toString(): string {
    return `compensate(wf${this.wf}.${this.step} fails=${this.fails})`;
  }
}

/**
 * A stalled worker claims what is due; if it claims `step`, it freezes inside
 * the handler (until `release`) without renewing its lease, so the step is
 * reclaimed once the lease expires, and its late result must be discarded.
 */
class Stall extends Cmd {
  constructor(
    readonly wf: number,
    readonly step: StepName,
  ) {
    super();
  }
  override check(m: Readonly<Model>): boolean {
    return m.workflows > 0 && !m.holding;
  }
  async exec(m: Model, r: Real): Promise<void> {
    r.world.hold = { workflowId: pick(r, this.wf), step: this.step, gate: deferred(), reached: false, tick: null, stalled: true };
    const outcome = await tickOnce(r, r.stalled);
    if (outcome === 'held') m.holding = true;
    else r.world.hold = null;
  }
  toString(): string {
    return `stalled worker ticks, freezing in wf${this.wf}.${this.step}`;
  }
}

class HoldCmd extends Cmd {
  constructor(
    readonly wf: number,
    readonly step: StepName,
  ) {
    super();
  }
  override check(m: Readonly<Model>): boolean {
    return m.workflows > 0 && !m.holding;
  }
  async exec(m: Model, r: Real): Promise<void> {
    r.world.hold = { workflowId: pick(r, this.wf), step: this.step, gate: deferred(), reached: false, tick: null, stalled: false };
    m.holding = true;
  }
  toString(): string {
    return `hold(wf${this.wf}.${this.step})`;
  }
}

class Release extends Cmd {
  override check(m: Readonly<Model>): boolean {
    return m.holding;
  }
  async exec(m: Model, r: Real): Promise<void> {
    const hold = r.world.hold!;
    hold.gate.resolve();
    await hold.tick;
    r.world.hold = null;
    m.holding = false;
  }
  toString(): string {
    return 'release';
  }
}

type Which = 'current' | 'stale' | 'used' | 'forged';

class Callback extends Cmd {
  constructor(
    readonly wf: number,
    readonly which: Which,
    readonly status: 'success' | 'failed',
    readonly twice: boolean,
    readonly held: boolean,
  ) {
    super();
  }
  async exec(_m: Model, r: Real): Promise<void> {
    const { rig, world } = r;
    const id = pick(r, this.wf, this.held);
    const minted = world.tokens.get(id) ?? [];
    const latest = minted.at(-1);
    const usedOfWf = minted.filter((t) => world.used.has(t.token));
    const candidate =
      this.which === 'current'
        ? latest?.token
        : this.which === 'stale'
          ? minted.find((t) => t !== latest && !world.used.has(t.token))?.token
          : this.which === 'used'
            ? usedOfWf.at(-1)?.token
            : undefined;
    // A forged token has the right shape: 32 random bytes in base64url.
    const token = candidate ?? Buffer.from(crypto.getRandomValues(new Uint8Array(32))).toString('base64url');
    const pre = await rig.read(id);
    const b = stepOf(pre, 'b');
    const now = rig.clock.now();
    // The model: only the latest token, unused, while the step runs or waits (unexpired), in a workflow still going forward.
    const accept =
      token === latest?.token &&
      !world.used.has(token) &&
      CALLBACK_FROM.includes(pre.workflow.status) &&
      (b.status === 'running' || (b.status === 'waiting_callback' && (b.dueAt === null || b.dueAt.getTime() > now)));
    const payload = this.status === 'success' ? { status: 'success' as const, output: { account: 'acc_1' } } : { status: 'failed' as const, error: 'rejected' };
    if (this.twice) {
      // Both callbacks check the token before either applies it: the interleaving a duplicate delivery races in.
      const base = rig.store.count('getSteps');
      rig.store.delay = async (point) => {
        for (let i = 0; point === 'transact' && i < 10_000; i++) {
          if (rig.store.count('getSteps') >= base + 2 && rig.store.inFlightOf('getSteps') === 0) return;
          await new Promise<void>((resolve) => setImmediate(resolve));
        }
      };
    }
    let results: Awaited<ReturnType<typeof settled>>[];
    try {
      const sends = this.twice ? [rig.engine.completeCallback(token, payload), rig.engine.completeCallback(token, payload)] : [rig.engine.completeCallback(token, payload)];
      results = await Promise.all(sends.map((p) => settled(p)));
    } finally {
      rig.store.delay = null;
    }
    const accepted = results.filter((x) => x.ok).length;

    for (const x of results) if (!x.ok) expect({ code: x.error.code, message: x.error.message }, `${this}: refusal`).toEqual(REFUSED);
    // Exactly one of two identical callbacks is accepted: never a second transition.
    expect(accepted, `${this}: accepted (model says ${accept ? 'accept' : 'refuse'}; b was ${b.status}, workflow ${pre.workflow.status})`).toBe(accept ? 1 : 0);
    await rig.quiesce(() => world.active === 0);
    const post = await rig.read(id);
    const after = stepOf(post, 'b');
    if (!accept) {
      expect(JSON.stringify(post), `${this}: a refused callback changed nothing`).toBe(JSON.stringify(pre));
      return;
    }
    world.used.add(token);
    if (b.status === 'running') {
      // Kept for the handler's return.
      expect(after.status).toBe('running');
      const note = post.history.findLast((h) => h.action === 'callback_received' && h.stepName === 'b');
      world.early.set(id, { attempt: b.attempts, accepted: note?.seq ?? 0 });
      return;
    }
    if (this.status === 'success') {
      expect(after.status).toBe('completed');
      expect(after.output).toEqual({ account: 'acc_1' });
    } else {
      expect(after.status).toBe(b.attempts < 2 ? 'pending' : 'failed');
      expect(after.error?.code).toBe('callback_failed');
    }
  }
  toString(): string {
    return `callback(${this.held ? 'held wf, else ' : ''}wf${this.wf}, ${this.which}, ${this.status}${this.twice ? ', twice at once' : ''})`;
  }
}

/** Compares an admin call's outcome with the model; on refusal, checks that nothing was written. */
async function adminCall(
  r: Real,
  label: string,
  id: string,
  expected: 'ok' | 'conflict' | 'not_found',
  call: () => Promise<unknown>,
): Promise<{ pre: StoredWorkflow | null; post: StoredWorkflow | null }> {
  const known = r.ids.includes(id);
  const pre = known ? await r.rig.read(id) : null;
  const result = await settled(call());

  if (expected === 'ok') {
    expect(result.ok ? 'ok' : `${String(result.error.code)}: ${String(result.error.message)}`, `${label} (workflow was ${pre?.workflow.status})`).toBe('ok');
  } else {
    expect(result.ok ? 'ok' : result.error.code, `${label} (workflow was ${pre?.workflow.status})`).toBe(expected);
  }
  await r.rig.quiesce(() => r.world.active === 0);
  const post = known ? await r.rig.read(id) : null;
  if (expected !== 'ok' && pre) expect(JSON.stringify(post), `${label}: a refused operation wrote something`).toBe(JSON.stringify(pre));
  return { pre, post };
}

class ForceComplete extends Cmd {
  constructor(
    readonly wf: number,
    readonly held: boolean,
  ) {
    super();
  }
  async exec(_m: Model, r: Real): Promise<void> {
    const id = pick(r, this.wf, this.held);
    const status = (await r.rig.read(id)).workflow.status;
    const allowed = FORCE_FROM.includes(status);
    const { pre, post } = await adminCall(r, String(this), id, allowed ? 'ok' : 'conflict', () => r.rig.engine.forceComplete(id, { actor: 'ops' }));
    if (!allowed) return;
    expect(post!.workflow.status).toBe('completed');
    // Unfinished steps are skipped; failed and completed ones keep their status.
    const want = Object.fromEntries(pre!.steps.map((s) => [s.name, NON_TERMINAL.includes(s.status) ? 'skipped' : s.status]));
    expect(statusesOf(post!), String(this)).toEqual(want);
  }
  toString(): string {
    return `forceComplete(${this.held ? 'held wf, else ' : ''}wf${this.wf})`;
  }
}

class RetryStep extends Cmd {
  /** `a_failed_step`: whichever step is failed when the command runs (else `a`). */
  constructor(
    readonly wf: number,
    readonly step: StepName | 'unknown_step' | 'a_failed_step',
  ) {
    super();
  }
  async exec(_m: Model, r: Real): Promise<void> {
    let id = pick(r, this.wf);
    if (this.step === 'a_failed_step') {
      // The first workflow, from this one on, that has a failed step.
      for (let i = 0; i < r.ids.length; i++) {
        const candidate = pick(r, this.wf + i);
        if ((await r.rig.read(candidate)).steps.some((s) => s.status === 'failed')) {
          id = candidate;
          break;
        }
      }
    }
    const pre = await r.rig.read(id);
    const name = this.step === 'a_failed_step' ? (pre.steps.find((s) => s.status === 'failed')?.name ?? 'a') : this.step;
    const target = pre.steps.find((s) => s.name === name);
    const expected = !target ? 'not_found' : RETRY_FROM.includes(pre.workflow.status) && target.status === 'failed' ? 'ok' : 'conflict';
    const { post } = await adminCall(r, `${String(this)} on ${name}`, id, expected, () => r.rig.engine.retryStep(id, name, { actor: 'ops' }));
    if (expected !== 'ok') return;
    const after = stepOf(post!, name);
    expect(post!.workflow.status).toBe('running');
    expect({ status: after.status, retryCount: after.retryCount, error: after.error, attempts: after.attempts }).toEqual({
      status: 'pending',
      retryCount: target!.retryCount + 1,
      error: null,
      attempts: 0,
    });
    // Nothing else moved.
    expect(statusesOf(post!)).toEqual({ ...statusesOf(pre), [name]: 'pending' });
  }
  toString(): string {
    return `retryStep(wf${this.wf}, ${this.step})`;
  }
}

class Rollback extends Cmd {
  constructor(
    readonly wf: number,
    readonly held: boolean,
  ) {
    super();
  }
  async exec(_m: Model, r: Real): Promise<void> {
    const id = pick(r, this.wf, this.held);
    const status = (await r.rig.read(id)).workflow.status;
    const allowed = ROLLBACK_FROM.includes(status);
    const { pre, post } = await adminCall(r, String(this), id, allowed ? 'ok' : 'conflict', () => r.rig.engine.rollback(id, { actor: 'ops' }));
    if (!allowed) return;
    // The model: unfinished steps are skipped; the latest-completed step still to undo compensates first.
    const undo = r.rig.compensable(pre!.workflow.type);
    const todo = pre!.steps
      .filter((s) => s.status === 'compensation_failed' || (s.status === 'completed' && undo.has(s.name)))
      .sort((x, y) => (y.completionSeq ?? 0) - (x.completionSeq ?? 0));
    const want = Object.fromEntries(pre!.steps.map((s) => [s.name, NON_TERMINAL.includes(s.status) ? 'skipped' : s.status]));
    if (todo[0]) want[todo[0].name] = 'compensating';
    expect(statusesOf(post!), String(this)).toEqual(want);
    expect(post!.workflow.status).toBe(todo[0] ? 'rolling_back' : 'rolled_back');
  }
  toString(): string {
    return `rollback(${this.held ? 'held wf, else ' : ''}wf${this.wf})`;
  }
}

class UnknownWorkflow extends Cmd {
  constructor(readonly op: 'forceComplete' | 'retryStep' | 'rollback') {
    super();
  }
  override check(): boolean {
    return true;
  }
  async exec(_m: Model, r: Real): Promise<void> {
    const id = 'wf_00000000000000000000000000000000';
    const call = () =>
      this.op === 'forceComplete' ? r.rig.engine.forceComplete(id) : this.op === 'retryStep' ? r.rig.engine.retryStep(id, 'a') : r.rig.engine.rollback(id);
    await adminCall(r, String(this), id, 'not_found', call);
  }
  toString(): string {
    return `${this.op}(unknown workflow)`;
  }
}

const wfIndex = fc.nat({ max: 2 });
const stepName = fc.constantFrom<StepName>(...STEPS);
const runMode = fc.constantFrom<RunMode>('ok', 'ok', 'ok', 'ok', 'ok', 'retryable', 'fatal');
const startModes = fc.record({ a: runMode, b: runMode, c: runMode, d: runMode });
const workflowType = fc.constantFrom('model_halt' as const, 'model_rollback' as const);

const commands: fc.Arbitrary<Cmd>[] = [
  fc.oneof(
    { weight: 3, arbitrary: fc.tuple(workflowType, startModes).map(([t, modes]): Cmd => new Start(t, modes)) },
    { weight: 6, arbitrary: fc.constant<Cmd>(new Tick()) },
    { weight: 6, arbitrary: fc.constant<Cmd>(new Drain()) },
    { weight: 3, arbitrary: fc.constant<Cmd>(new WorkerDrain()) },
    { weight: 6, arbitrary: fc.constantFrom(500, 1000, 2000, 10_000, 31_000, 61_000).map((ms): Cmd => new Advance(ms)) },
    { weight: 4, arbitrary: fc.tuple(wfIndex, stepName, runMode).map(([w, st, m]): Cmd => new SetRun(w, st, m)) },
    { weight: 2, arbitrary: fc.tuple(wfIndex, fc.boolean(), fc.boolean()).map(([w, d, f]): Cmd => new SetPoll(w, d, f)) },
    { weight: 2, arbitrary: fc.tuple(wfIndex, stepName, fc.boolean()).map(([w, st, f]): Cmd => new SetCompensation(w, st, f)) },
    { weight: 4, arbitrary: fc.tuple(wfIndex, fc.constantFrom<StepName>('a', 'b', 'b', 'b', 'b', 'c', 'd')).map(([w, st]): Cmd => new HoldCmd(w, st)) },
    { weight: 2, arbitrary: fc.tuple(wfIndex, fc.constantFrom<StepName>('a', 'b', 'b', 'c', 'd')).map(([w, st]): Cmd => new Stall(w, st)) },
    { weight: 3, arbitrary: fc.constant<Cmd>(new Release()) },
    {
      weight: 8,
      arbitrary: fc
        .tuple(
          wfIndex,
          fc.constantFrom<Which>('current', 'current', 'current', 'stale', 'used', 'forged'),
          fc.constantFrom('success' as const, 'success' as const, 'failed' as const),
          fc.boolean(),
          fc.boolean(),
        )
        .map(([w, which, st, twice, held]): Cmd => new Callback(w, which, st, twice, held)),
    },
    {
      weight: 4,
      arbitrary: fc
        .tuple(wfIndex, fc.constantFrom<StepName | 'unknown_step' | 'a_failed_step'>('a_failed_step', 'a_failed_step', 'a_failed_step', 'a', 'b', 'c', 'd', 'unknown_step'))
        .map(([w, st]): Cmd => new RetryStep(w, st)),
    },
    { weight: 1, arbitrary: fc.tuple(wfIndex, fc.boolean()).map(([w, held]): Cmd => new ForceComplete(w, held)) },
    { weight: 1, arbitrary: fc.tuple(wfIndex, fc.boolean()).map(([w, held]): Cmd => new Rollback(w, held)) },
    { weight: 1, arbitrary: fc.constantFrom('forceComplete' as const, 'retryStep' as const, 'rollback' as const).map((op): Cmd => new UnknownWorkflow(op)) },
  ),
];

const firstType = workflowType;
const stores = reliabilityStores();

/**
 * Sequences worth keeping: each replays a race or a path that random
 * generation reaches rarely, through the same model checks.
 */
const scenarios: {
  name: string;
  type: 'model_halt' | 'model_rollback';
  modes?: Partial<Record<StepName, RunMode>>;
  commands: Cmd[];
  /** Where the workflow ends. */
  end: { workflow: WorkflowStatus; steps: Record<StepName, StepStatus> };
}[] = [
  {
    name: 'two branches fail, one is retried and completes: the workflow must not stay running with nothing left to run',
    type: 'model_halt',
    modes: { b: 'fatal', c: 'fatal' },
    commands: [new Drain(), new SetRun(0, 'b', 'ok'), new RetryStep(0, 'b'), new Drain(), new Callback(0, 'current', 'success', false, false), new Drain()],
    end: { workflow: 'failed', steps: { a: 'completed', b: 'completed', c: 'failed', d: 'pending' } },
  },
  {
    name: 'a callback accepted while its handler runs is applied when the handler returns',
    type: 'model_halt',
    commands: [new HoldCmd(0, 'b'), new Drain(), new Callback(0, 'current', 'success', true, true), new Release(), new Advance(1000), new Drain()],
    end: { workflow: 'completed', steps: { a: 'completed', b: 'completed', c: 'completed', d: 'completed' } },
  },
  {
    name: 'two identical callbacks at once on a waiting step: exactly one is accepted',
    type: 'model_halt',
    commands: [new Drain(), new Callback(0, 'current', 'success', true, false), new Callback(0, 'used', 'success', true, false), new Advance(1000), new Drain()],
    end: { workflow: 'completed', steps: { a: 'completed', b: 'completed', c: 'completed', d: 'completed' } },
  },
  {
    name: 'a stalled worker loses its lease: the step is re-run, the late result is discarded',
    type: 'model_halt',
    commands: [new Stall(0, 'a'), new Advance(31_000), new Drain(), new Release(), new Drain()],
    end: { workflow: 'running', steps: { a: 'completed', b: 'waiting_callback', c: 'waiting_poll', d: 'pending' } },
  },
  {
    name: 'force-complete while a handler is held: the late result is discarded',
    type: 'model_halt',
    commands: [new HoldCmd(0, 'a'), new Drain(), new ForceComplete(0, true), new Release(), new Drain()],
    end: { workflow: 'completed', steps: { a: 'skipped', b: 'skipped', c: 'skipped', d: 'skipped' } },
  },
  {
    name: 'rollback while a handler is held, then a compensation fails and a second rollback resumes it',
    type: 'model_rollback',
    commands: [
      new Drain(),
      new SetCompensation(0, 'a', true),
      new HoldCmd(0, 'c'),
      new Advance(1000),
      new Drain(),
      new Rollback(0, true),
      new Release(),
      new Drain(),
      new Advance(2000),
      new Drain(),
      new SetCompensation(0, 'a', false),
      new Rollback(0, false),
      new Drain(),
    ],
    end: { workflow: 'rolled_back', steps: { a: 'compensated', b: 'skipped', c: 'skipped', d: 'skipped' } },
  },
  {
    name: 'a stale token from an earlier attempt is refused after a failed callback',
    type: 'model_halt',
    commands: [
      new Drain(),
      new Callback(0, 'current', 'failed', false, false),
      new Advance(1000),
      new Drain(),
      new Callback(0, 'stale', 'success', false, false),
      new Callback(0, 'current', 'success', false, false),
      new Drain(),
    ],
    end: { workflow: 'completed', steps: { a: 'completed', b: 'completed', c: 'completed', d: 'completed' } },
  },
];

describe.each(stores)('model-based: random command sequences on $name store', (factory) => {
  it(
    'every command agrees with the reference model of the status rules',
    async () => {
      // Memory is cheap; a database store costs a fresh database per run and a round trip per read.
      const numRuns = iterations(perStore(factory.name, { memory: 40, sqlite: 15, postgres: 3 }), perStore(factory.name, { memory: 1, sqlite: 0.4, postgres: 0.1 }));
      const maxCommands = (isLongRun() ? 100 : 60) / (factory.name === 'postgres' ? 2 : 1);
      const seed = process.env['SAGALINE_MODEL_SEED'];
      const path = process.env['SAGALINE_MODEL_PATH'];
      await reportedCase(
        { suite: 'model-based', fault: 'random start / tick / clock / callback / hold / admin sequences vs the status model', stores: [factory.name] },
        async (tally) => {
          await fc.assert(
            fc.asyncProperty(firstType, startModes, fc.commands(commands, { maxCommands, size: 'large' }), async (first, modes, cmds) => {
              const world = newWorld();
              const rig = await createRig(factory, definitions(world), { engine: { shutdownTimeoutMs: 0, idlePollMs: 1 } });
              world.rig = rig;
              try {
                // Every sequence starts with one workflow, so that no command is wasted.
                const model: Model = { workflows: 0, holding: false };
                const real: Real = { rig, world, ids: [], last: new Map(), stalled: stalledWorker(rig) };
                await new Start(first, modes).run(model, real);
                await fc.asyncModelRun(() => ({ model, real }), cmds);
              } finally {
                world.hold?.gate.resolve();
                await rig.close();
              }
              tally.iterations++;
            }),
            {
              numRuns,
              ...(seed !== undefined ? { seed: Number(seed) } : {}),
              ...(path !== undefined ? { path } : {}),
              // The time budget ends the run early (the runs made are reported), never as a failure.
              interruptAfterTimeLimit: budgetMs(),
              markInterruptAsFailure: false,
            },
          );
        },
      );
    },
    caseTimeoutMs(),
  );

  it.each(scenarios)('$name', async ({ type, modes, commands: sequence, end }) => {
    const world = newWorld();
    const rig = await createRig(factory, definitions(world), { engine: { shutdownTimeoutMs: 0, idlePollMs: 1 } });
    world.rig = rig;
    try {
      const model: Model = { workflows: 0, holding: false };
      const real: Real = { rig, world, ids: [], last: new Map(), stalled: stalledWorker(rig) };
      await new Start(type, { a: 'ok', b: 'ok', c: 'ok', d: 'ok', ...modes }).run(model, real);
      for (const cmd of sequence) {
        expect(cmd.check(model), `${String(cmd)} may run here`).toBe(true);
        await cmd.run(model, real);
      }
      const stored = await rig.read(real.ids[0]!);
      expect({ workflow: stored.workflow.status, steps: statusesOf(stored) }).toEqual(end);
    } finally {
      world.hold?.gate.resolve();
      await rig.close();
    }
  });
});
