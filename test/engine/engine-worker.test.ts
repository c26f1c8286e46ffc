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

describe.each(storeFactories)('background worker on $name store', (factory) => {
  const setup = useHarness(factory);

  it('runs workflows to completion, claiming each next step in the previous result transaction', async () => {
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
      // Only each workflow's first step came from a claim: steps 2-5 were claimed inside
      // the previous step's result transaction.
      expect(counted.claimed()).toBe(3);
    } finally {
      await engine.stop();
    }
    const rows = await store.getHistory((await engine.list({ limit: 1 })).items[0]!.id);
    const started = rows.filter((h) => h.kind === 'step' && h.to === 'running').map((h) => h.stepName);
    expect(started).toEqual(['s1', 's2', 's3', 's4', 's5']);
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
