/**
 * Races, in process (issue items 3 and 4): admin operations issued while a
 * worker finishes the same step, two workers claiming at once, and callbacks
 * racing each other, the handler's return, force-complete and a lost lease.
 *
 * Each race runs in a loop: the two fixed orders first (worker first, admin
 * first), then random interleavings (the two operations start concurrently,
 * every store call waits a random number of event-loop turns). Every
 * iteration checks that exactly one transition won and the loser was refused
 * (`conflict`) or had no effect, that no handler ran after its step's result
 * was recorded, and that the whole history is legal
 * (`support/invariants.ts`).
 */
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { createManualClock } from '../../src/core/clock.js';
import { defineWorkflow, step, type WorkflowDefinition } from '../../src/core/define-workflow.js';
import { NonRetryableError } from '../../src/errors.js';
import { deferred, type Deferred } from '../fixtures/harness.js';
import { codeOf, orderOf, race, seededRandom, settle, shuffleStoreCalls, turns, type Order } from './support/interleave.js';
import type { StoredWorkflow } from './support/invariants.js';
import { caseTimeoutMs, iterations, loop, reliabilityStores } from './support/iterations.js';
import { reportedCase } from './support/report.js';
import { createRig, type Rig } from './support/rig.js';

const SUITE = 'admin-races';
const input = z.object({ n: z.number() });
const REFUSED = { code: 'not_found', message: 'callback token is unknown, used or expired' };

/** What the handlers of one case do and saw. */
interface World {
  rig: Rig | null;
  /** `workflowId:step` -> the next run of that step waits for this gate, then ends as it says. */
  gates: Map<string, { gate: Deferred<'ok' | 'fail'>; started: Deferred<void> }>;
  /** Every handler call, in order: `workflowId:step:kind#attempt`. */
  calls: string[];
  /** Compensations that ran to the end, per workflow. */
  undone: Map<string, string[]>;
  /** Callback tokens given to each workflow's `vendor` step, oldest first. */
  tokens: Map<string, string[]>;
  /** How the next run of a step ends when it is not gated: `workflowId:step` -> outcome. */
  outcomes: Map<string, 'ok' | 'fail'>;
  problems: string[];
}

function newWorld(): World {
  return { rig: null, gates: new Map(), calls: [], undone: new Map(), tokens: new Map(), outcomes: new Map(), problems: [] };
}

/** Gates the next run of `workflowId:step`; resolve `gate` with how it ends. */
function gateNext(world: World, workflowId: string, stepName: string) {
  const entry = { gate: deferred<'ok' | 'fail'>(), started: deferred<void>() };
  world.gates.set(`${workflowId}:${stepName}`, entry);
  return entry;
}

type Ctx = { workflowId: string; stepName: string; attempt: number; idempotencyKey: string };

/** Every handler: records the call, checks its step may run, waits at its gate if it has one. */
async function handler(world: World, ctx: Ctx, kind: 'run' | 'compensate'): Promise<'ok' | 'fail'> {
  const key = `${ctx.workflowId}:${ctx.stepName}`;
  world.calls.push(`${key}:${kind}#${ctx.attempt}`);
  const stored = await world.rig!.read(ctx.workflowId);
  const s = stored.steps.find((x) => x.name === ctx.stepName);
  if (kind === 'run') {
    // Double execution: the step's completion is already recorded when its handler starts.
    if (stored.history.some((h) => h.kind === 'step' && h.stepName === ctx.stepName && h.to === 'completed')) {
      world.problems.push(`${key}: run #${ctx.attempt} started after the step completed`);
    }
    if (ctx.idempotencyKey !== key) world.problems.push(`${key}: idempotency key ${ctx.idempotencyKey}`);
  } else if (s?.status !== 'compensating') {
    world.problems.push(`${key}: compensation started while the step is ${s?.status}`);
  }
  const gated = world.gates.get(key);
  if (gated && kind === 'run') {
    world.gates.delete(key);
    gated.started.resolve();
    return gated.gate.promise;
  }
  return world.outcomes.get(key) ?? 'ok';
}

