/**
 * Database faults, in process (issue item 7): a store wrapper fails the N-th
 * call of each store method (and of each write inside a transaction, and a
 * transaction's commit), with N swept over every call the scenario makes.
 *
 * The scenario starts a forward workflow (plain step, a step long enough to
 * heartbeat, a callback step, a poll step) and a saga that fails and rolls
 * itself back, and drives them as a host would: start with an idempotency
 * key (retried on error), drain, deliver the callback, advance the clock.
 *
 * Checked after every round and at the end:
 * - no transaction is half-written: a failed transaction leaves the workflow
 *   byte-for-byte as it was, and every stored state passes the status rules
 *   of `support/invariants.ts` (history replays to the stored statuses, retry
 *   counts add up, finished steps hold no lease);
 * - the engine surfaces each fault to its caller, or logs it and retries: a
 *   fault never disappears, and no other error (an illegal transition, a
 *   stale lease) ever reaches the host;
 * - no step handler runs once its completion is recorded, and no
 *   compensation runs once it is recorded (checked when the handler starts);
 * - afterwards, with the fault gone, both workflows finish (completed, and
 *   rolled back in reverse completion order), with one workflow per
 *   idempotency key.
 */
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { defineWorkflow, step, type WorkflowDefinition } from '../../src/core/define-workflow.js';
import { NonRetryableError } from '../../src/errors.js';
import { FaultyStore, InjectedFault, isInjectedFault, STORE_METHODS, TX_POINTS, type FaultPoint, type FaultTiming } from './support/faulty-store.js';
import { caseTimeoutMs, iterations, loop, perStore, reliabilityStores } from './support/iterations.js';
import { reportedCase } from './support/report.js';
import { createRig, type Rig } from './support/rig.js';

const SUITE = 'store-faults';
const input = z.object({ plan: z.string() });
const retry = { maximumAttempts: 4, initialIntervalMs: 1000, backoffCoefficient: 1, jitter: 0 };

/** What the handlers saw; filled while a scenario runs. */
interface World {
  rig: Rig | null;
  /** Latest callback token of each workflow's `vendor` step. */
  tokens: Map<string, string>;
  /** Rule violations seen by handlers when they started. */
  problems: string[];
}

type Kind = 'run' | 'poll' | 'compensate';

/** Checks, when a handler starts, that its step may run now. */
async function onInvoke(world: World, ctx: { workflowId: string; stepName: string; idempotencyKey: string }, kind: Kind): Promise<void> {
  const rig = world.rig!;
  const key = kind === 'compensate' ? `${ctx.workflowId}:${ctx.stepName}:compensate` : `${ctx.workflowId}:${ctx.stepName}`;
  if (ctx.idempotencyKey !== key) world.problems.push(`${kind} ${key}: idempotency key ${ctx.idempotencyKey}`);
  const stored = await rig.read(ctx.workflowId);
  const s = stored.steps.find((x) => x.name === ctx.stepName);
  const completedBefore = stored.history.some((h) => h.kind === 'step' && h.stepName === ctx.stepName && h.to === 'completed');
  if (kind === 'run') {
    // Double execution: the step's completion is already recorded.
    if (completedBefore) world.problems.push(`run ${key}: the step already completed`);
    // Read just after the handler started: a concurrent rollback may have skipped it meanwhile.
    if (s?.status !== 'running' && s?.status !== 'skipped') world.problems.push(`run ${key}: the step is ${s?.status}`);
  } else if (kind === 'poll') {
    if (s?.status !== 'waiting_poll' && s?.status !== 'skipped') world.problems.push(`poll ${key}: the step is ${s?.status}`);
  } else {
    // A compensation recorded as done never runs again, and none runs while a later-completed step is still in place.
    if (s?.status !== 'compensating') world.problems.push(`compensate ${key}: the step is ${s?.status}`);
    const undo = rig.compensable(stored.workflow.type);
    const later = stored.steps.filter((o) => o.status === 'completed' && undo.has(o.name) && (o.completionSeq ?? 0) > (s?.completionSeq ?? 0));
    if (later.length > 0) world.problems.push(`compensate ${key}: ${later.map((o) => o.name).join(', ')} completed later and is still in place`);
  }
}

