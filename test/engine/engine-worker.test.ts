import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { createManualClock } from '../../src/core/clock.js';
import { defineWorkflow, step } from '../../src/core/define-workflow.js';
import type { WorkflowStore } from '../../src/storage/workflow-store.js';
import { storeFactories } from '../support/store-factories.js';
import { deferred, until, useHarness } from '../fixtures/harness.js';

const input = z.object({ n: z.number() });

/** Counts the steps handed out by the store's claim, passing everything through. */
function countingStore(store: WorkflowStore): { store: WorkflowStore; claimed: () => number } {
  let claimed = 0;
  const wrapped = Object.create(store) as WorkflowStore;
  wrapped.claimSteps = async (request) => {
    const result = await store.claimSteps(request);
    claimed += result.length;
    return result;
  };
  return { store: wrapped, claimed: () => claimed };
}

/**
 * The store with wake-ups from other processes, sent by the test (as a Postgres
 * store's notifications would be), and the calls of its claim counted as they begin.
 */
function wakeableStore(store: WorkflowStore): { store: WorkflowStore; wake: () => void; claims: () => number } {
  let listener: (() => void) | null = null;
  let claims = 0;
  const wrapped = Object.create(store) as WorkflowStore;
  wrapped.subscribe = async (l) => {
    listener = l;
    return async () => {
      listener = null;
    };
  };
  wrapped.claimSteps = (request) => {
    claims++;
    return store.claimSteps(request);
  };
  return {
    store: wrapped,
    wake: () => {
      if (!listener) throw new Error('the worker has not subscribed');
      listener();
    },
    claims: () => claims,
  };
}

/** Lets pending callbacks and promise reactions run (no I/O lies between a wake-up and the claim's call). */
async function settle(): Promise<void> {
  for (let i = 0; i < 5; i++) await new Promise<void>((r) => setImmediate(r));
}

/** A workflow whose one step fails on its first attempt and is retried after `initialIntervalMs`; attempts counted by name. */
function failsOnce(name: string, initialIntervalMs: number, attempts: Map<string, number>) {
  return defineWorkflow({
    name,
    input,
    steps: {
      only: step({
        retry: { maximumAttempts: 3, initialIntervalMs, jitter: 0 },
        run: () => {
          const n = (attempts.get(name) ?? 0) + 1;
          attempts.set(name, n);
          if (n === 1) throw new Error('first attempt fails');
          return { n };
        },
      }),
    },
  });
}