function definitions(world: World): WorkflowDefinition<any, any>[] {
  const run = async (ctx: Ctx) => {
    if ((await handler(world, ctx, 'run')) === 'fail') throw new NonRetryableError(`${ctx.stepName} failed`);
    return { step: ctx.stepName, attempt: ctx.attempt };
  };
  const compensate = async (ctx: Ctx) => {
    await handler(world, ctx, 'compensate');
    const undone = world.undone.get(ctx.workflowId) ?? [];
    undone.push(ctx.stepName);
    world.undone.set(ctx.workflowId, undone);
  };
  const once = { retry: { maximumAttempts: 1 } };
  return [
    defineWorkflow({ name: 'race_one', input, steps: { only: step({ ...once, run }) } }),
    defineWorkflow({ name: 'race_retry', input, steps: { only: step({ retry: { maximumAttempts: 3 }, run }) } }),
    defineWorkflow({ name: 'race_two', input, steps: { one: step({ ...once, run, compensate }), two: step({ ...once, run, compensate }) } }),
    defineWorkflow({
      name: 'race_saga',
      input,
      onFailure: 'rollback',
      steps: { one: step({ ...once, run, compensate }), two: step({ ...once, run, compensate }) },
    }),
    defineWorkflow({
      name: 'race_callback',
      input,
      steps: {
        vendor: step({
          retry: { maximumAttempts: 2, initialIntervalMs: 1000, jitter: 0 },
          run: async (ctx) => {
            const minted = world.tokens.get(ctx.workflowId) ?? [];
            minted.push(ctx.callbackToken);
            world.tokens.set(ctx.workflowId, minted);
            if ((await handler(world, ctx, 'run')) === 'fail') throw new Error('vendor refused');
            return ctx.waitForCallback<{ account: string }>({ timeoutMs: 60_000 });
          },
        }),
        after: step({ ...once, run }),
      },
    }),
  ];
}

const statusOf = (s: StoredWorkflow, name: string) => s.steps.find((x) => x.name === name)?.status;
const stepRows = (s: StoredWorkflow, name: string, to: string) => s.history.filter((h) => h.kind === 'step' && h.stepName === name && h.to === to).length;
const workflowRows = (s: StoredWorkflow, to: string) => s.history.filter((h) => h.kind === 'workflow' && h.to === to).length;
const adminRows = (s: StoredWorkflow, action: string) => s.history.filter((h) => h.kind === 'admin' && h.action === action).length;

/** A tick that runs into a gated handler: resolves once the handler has started, with the tick still going. */
async function tickUntilStarted(rig: Rig, started: Promise<void>): Promise<{ ticking: Promise<number> }> {
  const ticking = rig.engine.tick();
  let done = false;
  void ticking.then(
    () => (done = true),
    () => (done = true),
  );
  await Promise.race([started, ticking]);
  if (done) throw new Error('the tick ended before the gated handler started');
  // Wrapped: an async function returning the promise itself would wait for it.
  return { ticking };
}

/**
 * Runs `stepName` of workflow `id` up to its gate, then races the worker
 * finishing it with `outcome` against `other` (an admin call or a callback),
 * in the iteration's order. Resolves to what `other` settled with.
 */
async function raceGatedStep<A>(
  { rig, world, order, random }: { rig: Rig; world: World; order: Order; random: () => number },
  id: string,
  stepName: string,
  outcome: 'ok' | 'fail',
  other: () => Promise<A>,
) {
  const g = gateNext(world, id, stepName);
  const { ticking } = await tickUntilStarted(rig, g.started.promise);
  return race(
    order,
    rig.store,
    random,
    async () => {
      g.gate.resolve(outcome);
      await ticking;
    },
    other,
  );
}

/** Checks common to every iteration: handlers, history, rows. */
async function expectLegal(rig: Rig, world: World, ids: string[], label: string): Promise<void> {
  await rig.quiesce();
  expect(world.problems, label).toEqual([]);
  expect(await rig.violations(ids), label).toEqual([]);
}

interface Case {
  name: string;
  fault: string;
  quick: number;
  body: (ctx: { rig: Rig; world: World; order: Order; random: () => number; i: number; label: string }) => Promise<void>;
}