function definitions(world: World): WorkflowDefinition<any, any>[] {
  const forward = defineWorkflow({
    name: 'fault_forward',
    input,
    steps: {
      db: step({
        retry,
        run: async (ctx) => {
          await onInvoke(world, ctx, 'run');
          return { db: 'db_1' };
        },
        compensate: async (ctx) => onInvoke(world, ctx, 'compensate'),
      }),
      slow: step({
        dependsOn: ['db'],
        retry,
        run: async (ctx) => {
          await onInvoke(world, ctx, 'run');
          // Long enough for two heartbeats (every leaseMs / 3): extendLease is called while the handler runs.
          // Settling first lets the sibling handler finish, so that only this step's heartbeat fires.
          for (let i = 0; i < 2; i++) {
            await world.rig!.quiesce();
            world.rig!.clock.advance(11_000);
          }
          await world.rig!.quiesce();
          return 'slow';
        },
      }),
      vendor: step({
        dependsOn: ['db'],
        retry,
        run: async (ctx) => {
          await onInvoke(world, ctx, 'run');
          world.tokens.set(ctx.workflowId, ctx.callbackToken);
          return ctx.waitForCallback<{ account: string }>({ timeoutMs: 3_600_000 });
        },
      }),
      cert: step({
        dependsOn: ['vendor', 'slow'],
        retry,
        pollIntervalMs: 1000,
        pollTimeoutMs: 3_600_000,
        run: async (ctx) => {
          await onInvoke(world, ctx, 'run');
          return { order: 'ord_1' };
        },
        poll: async (ctx) => {
          await onInvoke(world, ctx, 'poll');
          return ctx.pollCount >= 1 ? { done: true as const, output: 'pem' } : { done: false as const };
        },
      }),
    },
  });
  const undoable = (name: string) =>
    step({
      retry,
      compensationRetry: retry,
      run: async (ctx) => {
        await onInvoke(world, ctx, 'run');
        return name;
      },
      compensate: async (ctx) => onInvoke(world, ctx, 'compensate'),
    });
  const saga = defineWorkflow({
    name: 'fault_saga',
    input,
    onFailure: 'rollback',
    steps: {
      one: undoable('one'),
      two: undoable('two'),
      three: undoable('three'),
      boom: step({
        retry: { maximumAttempts: 1 },
        run: async (ctx) => {
          await onInvoke(world, ctx, 'run');
          throw new NonRetryableError('the vendor refused');
        },
      }),
    },
  });
  return [forward, saga];
}

const KEYS = [
  ['key_forward', 'fault_forward'],
  ['key_saga', 'fault_saga'],
] as const;

interface Outcome {
  /** Errors the engine's API calls rejected with, as the host saw them. */
  surfaced: unknown[];
  ids: string[];
  rounds: number;
}

/**
 * Drives both workflows to their end as a host would, checking the stored
 * state after every round. `during(round)` may change the faults.
 */
async function drive(rig: Rig, world: World, during: (round: number) => void = () => {}): Promise<Outcome> {
  const { engine } = rig;
  const surfaced: unknown[] = [];
  const attempt = async <T,>(fn: () => Promise<T>): Promise<T | undefined> => {
    try {
      return await fn();
    } catch (err) {
      surfaced.push(err);
      return undefined;
    }
  };
  const ids: string[] = [];
  for (const [key, type] of KEYS) {
    let id: string | undefined;
    for (let i = 0; i < 10 && id === undefined; i++) {
      id = (await attempt(() => engine.start(type, { tenantId: 't1', input: { plan: 'pro' }, idempotencyKey: key })))?.id;
    }
    if (id === undefined) throw new Error(`could not start ${type} in 10 tries: ${String(surfaced.at(-1))}`);
    ids.push(id);
  }
  let round = 0;
  for (; round < 80; round++) {
    during(round);
    await attempt(() => engine.drain());
    await rig.quiesce();
    // A half-written state would show here, after every round.
    const found = await rig.violations(ids, { live: true });
    expect(found, `round ${round}`).toEqual([]);
    const forward = await rig.read(ids[0]!);
    const saga = await rig.read(ids[1]!);
    const vendor = forward.steps.find((s) => s.name === 'vendor')!;
    const token = world.tokens.get(ids[0]!);
    if (vendor.status === 'waiting_callback' && token !== undefined) {
      await attempt(() => engine.completeCallback(token, { status: 'success', output: { account: 'acc_1' } }));
      await rig.quiesce();
    }
    if (forward.workflow.status === 'completed' && saga.workflow.status === 'rolled_back' && !rig.store.down) break;
    // Every fifth round moves past the lease, so that a step whose result was lost is reclaimed.
    rig.clock.advance(round % 5 === 4 ? 31_000 : 1_000);
  }
  await attempt(() => engine.list({ tenantId: 't1' }));
  await attempt(() => engine.get(ids[0]!));
  return { surfaced, ids, rounds: round };
}