describe.each(storeFactories)('background worker on $name store', (factory) => {
  const setup = useHarness(factory);

  it('runs workflows to completion with no claim: start() creates the first step claimed, each result claims the next', async () => {
    const ran: string[] = [];
    const wf = defineWorkflow({
      name: 'chain',
      input,
      steps: Object.fromEntries(['s1', 's2', 's3', 's4', 's5'].map((n) => [n, step({ run: (ctx) => (ran.push(`${ctx.input.n}:${n}`), { n }) })])),
    });
    const { store, clock, logger } = await setup([wf]);
    const counted = countingStore(store);
    const { createEngine } = await import('../../src/engine/workflow-engine.js');
    const engine = createEngine({ store: counted.store, workflows: [wf], clock, logger, idlePollMs: 5 });
    const completed: string[] = [];
    engine.events.on('workflow:completed', (e) => completed.push(e.workflowId));
    engine.startWorker();
    try {
      const ids: string[] = [];
      for (let i = 0; i < 3; i++) ids.push((await engine.start('chain', { tenantId: 't', input: { n: i } })).id);
      await until(() => completed.length === 3, 'three workflows');
      for (const id of ids) {
        const d = await engine.get(id);
        expect(d.status).toBe('completed');
        expect(d.steps.every((s) => s.attempts === 1)).toBe(true);
      }
      expect(ran).toHaveLength(15);
      for (let i = 0; i < 3; i++) expect(ran.filter((r) => r.startsWith(`${i}:`))).toEqual(['s1', 's2', 's3', 's4', 's5'].map((n) => `${i}:${n}`));
      // No step came from a claim: start() created each first step claimed by this
      // worker, and steps 2-5 were claimed inside the previous step's result transaction.
      expect(counted.claimed()).toBe(0);
    } finally {
      await engine.stop();
    }
    const rows = await store.getHistory((await engine.list({ limit: 1 })).items[0]!.id);
    const started = rows.filter((h) => h.kind === 'step' && h.to === 'running').map((h) => h.stepName);
    expect(started).toEqual(['s1', 's2', 's3', 's4', 's5']);
    // The same history a claim writes: the workflow starts running before its first step.
    expect(rows.slice(0, 3).map((h) => [h.kind, h.stepName, h.from, h.to])).toEqual([
      ['workflow', null, null, 'pending'],
      ['workflow', null, 'pending', 'running'],
      ['step', 's1', 'pending', 'running'],
    ]);
  });

  it('leaves first steps to a claim when start() runs where no worker runs, or every slot is taken', async () => {
    const gate = deferred<void>();
    const entered = deferred<void>();
    const wf = defineWorkflow({
      name: 'fan',
      input,
      steps: {
        a: step({ run: async () => (entered.resolve(), await gate.promise, { a: 1 }) }),
        b: step({ dependsOn: [], run: async () => (entered.resolve(), await gate.promise, { b: 1 }) }),
        c: step({ dependsOn: ['a', 'b'], run: () => ({ c: 1 }) }),
      },
    });
    const { store, clock, logger } = await setup([wf]);
    const counted = countingStore(store);
    const { createEngine } = await import('../../src/engine/workflow-engine.js');
    // No worker: the workflow is created pending, its roots due.
    const api = createEngine({ store: counted.store, workflows: [wf], clock, logger, workerId: 'api' });
    const viaApi = await api.start('fan', { tenantId: 't', input: { n: 1 } });
    expect(viaApi.status).toBe('pending');
    expect(viaApi.steps.map((s) => [s.name, s.status])).toEqual([
      ['a', 'pending'],
      ['b', 'pending'],
      ['c', 'pending'],
    ]);
    // A worker with one free slot takes one root itself; the other is claimed by its loop once a slot frees.
    const worker = createEngine({ store: counted.store, workflows: [wf], clock, logger, workerId: 'worker', concurrency: 1, idlePollMs: 5 });
    const completed: string[] = [];
    worker.events.on('workflow:completed', (e) => completed.push(e.workflowId));
    worker.startWorker();
    try {
      // The worker claimed a root of the first workflow and runs it in its only slot.
      await entered.promise;
      const viaWorker = await worker.start('fan', { tenantId: 't', input: { n: 2 } });
      // Every slot is taken by the first workflow's step: nothing is created claimed.
      expect(viaWorker.status).toBe('pending');
      expect(viaWorker.steps.filter((s) => s.status === 'running')).toEqual([]);
      gate.resolve();
      await until(() => completed.length === 2, 'both workflows');
      expect(counted.claimed()).toBeGreaterThanOrEqual(3);
    } finally {
      await worker.stop();
    }
    for (const id of [viaApi.id]) {
      const steps = await store.getSteps(id);
      expect(steps.every((s) => s.status === 'completed' && s.attempts === 1)).toBe(true);
      expect(steps.filter((s) => s.name !== 'c').every((s) => s.leaseOwner === null)).toBe(true);
    }
  });

  it('frees a slot before the events of its last write: a workflow started on `workflow:completed` is created claimed', async () => {
    let running = 0;
    let most = 0;
    const wf = defineWorkflow({
      name: 'solo',
      input,
      steps: {
        only: step({
          run: async (ctx) => {
            running++;
            most = Math.max(most, running);
            await Promise.resolve();
            running--;
            return { n: ctx.input.n };
          },
        }),
      },
    });
    const { store, clock, logger } = await setup([wf]);
    const counted = countingStore(store);
    const { createEngine } = await import('../../src/engine/workflow-engine.js');
    // One slot, held by each workflow's only step until its result is written.
    const engine = createEngine({ store: counted.store, workflows: [wf], clock, logger, concurrency: 1, idlePollMs: 5 });
    const completed: string[] = [];
    const next: Promise<{ status: string; steps: { status: string }[] }>[] = [];
    engine.events.on('workflow:completed', (e) => {
      completed.push(e.workflowId);
      // Each completion starts the next workflow, as a closed-loop client does.
      if (completed.length < 4) next.push(engine.start('solo', { tenantId: 't', input: { n: completed.length } }));
    });
    engine.startWorker();
    try {
      await engine.start('solo', { tenantId: 't', input: { n: 0 } });
      await until(() => completed.length === 4, 'four workflows');
      // The slot was free when each was started: its step was created running, and no claim ran.
      for (const started of await Promise.all(next)) expect([started.status, started.steps[0]!.status]).toEqual(['running', 'running']);
      expect(counted.claimed()).toBe(0);
      expect(most).toBe(1);
    } finally {
      await engine.stop();
    }
  });

  it('runs work left waiting for a slot as soon as one is freed, not at the next poll', async () => {
    const gates = [deferred<void>(), deferred<void>(), deferred<void>()];
    const wf = defineWorkflow({
      name: 'gated',
      input,
      steps: { only: step({ run: async (ctx) => (await gates[ctx.input.n]!.promise, { n: ctx.input.n }) }) },
    });
    const { store, clock, logger } = await setup([wf]);
    const { createEngine } = await import('../../src/engine/workflow-engine.js');
    // One slot, and a poll far beyond the test's patience: only a wake-up can start the others.
    const engine = createEngine({ store, workflows: [wf], clock, logger, concurrency: 1, idlePollMs: 3_600_000 });
    const completed: number[] = [];
    engine.events.on('workflow:completed', (e) => void engine.get(e.workflowId).then((w) => completed.push((w.input as { n: number }).n)));
    engine.startWorker();
    try {
      const first = await engine.start('gated', { tenantId: 't', input: { n: 0 } });
      // No free slot: these are created pending, for a claim.
      const waiting = [await engine.start('gated', { tenantId: 't', input: { n: 1 } }), await engine.start('gated', { tenantId: 't', input: { n: 2 } })];
      expect([first.steps[0]!.status, ...waiting.map((w) => w.steps[0]!.status)]).toEqual(['running', 'pending', 'pending']);
      for (const gate of gates) gate.resolve();
      await until(() => completed.length === 3, 'the waiting workflows to run', 10_000);
      expect(completed.sort()).toEqual([0, 1, 2]);
    } finally {
      await engine.stop();
    }
  });

  it('claims at once for a wake-up from another process when idle, and at most once per 25 ms while busy', async () => {
    const gate = deferred<void>();
    const wf = defineWorkflow({
      name: 'woken',
      input,
      steps: { only: step({ run: async (ctx) => (ctx.input.n === 0 ? await gate.promise : undefined, { n: ctx.input.n }) }) },
    });
    const { store, clock, logger } = await setup([wf]);
    const wakeable = wakeableStore(store);
    const { createEngine } = await import('../../src/engine/workflow-engine.js');
    // Another process: starts workflows, runs no worker (their steps are created pending, for a claim).
    const other = createEngine({ store, workflows: [wf], clock, logger, workerId: 'other' });
    // A poll far beyond the test's patience: only wake-ups make this worker claim.
    const worker = createEngine({ store: wakeable.store, workflows: [wf], clock, logger, workerId: 'worker', concurrency: 8, idlePollMs: 3_600_000 });
    const completed = new Set<number>();
    worker.events.on('workflow:completed', (e) => void worker.get(e.workflowId).then((w) => completed.add((w.input as { n: number }).n)));
    worker.startWorker();
    try {
      // The loop's first claim finds nothing; the clock stands still from here on unless advanced.
      await until(() => wakeable.claims() === 1, 'the first claim');
      await settle();
      // Idle: a wake-up right after that claim claims at once.
      await other.start('woken', { tenantId: 't', input: { n: 1 } });
      wakeable.wake();
      await until(() => completed.has(1), 'the woken workflow');
      expect(wakeable.claims()).toBe(2);

      // Busy (a step in flight), 25 ms after the last claim: a wake-up claims at once.
      await worker.start('woken', { tenantId: 't', input: { n: 0 } });
      clock.advance(25);
      await other.start('woken', { tenantId: 't', input: { n: 2 } });
      wakeable.wake();
      await until(() => completed.has(2), 'the workflow woken while busy');
      expect(wakeable.claims()).toBe(3);

      // Busy, within 25 ms of the last claim: two wake-ups wait for the interval, then one claim takes both workflows.
      await other.start('woken', { tenantId: 't', input: { n: 3 } });
      await other.start('woken', { tenantId: 't', input: { n: 4 } });
      wakeable.wake();
      clock.advance(24);
      wakeable.wake();
      await settle();
      expect(wakeable.claims()).toBe(3);
      expect(completed.has(3) || completed.has(4)).toBe(false);
      clock.advance(1);
      await until(() => completed.has(3) && completed.has(4), 'both workflows after the interval');
      expect(wakeable.claims()).toBe(4);
      gate.resolve();
      await until(() => completed.has(0), 'the gated workflow');
    } finally {
      gate.resolve();
      await worker.stop();
    }
  });

  it('runs a retry this worker scheduled when it is due, not at the next poll', async () => {
    const attempts = new Map<string, number>();
    const wf = failsOnce('flaky', 1_000, attempts);
    const { store, clock, logger } = await setup([wf]);
    const { createEngine } = await import('../../src/engine/workflow-engine.js');
    // A poll far beyond the test's patience: only a wake-up at the retry's time can run it.
    const engine = createEngine({ store, workflows: [wf], clock, logger, concurrency: 4, idlePollMs: 3_600_000 });
    const retries: Date[] = [];
    engine.events.on('step:retry_scheduled', (e) => retries.push(e.nextAttemptAt));
    let done = false;
    engine.events.on('workflow:completed', () => (done = true));
    engine.startWorker();
    try {
      const { id } = await engine.start('flaky', { tenantId: 't', input: { n: 0 } });
      await until(() => retries.length === 1, 'the retry to be scheduled', 10_000);
      expect(retries[0]!.getTime() - clock.now()).toBe(1_000);
      // Not yet due: nothing runs.
      clock.advance(999);
      await new Promise<void>((r) => setImmediate(r));
      expect(attempts.get('flaky')).toBe(1);
      clock.advance(1);
      await until(() => done, 'the retried workflow to complete', 10_000);
      expect(attempts.get('flaky')).toBe(2);
      expect((await engine.get(id)).status).toBe('completed');
    } finally {
      await engine.stop();
    }
  });

  it('wakes for each of several retries it scheduled, in order of their times', async () => {
    const attempts = new Map<string, number>();
    const wfs = [failsOnce('late', 3_000, attempts), failsOnce('soon', 1_000, attempts)];
    const { store, clock, logger } = await setup(wfs);
    const { createEngine } = await import('../../src/engine/workflow-engine.js');
    const engine = createEngine({ store, workflows: wfs, clock, logger, concurrency: 4, idlePollMs: 3_600_000 });
    let retries = 0;
    engine.events.on('step:retry_scheduled', () => retries++);
    const completed: string[] = [];
    engine.events.on('workflow:completed', (e) => completed.push(e.type));
    engine.startWorker();
    try {
      // The later retry is scheduled first: the sooner one takes the timer, the later one waits its turn.
      await engine.start('late', { tenantId: 't', input: { n: 0 } });
      await until(() => retries === 1, 'the late retry to be scheduled', 10_000);
      await engine.start('soon', { tenantId: 't', input: { n: 1 } });
      await until(() => retries === 2, 'the soon retry to be scheduled', 10_000);
      clock.advance(1_000);
      await until(() => completed.length === 1, 'the soon workflow', 10_000);
      expect(completed).toEqual(['soon']);
      clock.advance(2_000);
      await until(() => completed.length === 2, 'the late workflow', 10_000);
      expect(completed).toEqual(['soon', 'late']);
    } finally {
      await engine.stop();
    }
  });

  it('runs a poll this worker scheduled when it is due, not at the next poll of its loop', async () => {
    const polls: number[] = [];
    const wf = defineWorkflow({
      name: 'polled',
      input,
      steps: {
        cert: step({
          pollIntervalMs: 250,
          run: () => ({ requested: true }),
          poll: (ctx) => (polls.push(ctx.pollCount), ctx.pollCount >= 1 ? { done: true as const, output: { issued: true } } : { done: false as const }),
        }),
      },
    });
    const { store, clock, logger } = await setup([wf]);
    const { createEngine } = await import('../../src/engine/workflow-engine.js');
    const engine = createEngine({ store, workflows: [wf], clock, logger, concurrency: 4, idlePollMs: 3_600_000 });
    let done = false;
    engine.events.on('workflow:completed', () => (done = true));
    const waits: Date[] = [];
    engine.events.on('step:waiting_poll', (e) => waits.push(e.nextPollAt));
    engine.startWorker();
    try {
      const { id } = await engine.start('polled', { tenantId: 't', input: { n: 0 } });
      await until(() => waits.length === 1, 'the first poll to be scheduled', 10_000);
      clock.advance(250);
      await until(() => polls.length === 1, 'the first poll', 10_000);
      // Its result (not done) is written after the poll returns: the next poll is then scheduled.
      await until(async () => (await engine.get(id)).steps[0]!.pollCount === 1, 'the second poll to be scheduled', 10_000);
      clock.advance(250);
      await until(() => done, 'the polled workflow to complete', 10_000);
      expect(polls).toEqual([0, 1]);
    } finally {
      await engine.stop();
    }
  });

  it('runs a new workflow\'s first steps in the starting worker, created running under its lease', async () => {
    const gate = deferred<void>();
    const wf = defineWorkflow({
      name: 'two_roots',
      input,
      steps: {
        a: step({ run: async () => (await gate.promise, { a: 1 }) }),
        b: step({ dependsOn: [], run: async () => (await gate.promise, { b: 1 }) }),
      },
    });
    const { store, clock, logger } = await setup([wf]);
    const { createEngine } = await import('../../src/engine/workflow-engine.js');
    const engine = createEngine({ store, workflows: [wf], clock, logger, workerId: 'starter', idlePollMs: 5, leaseMs: 30_000 });
    const started: string[] = [];
    engine.events.on('step:started', (e) => started.push(`${e.stepName}:${e.attempt}:${String(e.reclaimed)}`));
    engine.startWorker();
    try {
      const detail = await engine.start('two_roots', { tenantId: 't', input: { n: 1 } });
      expect(detail.status).toBe('running');
      expect(detail.steps.map((s) => [s.name, s.status, s.attempts])).toEqual([
        ['a', 'running', 1],
        ['b', 'running', 1],
      ]);
      const stored = await store.getSteps(detail.id);
      for (const s of stored) {
        expect(s).toMatchObject({ status: 'running', attempts: 1, leaseOwner: 'starter', leaseExpiresAt: new Date(clock.now() + 30_000) });
        expect(s.leaseToken).toEqual(expect.any(String));
        expect(s.callbackTokenHash).toEqual(expect.any(String));
      }
      expect(stored[0]!.leaseToken).not.toBe(stored[1]!.leaseToken);
      expect((await engine.get(detail.id)).status).toBe('running');
      gate.resolve();
      await until(async () => (await engine.get(detail.id)).status === 'completed', 'the workflow completes');
      expect(started.sort()).toEqual(['a:1:false', 'b:1:false']);
    } finally {
      await engine.stop();
    }
  });

  it('loses nothing when a worker dies between a chained claim and its step', async () => {
    const zombieGate = deferred<string>();
    const runs: string[] = [];
    const wf = defineWorkflow({
      name: 'chain_crash',
      input,
      steps: {
        first: step({ run: () => (runs.push('first'), 'one') }),
        second: step({
          run: async (ctx) => {
            runs.push(`second#${ctx.attempt}`);
            return ctx.attempt === 1 ? zombieGate.promise : 'two';
          },
        }),
      },
    });
    const { engine, clock, otherEngine } = await setup([wf], { leaseMs: 20_000 });
    // A worker that dies right after chaining: no heartbeat (its clock never moves), and stop()
    // with no grace period abandons the running handler without writing anything, as a crash would.
    const doomed = otherEngine({ clock: createManualClock(), idlePollMs: 5, shutdownTimeoutMs: 0 });
    doomed.startWorker();
    const { id } = await engine.start('chain_crash', { tenantId: 't', input: { n: 1 } });
    await until(() => runs.includes('second#1'), 'chained second step');
    await doomed.stop();
    let d = await engine.get(id);
    expect(d.steps.map((s) => s.status)).toEqual(['completed', 'running']);
    expect(await engine.tick()).toBe(0);
    clock.advance(20_000);
    await engine.drain();
    d = await engine.get(id);
    expect(d.status).toBe('completed');
    expect(d.steps.map((s) => [s.status, s.output, s.attempts])).toEqual([
      ['completed', 'one', 1],
      ['completed', 'two', 2],
    ]);
    expect(runs.filter((r) => r === 'first')).toHaveLength(1);
    zombieGate.resolve('late');
    d = await engine.get(id);
    expect(d.steps[1]?.output).toBe('two');
  });
});