const cases: Case[] = [
  {
    name: 'force-complete vs the worker finishing the last step: one of them completes the workflow, the other is refused',
    fault: 'force-complete while the worker finishes the same step',
    quick: 12,
    async body({ rig, world, order, random, label }) {
      const { id } = await rig.engine.start('race_one', { tenantId: 't1', input: { n: 1 } });
      const admin = await raceGatedStep({ rig, world, order, random }, id, 'only', 'ok', () => rig.engine.forceComplete(id, { actor: 'ops' }));
      await rig.quiesce();
      const s = await rig.read(id);
      const code = codeOf(admin);
      if (order === 'worker_first') expect(code, label).toBe('conflict');
      if (order === 'admin_first') expect(code, label).toBe('ok');
      expect(['ok', 'conflict'], label).toContain(code);
      // Exactly one transition completed the workflow.
      expect(workflowRows(s, 'completed'), label).toBe(1);
      expect(s.workflow.status, label).toBe('completed');
      if (code === 'ok') {
        // The admin won: the step is skipped and the handler's late result was discarded.
        expect({ status: statusOf(s, 'only'), completions: stepRows(s, 'only', 'completed'), output: s.steps[0]!.output }, label).toEqual({
          status: 'skipped',
          completions: 0,
          output: null,
        });
      } else {
        // The worker won: the step completed once; the refused force-complete wrote nothing.
        expect({ status: statusOf(s, 'only'), completions: stepRows(s, 'only', 'completed'), admin: adminRows(s, 'force_complete') }, label).toEqual({
          status: 'completed',
          completions: 1,
          admin: 0,
        });
      }
      await expectLegal(rig, world, [id], label);
    },
  },
  {
    name: 'retry-step vs the worker failing the step on its last attempt: retried only once it is failed, else a conflict',
    fault: 'retry-step while the worker fails the same step',
    quick: 12,
    async body({ rig, world, order, random, label }) {
      const { id } = await rig.engine.start('race_one', { tenantId: 't1', input: { n: 1 } });
      const admin = await raceGatedStep({ rig, world, order, random }, id, 'only', 'fail', () => rig.engine.retryStep(id, 'only', { actor: 'ops' }));
      await rig.quiesce();
      const code = codeOf(admin);
      if (order === 'worker_first') expect(code, label).toBe('ok');
      if (order === 'admin_first') expect(code, label).toBe('conflict');
      expect(['ok', 'conflict'], label).toContain(code);
      let s = await rig.read(id);
      expect(stepRows(s, 'only', 'failed'), label).toBe(1);
      if (code === 'ok') {
        expect({ status: statusOf(s, 'only'), workflow: s.workflow.status, retries: adminRows(s, 'retry_step') }, label).toEqual({
          status: 'pending',
          workflow: 'running',
          retries: 1,
        });
      } else {
        // The step was still running: a conflict, and nothing written.
        expect({ status: statusOf(s, 'only'), workflow: s.workflow.status, retries: adminRows(s, 'retry_step') }, label).toEqual({
          status: 'failed',
          workflow: 'failed',
          retries: 0,
        });
        await rig.engine.retryStep(id, 'only');
      }
      await rig.engine.drain();
      s = await rig.read(id);
      expect({ workflow: s.workflow.status, completions: stepRows(s, 'only', 'completed') }, label).toEqual({ workflow: 'completed', completions: 1 });
      await expectLegal(rig, world, [id], label);
    },
  },
  {
    name: 'rollback vs the worker finishing the last step: compensations match what completed, in reverse order, once each',
    fault: 'rollback while the worker finishes the same step',
    quick: 12,
    async body({ rig, world, order, random, label }) {
      const { id } = await rig.engine.start('race_two', { tenantId: 't1', input: { n: 1 } });
      await rig.engine.tick();
      const admin = await raceGatedStep({ rig, world, order, random }, id, 'two', 'ok', () => rig.engine.rollback(id, { actor: 'ops' }));
      // Both orders are allowed (rollback is allowed from running and from completed): the admin always succeeds.
      expect(codeOf(admin), label).toBe('ok');
      await rig.engine.drain();
      const s = await rig.read(id);
      const twoCompleted = stepRows(s, 'two', 'completed') === 1;
      if (order === 'worker_first') expect(twoCompleted, label).toBe(true);
      if (order === 'admin_first') expect(twoCompleted, label).toBe(false);
      expect(s.workflow.status, label).toBe('rolled_back');
      // What completed is undone, latest first, once; a step skipped mid-run is not compensated.
      expect(world.undone.get(id), label).toEqual(twoCompleted ? ['two', 'one'] : ['one']);
      expect(statusOf(s, 'two'), label).toBe(twoCompleted ? 'compensated' : 'skipped');
      await expectLegal(rig, world, [id], label);
    },
  },
  {
    name: "rollback vs the worker failing the last step of an onFailure 'rollback' workflow: one rollback, the other refused",
    fault: 'rollback while the worker fails the same step (automatic rollback)',
    quick: 12,
    async body({ rig, world, order, random, label }) {
      const { id } = await rig.engine.start('race_saga', { tenantId: 't1', input: { n: 1 } });
      await rig.engine.tick();
      const admin = await raceGatedStep({ rig, world, order, random }, id, 'two', 'fail', () => rig.engine.rollback(id, { actor: 'ops' }));
      const code = codeOf(admin);
      if (order === 'worker_first') expect(code, label).toBe('conflict');
      if (order === 'admin_first') expect(code, label).toBe('ok');
      expect(['ok', 'conflict'], label).toContain(code);
      await rig.engine.drain();
      const s = await rig.read(id);
      // One rollback began (the worker's automatic one, or the operator's), never two.
      expect(adminRows(s, 'rollback'), label).toBe(1);
      expect(workflowRows(s, 'rolling_back'), label).toBe(1);
      expect(s.history.find((h) => h.kind === 'admin')?.actor, label).toBe(code === 'ok' ? 'ops' : 'sagaline');
      expect(statusOf(s, 'two'), label).toBe(code === 'ok' ? 'skipped' : 'failed');
      expect(s.workflow.status, label).toBe('rolled_back');
      expect(world.undone.get(id), label).toEqual(['one']);
      await expectLegal(rig, world, [id], label);
    },
  },
  {
    name: 'admin operations while a compensation runs: all refused, and each compensation is recorded once',
    fault: 'force-complete / retry-step / rollback during a running compensation',
    quick: 9,
    async body({ rig, world, order, random, label }) {
      const { id } = await rig.engine.start('race_two', { tenantId: 't1', input: { n: 1 } });
      await rig.engine.drain();
      await rig.engine.rollback(id);
      // Gate the compensation of `two` (compensations wait at their gate too).
      const started = deferred<void>();
      const gate = deferred<void>();
      const original = rig.store.delay;
      let seen = false;
      rig.store.delay = async (point) => {
        // Hold the compensation's result write until the admin calls have been made.
        if (point === 'transact' && !seen && world.calls.includes(`${id}:two:compensate#1`)) {
          seen = true;
          started.resolve();
          await gate.promise;
        }
      };
      const ticking = rig.engine.tick();
      await started.promise;
      rig.store.delay = original;
      const ops = [() => rig.engine.forceComplete(id), () => rig.engine.retryStep(id, 'two'), () => rig.engine.rollback(id)];
      const before = JSON.stringify(await rig.read(id));
      for (const op of ops) {
        const result = await race(
          order === 'worker_first' ? 'admin_first' : order,
          rig.store,
          random,
          async () => {},
          op,
        );
        expect(codeOf(result), label).toBe('conflict');
      }
      expect(JSON.stringify(await rig.read(id)), `${label}: the refused operations wrote nothing`).toBe(before);
      gate.resolve();
      await ticking;
      await rig.engine.drain();
      const s = await rig.read(id);
      expect(s.workflow.status, label).toBe('rolled_back');
      expect(world.undone.get(id), label).toEqual(['two', 'one']);
      expect(stepRows(s, 'two', 'compensated') + stepRows(s, 'one', 'compensated'), label).toBe(2);
      await expectLegal(rig, world, [id], label);
    },
  },
  {
    name: "a stalled worker's late result never overwrites the attempt that reclaimed its step",
    fault: 'late result of a worker whose lease expired, racing the new attempt',
    quick: 9,
    async body({ rig, world, order, random, i, label }) {
      // Its clock never moves: no heartbeat, as if the process froze mid-step.
      const stalled = rig.otherEngine({ workerId: `stalled_${i}`, clock: createManualClock(rig.clock.now()) });
      const { id } = await rig.engine.start('race_retry', { tenantId: 't1', input: { n: 1 } });
      const first = gateNext(world, id, 'only');
      const stalledTick = stalled.tick();
      await first.started.promise;
      rig.clock.advance(31_000);
      const second = gateNext(world, id, 'only');
      const { ticking } = await tickUntilStarted(rig, second.started.promise);
      // "worker" is the stalled attempt finishing late; "admin" is the attempt that reclaimed the step.
      await race(
        order,
        rig.store,
        random,
        async () => {
          first.gate.resolve('ok');
          await stalledTick;
        },
        async () => {
          second.gate.resolve('ok');
          await ticking;
        },
      );
      await rig.quiesce();
      const s = await rig.read(id);
      expect({ status: statusOf(s, 'only'), output: s.steps[0]!.output, completions: stepRows(s, 'only', 'completed') }, label).toEqual({
        status: 'completed',
        output: { step: 'only', attempt: 2 },
        completions: 1,
      });
      expect(s.history.filter((h) => h.action === 'lease_reclaimed').length, label).toBe(1);
      await expectLegal(rig, world, [id], label);
    },
  },
  {
    name: 'two workers claim at once: every step runs exactly once',
    fault: 'two engines tick the same store concurrently',
    quick: 9,
    async body({ rig, world, random, label }) {
      const other = rig.otherEngine({ workerId: 'worker_b' });
      const ids: string[] = [];
      for (let n = 0; n < 4; n++) ids.push((await rig.engine.start(n % 2 === 0 ? 'race_two' : 'race_one', { tenantId: 't1', input: { n } })).id);
      const stop = shuffleStoreCalls(rig.store, random);
      try {
        const drainA = (async () => {
          for (let k = 0; k < 20 && (await rig.engine.tick()) > 0; k++) await turns(Math.floor(random() * 3));
        })();
        const drainB = (async () => {
          for (let k = 0; k < 20 && (await other.tick()) > 0; k++) await turns(Math.floor(random() * 3));
        })();
        await Promise.all([drainA, drainB]);
      } finally {
        stop();
      }
      await rig.engine.drain();
      for (const id of ids) {
        const s = await rig.read(id);
        expect(s.workflow.status, label).toBe('completed');
        for (const st of s.steps) {
          // Never handed to both workers: one run, one attempt.
          expect(world.calls.filter((c) => c.startsWith(`${id}:${st.name}:run`)), `${label} ${st.name}`).toEqual([`${id}:${st.name}:run#1`]);
          expect(st.attempts, label).toBe(1);
        }
      }
      await expectLegal(rig, world, ids, label);
    },
  },
  {
    name: 'duplicate callbacks at once: exactly one is accepted, the other refused, one transition',
    fault: 'the same callback delivered twice concurrently',
    quick: 12,
    async body({ rig, world, order, random, label }) {
      const { id } = await rig.engine.start('race_callback', { tenantId: 't1', input: { n: 1 } });
      await rig.engine.drain();
      const token = world.tokens.get(id)![0]!;
      if (order === 'random') {
        shuffleStoreCalls(rig.store, random);
      } else {
        // Both check the token before either applies it (the fixed order puts one check first).
        const base = rig.store.count('getSteps');
        rig.store.delay = async (point) => {
          for (let k = 0; point === 'transact' && k < 10_000; k++) {
            if (rig.store.count('getSteps') >= base + 2 && rig.store.inFlightOf('getSteps') === 0) return;
            await turns(1);
          }
        };
      }
      let results: Awaited<ReturnType<typeof settle>>[];
      try {
        results = await Promise.all([
          settle(rig.engine.completeCallback(token, { status: 'success', output: { account: 'acc_1' } })),
          settle(rig.engine.completeCallback(token, { status: 'success', output: { account: 'acc_2' } })),
        ]);
      } finally {
        rig.store.delay = null;
      }
      const accepted = results.filter((r) => r.ok);
      expect(accepted.length, label).toBe(1);
      const refused = results.find((r) => !r.ok)!;
      expect(refused.ok ? null : { code: (refused.error as { code: string }).code, message: (refused.error as Error).message }, label).toEqual(REFUSED);
      const s = await rig.read(id);
      expect(stepRows(s, 'vendor', 'completed'), label).toBe(1);
      expect(s.history.filter((h) => h.action === 'callback_received').length, label).toBe(1);
      // A third, later delivery is refused too.
      await expect(rig.engine.completeCallback(token, { status: 'success' })).rejects.toMatchObject(REFUSED);
      await rig.engine.drain();
      expect((await rig.read(id)).workflow.status, label).toBe('completed');
      await expectLegal(rig, world, [id], label);
    },
  },
  {
    name: "a callback with an earlier attempt's token is refused; the current one is accepted",
    fault: "callback with the previous attempt's token",
    quick: 6,
    async body({ rig, world, label }) {
      const { id } = await rig.engine.start('race_callback', { tenantId: 't1', input: { n: 1 } });
      await rig.engine.drain();
      const [first] = world.tokens.get(id)!;
      await rig.engine.completeCallback(first!, { status: 'failed', error: 'try again' });
      rig.clock.advance(1000);
      await rig.engine.drain();
      const [, second] = world.tokens.get(id)!;
      expect(second, label).toBeDefined();
      const before = JSON.stringify(await rig.read(id));
      await expect(rig.engine.completeCallback(first!, { status: 'success' }), label).rejects.toMatchObject(REFUSED);
      expect(JSON.stringify(await rig.read(id)), `${label}: the refused callback wrote nothing`).toBe(before);
      await rig.engine.completeCallback(second!, { status: 'success', output: { account: 'acc_2' } });
      await rig.engine.drain();
      const s = await rig.read(id);
      expect({ status: s.workflow.status, output: s.steps[0]!.output, completions: stepRows(s, 'vendor', 'completed') }, label).toEqual({
        status: 'completed',
        output: { account: 'acc_2' },
        completions: 1,
      });
      await expectLegal(rig, world, [id], label);
    },
  },
  {
    name: "a callback racing the handler's return is never lost",
    fault: "callback racing the handler's return",
    quick: 12,
    async body({ rig, world, order, random, label }) {
      const { id } = await rig.engine.start('race_callback', { tenantId: 't1', input: { n: 1 } });
      // "admin" here is the vendor's callback; "worker" is the handler returning waitForCallback().
      // The token is read when the callback is sent: the step has started, so its handler has recorded it.
      const callback = await raceGatedStep({ rig, world, order, random }, id, 'vendor', 'ok', () =>
        rig.engine.completeCallback(world.tokens.get(id)![0]!, { status: 'success', output: { account: 'acc_1' } }),
      );
      expect(codeOf(callback), label).toBe('ok');
      await rig.quiesce();
      const s = await rig.read(id);
      expect({ status: statusOf(s, 'vendor'), output: s.steps[0]!.output }, `${label}: the accepted callback was applied`).toEqual({
        status: 'completed',
        output: { account: 'acc_1' },
      });
      await rig.engine.drain();
      expect((await rig.read(id)).workflow.status, label).toBe('completed');
      await expectLegal(rig, world, [id], label);
    },
  },
  {
    name: 'a callback racing force-complete: the step either completes or is skipped, and the loser is refused',
    fault: 'callback racing force-complete on the waiting step',
    quick: 12,
    async body({ rig, world, order, random, label }) {
      const { id } = await rig.engine.start('race_callback', { tenantId: 't1', input: { n: 1 } });
      await rig.engine.drain();
      const token = world.tokens.get(id)![0]!;
      let callback: Awaited<ReturnType<typeof settle>> | undefined;
      const admin = await race(
        order,
        rig.store,
        random,
        async () => {
          callback = await settle(rig.engine.completeCallback(token, { status: 'success', output: { account: 'acc_1' } }));
        },
        () => rig.engine.forceComplete(id),
      );
      await rig.quiesce();
      const s = await rig.read(id);
      // Force-complete is allowed from running either way; the callback only if it came first.
      expect(codeOf(admin), label).toBe('ok');
      const vendor = statusOf(s, 'vendor');
      if (order === 'worker_first') expect(vendor, label).toBe('completed');
      if (order === 'admin_first') expect(vendor, label).toBe('skipped');
      if (vendor === 'completed') {
        expect(codeOf(callback!), label).toBe('ok');
        expect(s.steps[0]!.output, label).toEqual({ account: 'acc_1' });
      } else {
        expect(vendor, label).toBe('skipped');
        expect(callback!.ok ? null : { code: (callback!.error as { code: string }).code, message: (callback!.error as Error).message }, label).toEqual(REFUSED);
      }
      expect(stepRows(s, 'vendor', 'completed') + stepRows(s, 'vendor', 'skipped'), `${label}: one transition of the step`).toBe(1);
      expect(s.workflow.status, label).toBe('completed');
      await expectLegal(rig, world, [id], label);
    },
  },
];