/** The end state every run must reach, whatever failed on the way. */
async function expectFinished(rig: Rig, world: World, outcome: Outcome, context: string): Promise<void> {
  const { ids, surfaced } = outcome;
  expect(world.problems, context).toEqual([]);
  expect(rig.store.atomicityViolations, context).toEqual([]);
  expect(await rig.violations(ids, { live: true }), context).toEqual([]);
  const forward = await rig.read(ids[0]!);
  const saga = await rig.read(ids[1]!);
  expect(forward.workflow.status, `${context}: forward workflow`).toBe('completed');
  expect(Object.fromEntries(forward.steps.map((s) => [s.name, s.status])), context).toEqual({
    db: 'completed',
    slow: 'completed',
    vendor: 'completed',
    cert: 'completed',
  });
  expect(forward.steps.find((s) => s.name === 'vendor')?.output, context).toEqual({ account: 'acc_1' });
  expect(saga.workflow.status, `${context}: saga`).toBe('rolled_back');
  const undone = saga.history.filter((h) => h.kind === 'step' && h.to === 'compensated').map((h) => h.stepName);
  expect(undone, `${context}: compensations in reverse completion order, once each`).toEqual(['three', 'two', 'one']);
  // One workflow per idempotency key, however often start() was retried.
  const all = await rig.inner.listWorkflows({ tenantId: 't1', limit: 100 });
  expect(all.map((w) => w.idempotencyKey).sort(), context).toEqual(KEYS.map(([k]) => k).sort());
  // The host only ever sees the injected faults: never an illegal transition, a stale lease or a type error.
  for (const err of surfaced) {
    expect(err, `${context}: surfaced error ${String(err)}`).toBeInstanceOf(InjectedFault);
    expect(rig.store.fired, context).toContain(err);
  }
  // A fault the host did not see was logged: the engine never swallows one silently.
  for (const fault of rig.store.fired) {
    if (surfaced.includes(fault)) continue;
    const logged = rig.logger.lines.some((l) => (l.level === 'error' || l.level === 'warn') && JSON.stringify(l.context ?? {}).includes(fault.message));
    expect(logged, `${context}: ${fault.message} was neither surfaced nor logged`).toBe(true);
  }
}

async function runScenario(
  factory: Parameters<typeof createRig>[0],
  setup: (store: FaultyStore) => void,
  during?: (round: number, store: FaultyStore) => void,
): Promise<{ rig: Rig; world: World; outcome: Outcome }> {
  const world: World = { rig: null, tokens: new Map(), problems: [] };
  const rig = await createRig(factory, definitions(world), { checkAtomicity: true });
  world.rig = rig;
  setup(rig.store);
  try {
    const outcome = await drive(rig, world, (round) => during?.(round, rig.store));
    return { rig, world, outcome };
  } catch (err) {
    await rig.close();
    throw err;
  }
}

/** Up to `k` values of 1 … `count`, spread evenly: the first, and (for k > 1) the last. */
function spread(count: number, k: number): number[] {
  if (count <= k) return Array.from({ length: count }, (_, i) => i + 1);
  if (k <= 1) return [1];
  const out = new Set<number>();
  for (let i = 0; i < k; i++) out.add(1 + Math.round((i * (count - 1)) / (k - 1)));
  return [...out];
}

const stores = reliabilityStores();
const POINTS: FaultPoint[] = [...STORE_METHODS, ...TX_POINTS];

