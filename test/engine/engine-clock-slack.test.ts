/**
 * Deadlines counted from a store's time carry the store's clock slack: a store
 * that estimates a database clock between readings hands out times that may
 * lag that clock, and a due time counted from such a time could fall early by
 * it. The engine adds `WorkflowStore.clockSlackMs()` to every deadline it
 * counts (poll and retry due times, leases, callback and poll timeouts).
 */
import { afterEach, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { createManualClock } from '../../src/core/clock.js';
import { defineWorkflow, step } from '../../src/core/define-workflow.js';
import { createEngine, type WorkflowEngine } from '../../src/index.js';
import { MemoryWorkflowStore } from '../../src/stores/memory/memory-workflow-store.js';

const SLACK_MS = 7;
const LEASE_MS = 30_000;

/** A memory store that reports a clock slack, as the Postgres store does for its estimate of the database clock. */
class SlackStore extends MemoryWorkflowStore {
  constructor(
    clock: ReturnType<typeof createManualClock>,
    private readonly slack: number,
  ) {
    super({ clock });
  }

  clockSlackMs(): number {
    return this.slack;
  }
}

const input = z.object({});

const workflow = defineWorkflow({
  name: 'slack',
  input,
  steps: {
    flaky: step({
      retry: { maximumAttempts: 2, initialIntervalMs: 1_000, backoffCoefficient: 1, jitter: 0 },
      run: (ctx) => {
        if (ctx.attempt === 1) throw new Error('first attempt fails');
        return { ok: true };
      },
    }),
    cert: step({ pollIntervalMs: 300, pollTimeoutMs: 60_000, run: () => ({ order: 1 }), poll: () => ({ done: false as const }) }),
  },
});

const callback = defineWorkflow({
  name: 'slack_callback',
  input,
  steps: { vendor: step({ run: (ctx) => ctx.waitForCallback({ timeoutMs: 10_000 }) }) },
});

const engines: WorkflowEngine[] = [];
afterEach(async () => {
  while (engines.length) await engines.pop()!.stop();
});

async function setup(slack: number) {
  const clock = createManualClock(Date.UTC(2026, 0, 1));
  const store = new SlackStore(clock, slack);
  const engine = createEngine({ store, workflows: [workflow, callback], clock, leaseMs: LEASE_MS, random: () => 0.5 });
  engines.push(engine);
  return { clock, store, engine };
}

describe.each([0, SLACK_MS])('deadlines with a clock slack of %i ms', (slack) => {
  it('puts retries, polls, poll timeouts and callback timeouts the slack later', async () => {
    const { clock, store, engine } = await setup(slack);
    const { id } = await engine.start('slack', { tenantId: 't1', input: {} });
    const failedAt = clock.now();
    await engine.drain();
    expect((await store.getSteps(id))[0]).toMatchObject({ status: 'pending', dueAt: new Date(failedAt + 1_000 + slack) });
    clock.advance(1_000 + slack);
    await engine.drain();
    const polledFrom = clock.now();
    expect((await store.getSteps(id))[1]).toMatchObject({
      status: 'waiting_poll',
      dueAt: new Date(polledFrom + 300 + slack),
      pollDeadlineAt: new Date(polledFrom + 60_000 + slack),
    });
    // Not due a millisecond before the interval and the slack have passed.
    clock.advance(300 + slack - 1);
    expect(await engine.tick()).toBe(0);
    clock.advance(1);
    expect(await engine.tick()).toBe(1);
    expect((await store.getSteps(id))[1]).toMatchObject({ status: 'waiting_poll', pollCount: 1, dueAt: new Date(clock.now() + 300 + slack) });

    const { id: waiting } = await engine.start('slack_callback', { tenantId: 't1', input: {} });
    const waitingFrom = clock.now();
    await engine.drain();
    expect((await store.getSteps(waiting))[0]).toMatchObject({ status: 'waiting_callback', dueAt: new Date(waitingFrom + 10_000 + slack) });
  });

  it('gives a step claimed at its workflow start a lease the slack longer', async () => {
    const { clock, store } = await setup(slack);
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const held = defineWorkflow({ name: 'held', input, steps: { hold: step({ run: async () => { await gate; return {}; } }) } });
    const worker = createEngine({ store, workflows: [held], clock, leaseMs: LEASE_MS, workerId: 'holder' });
    engines.push(worker);
    worker.startWorker();
    try {
      const { id } = await worker.start('held', { tenantId: 't1', input: {} });
      expect((await store.getSteps(id))[0]).toMatchObject({ status: 'running', leaseOwner: 'holder', leaseExpiresAt: new Date(clock.now() + LEASE_MS + slack) });
    } finally {
      release();
    }
  });
});