const stores = reliabilityStores();
/** Database stores cost more per iteration. */
const quickScale = { memory: 1, sqlite: 1, postgres: 0.34 } as const;

describe.each(stores)('admin and callback races on $name store', (factory) => {
  it.each(cases)(
    '$name',
    async (c) => {
      const count = iterations(Math.max(3, Math.round(c.quick * quickScale[factory.name])), factory.name === 'postgres' ? 0.3 : 1);
      await reportedCase({ suite: SUITE, fault: c.fault, stores: [factory.name] }, async (tally) => {
        const world = newWorld();
        const rig = await createRig(factory, definitions(world), { engine: { shutdownTimeoutMs: 0 } });
        world.rig = rig;
        try {
          await loop(count, tally, async (i) => {
            const order = orderOf(i);
            const seed = 1000 + i;
            await c.body({ rig, world, order, random: seededRandom(seed), i, label: `iteration ${i} (${order}, seed ${seed})` });
            rig.store.delay = null;
          });
        } finally {
          for (const g of world.gates.values()) g.gate.resolve('ok');
          await rig.close();
        }
      });
    },
    caseTimeoutMs(),
  );

  it('a callback accepted while its handler runs survives the handler losing its lease', async () => {
    // The handler's worker stalls (its clock is frozen, so no heartbeat) after the vendor has called back;
    // its lease expires and another worker re-runs the step. The accepted callback must still be applied.
    await reportedCase({ suite: SUITE, fault: 'callback accepted, then the handler loses its lease and the step is reclaimed', stores: [factory.name] }, async (tally) => {
      const world = newWorld();
      const rig = await createRig(factory, definitions(world), { engine: { shutdownTimeoutMs: 0 } });
      world.rig = rig;
      try {
        await loop(1, tally, async () => {
          const stalled = rig.otherEngine({ workerId: 'stalled', clock: createManualClock() });
          const { id } = await rig.engine.start('race_callback', { tenantId: 't1', input: { n: 1 } });
          const g = gateNext(world, id, 'vendor');
          const ticking = stalled.tick();
          await g.started.promise;
          const [first] = world.tokens.get(id)!;
          await rig.engine.completeCallback(first!, { status: 'success', output: { account: 'acc_1' } });
          // The callback was accepted: from here on the vendor will not call again.
          rig.clock.advance(31_000);
          await rig.engine.drain();
          g.gate.resolve('ok');
          await ticking;
          await rig.engine.drain();
          const s = await rig.read(id);
          expect(
            { vendor: statusOf(s, 'vendor'), output: s.steps[0]!.output },
            `the accepted callback was dropped by the reclaim (${world.tokens.get(id)!.length} tokens minted)`,
          ).toEqual({ vendor: 'completed', output: { account: 'acc_1' } });
          await expectLegal(rig, world, [id], 'after the reclaim');
        });
      } finally {
        for (const g of world.gates.values()) g.gate.resolve('ok');
        await rig.close();
      }
    });
  });
});