describe.each(stores)('store faults on $name store', (factory) => {
  /** Calls per point in a fault-free run of the scenario. */
  let calibration: Map<FaultPoint, number> | undefined;
  const calls = async (): Promise<Map<FaultPoint, number>> => {
    if (calibration) return calibration;
    const { rig, world, outcome } = await runScenario(factory, () => {});
    try {
      await expectFinished(rig, world, outcome, 'without faults');
      calibration = new Map(rig.store.calls);
      return calibration;
    } finally {
      await rig.close();
    }
  };

  it.each(POINTS)(
    'fails the N-th %s call, for N swept over every call of the scenario',
    async (point) => {
      const counts = await calls();
      const total = counts.get(point) ?? 0;
      const timings: FaultTiming[] = point.startsWith('tx.') ? ['before'] : ['before', 'after'];
      if (total === 0) {
        // Not called by tick()/drain(): nextDueAt serves hosts that schedule their own wake-ups, and
        // subscribe is called by startWorker() (see the worker case below) on stores that offer it.
        expect(['nextDueAt', 'subscribe']).toContain(point);
        return;
      }
      const ns = spread(total, iterations(perStore(factory.name, { memory: 3, sqlite: 2, postgres: 1 })));
      const cases = timings.flatMap((timing) => ns.map((nth) => ({ timing, nth })));
      await reportedCase(
        { suite: SUITE, fault: `the N-th ${point} call fails (${timings.join(' / ')} the store acts; N over ${ns.length} of ${total} calls)`, stores: [factory.name] },
        async (tally) => {
          let fired = 0;
          await loop(cases.length, tally, async (i) => {
            const { timing, nth } = cases[i]!;
            const context = `${point} #${nth} (${timing})`;
            const { rig, world, outcome } = await runScenario(factory, (store) => store.arm({ point, nth, timing }));
            try {
              // Heartbeats (extendLease) follow I/O timing on a real database: a run may make fewer of
              // them than the calibration run did. Then the fault was never reached, which is not a pass.
              const reached = (rig.store.calls.get(point) ?? 0) >= nth;
              if (point === 'extendLease' && !reached) {
                expect(rig.store.fired, context).toEqual([]);
              } else {
                // The same calls happen up to the fault, so it fires exactly where it was aimed.
                expect(rig.store.fired.map((f) => f.message), context).toEqual([new InjectedFault(point, nth, timing).message]);
                fired++;
              }
              await expectFinished(rig, world, outcome, context);
            } finally {
              await rig.close();
            }
          });
          expect(fired, `${point}: no armed fault was reached`).toBeGreaterThan(0);
        },
      );
    },
    caseTimeoutMs(),
  );

  it(
    'survives an outage: every store call fails for several rounds, then the store comes back',
    async () => {
      const count = iterations(perStore(factory.name, { memory: 3, sqlite: 2, postgres: 1 }), 0.2);
      await reportedCase({ suite: SUITE, fault: 'store outage: every call fails for 1-4 rounds at a time', stores: [factory.name] }, async (tally) => {
        await loop(count, tally, async (i) => {
          // Down in rounds [start, start + length) and [start + 6, start + 6 + length), at varied points of the run.
          const start = i % 4;
          const length = 1 + (i % 4);
          const { rig, world, outcome } = await runScenario(
            factory,
            () => {},
            (round, store) => {
              store.down = (round >= start && round < start + length) || (round >= start + 6 && round < start + 6 + length);
            },
          );
          try {
            expect(rig.store.down).toBe(false);
            expect(outcome.surfaced.length, 'the outage was seen').toBeGreaterThan(0);
            await expectFinished(rig, world, outcome, `outage ${start}+${length}`);
          } finally {
            await rig.close();
          }
        });
      });
    },
    caseTimeoutMs(),
  );

  it(
    'the background worker keeps running through claim and write faults',
    async () => {
      await reportedCase({ suite: SUITE, fault: 'claimSteps and transact fail under startWorker()', stores: [factory.name] }, async (tally) => {
        await loop(iterations(perStore(factory.name, { memory: 2, sqlite: 2, postgres: 1 }), 0.1), tally, async (i) => {
          const world: World = { rig: null, tokens: new Map(), problems: [] };
          const defs = definitions(world);
          const rig = await createRig(factory, defs, { checkAtomicity: true, engine: { idlePollMs: 1 } });
          world.rig = rig;
          try {
            const { id } = await rig.engine.start('fault_saga', { tenantId: 't1', input: { plan: 'pro' } });
            // Within the first few calls, so that every fault fires before the saga is done.
            // A store with wake-ups is subscribed to first: that fails too, and the worker falls back to polling.
            if (rig.store.subscribe) rig.store.arm({ point: 'subscribe', nth: 1, timing: 'before' });
            rig.store.arm(
              { point: 'claimSteps', nth: 1 + (i % 3), timing: 'before' },
              { point: 'claimSteps', nth: 4 + (i % 3), timing: i % 2 === 0 ? 'before' : 'after' },
              { point: 'transact', nth: 1 + (i % 4), timing: 'before' },
            );
            rig.engine.startWorker();
            // The worker sleeps for real (idlePollMs, with backoff after a failure): wait for it, bounded.
            const deadline = Date.now() + 10_000;
            for (;;) {
              const stored = await rig.read(id);
              if (stored.workflow.status === 'rolled_back') break;
              if (Date.now() > deadline) throw new Error(`the worker did not finish the saga: ${stored.workflow.status}`);
              // A result lost to a failed write is retried once its lease expires.
              if (rig.store.pending().length === 0) rig.clock.advance(31_000);
              await new Promise((resolve) => setTimeout(resolve, 2));
            }
            await rig.engine.stop();
            expect(world.problems).toEqual([]);
            expect(rig.store.atomicityViolations).toEqual([]);
            expect(await rig.violations([id], { live: true })).toEqual([]);
            expect(rig.store.fired.length).toBe(rig.store.subscribe ? 4 : 3);
            expect(rig.logger.lines.some((l) => l.message === 'claiming due steps failed')).toBe(true);
            if (rig.store.subscribe) expect(rig.logger.lines.some((l) => l.message.startsWith('could not subscribe'))).toBe(true);
            expect(rig.store.fired.every((f) => isInjectedFault(f))).toBe(true);
          } finally {
            await rig.close();
          }
        });
      });
    },
    caseTimeoutMs(),
  );
});
