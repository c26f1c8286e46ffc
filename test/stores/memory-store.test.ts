import { describe, expect, it } from 'vitest';
import { createManualClock } from '../../src/core/clock.js';
import type { CreateWorkflowInput, NewHistoryEntry } from '../../src/storage/workflow-store.js';
import { MemoryWorkflowStore } from '../../src/stores/memory/memory-workflow-store.js';
import { runWorkflowStoreContract } from '../../src/testing/store-contract.js';

runWorkflowStoreContract('memory', {
  create: async (clock) => new MemoryWorkflowStore({ clock }),
});

const T0 = Date.UTC(2026, 0, 1);

function input(id: string, overrides: Partial<CreateWorkflowInput['workflow']> = {}): CreateWorkflowInput {
  return {
    workflow: {
      id,
      tenantId: 'tenant-a',
      type: 'provision',
      serviceSlug: null,
      status: 'pending',
      definitionVersion: 'v1',
      input: { plan: 'basic', nested: { list: [1, 2] } },
      idempotencyKey: null,
      createdAt: new Date(T0),
      ...overrides,
    },
    steps: [
      { name: 'a', position: 0, dependsOn: [], maxAttempts: 3, dueAt: new Date(T0) },
      { name: 'b', position: 1, dependsOn: ['a'], maxAttempts: 3, dueAt: null },
    ],
    history: [{ kind: 'note', stepName: null, from: null, to: null, actor: null, reason: null, action: 'created', detail: { n: 1 } }],
  };
}

function tokens(n: number): { leaseToken: string; callbackTokenHash: string }[] {
  return Array.from({ length: n }, (_, i) => ({ leaseToken: `lease-${i}`, callbackTokenHash: `hash-${i}` }));
}

function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

describe('MemoryWorkflowStore', () => {
  it('hands out copies that callers cannot use to change stored state', async () => {
    const store = new MemoryWorkflowStore({ clock: createManualClock(T0) });
    const created = await store.createWorkflow(input('w1'));
    (created.workflow.input as { plan: string }).plan = 'mutated';
    created.workflow.createdAt.setTime(0);

    const workflow = await store.getWorkflow('w1');
    (workflow!.input as { nested: { list: number[] } }).nested.list.push(3);
    workflow!.status = 'failed';

    const steps = await store.getSteps('w1');
    steps[0]!.status = 'completed';
    steps[0]!.dueAt!.setTime(T0 + 999_999);
    steps[1]!.dependsOn.push('x');

    const history = await store.getHistory('w1');
    (history[0]!.detail as { n: number }).n = 2;
    history[0]!.at.setTime(0);

    const [claimed] = await store.claimSteps({ workerId: 'w', leaseMs: 1_000, limit: 1, tokens: tokens(1) });
    claimed!.steps[0]!.leaseToken = 'forged';
    claimed!.workflow.status = 'completed';
    claimed!.now.setTime(0);

    await store.transact('w1', (tx) => {
      (tx.workflow.input as { plan: string }).plan = 'changed-in-snapshot';
      tx.steps[0]!.leaseExpiresAt!.setTime(0);
      tx.now.setTime(0);
    });

    expect(await store.getWorkflow('w1')).toMatchObject({
      status: 'running',
      input: { plan: 'basic', nested: { list: [1, 2] } },
      createdAt: new Date(T0),
    });
    const [a, b] = await store.getSteps('w1');
    expect(a).toMatchObject({ status: 'running', dueAt: new Date(T0), leaseToken: 'lease-0', leaseExpiresAt: new Date(T0 + 1_000) });
    expect(b?.dependsOn).toEqual(['a']);
    const [first] = await store.getHistory('w1');
    expect(first).toMatchObject({ detail: { n: 1 }, at: new Date(T0) });
  });

  it('copies what callers hand in', async () => {
    const store = new MemoryWorkflowStore({ clock: createManualClock(T0) });
    const created = input('w1');
    await store.createWorkflow(created);
    (created.workflow.input as { plan: string }).plan = 'mutated';
    created.steps[0]!.dueAt!.setTime(0);
    created.steps[1]!.dependsOn.push('x');
    (created.history[0]!.detail as { n: number }).n = 5;

    const output = { endpoint: 'db://one' };
    const dueAt = new Date(T0 + 5_000);
    const entry: NewHistoryEntry = { kind: 'note', stepName: 'a', from: null, to: null, actor: null, reason: null, action: 'x', detail: { k: 1 } };
    await store.transact('w1', (tx) => {
      tx.updateStep('b', { output, dueAt });
      tx.appendHistory([entry]);
    });
    output.endpoint = 'db://two';
    dueAt.setTime(0);
    (entry.detail as { k: number }).k = 2;

    expect((await store.getWorkflow('w1'))?.input).toEqual({ plan: 'basic', nested: { list: [1, 2] } });
    const [a, b] = await store.getSteps('w1');
    expect(a?.dueAt).toEqual(new Date(T0));
    expect(b).toMatchObject({ dependsOn: ['a'], output: { endpoint: 'db://one' }, dueAt: new Date(T0 + 5_000) });
    expect((await store.getHistory('w1')).map((h) => h.detail)).toEqual([{ n: 1 }, { k: 1 }]);
    // The index follows the stored value, not the caller's Date object.
    expect(await store.nextDueAt()).toEqual(new Date(T0));
  });

  it('stores JSON values in their JSON form, as a database store would', async () => {
    const store = new MemoryWorkflowStore({ clock: createManualClock(T0) });
    await store.createWorkflow(input('w1', { input: { when: new Date(T0), gone: undefined, list: [undefined, 1], ratio: Number.NaN } }));
    await store.transact('w1', (tx) => tx.updateStep('a', { output: undefined, callbackResult: { at: new Date(T0 + 1) } }));
    expect((await store.getWorkflow('w1'))?.input).toStrictEqual({ when: new Date(T0).toISOString(), list: [null, 1], ratio: null });
    const [a] = await store.getSteps('w1');
    expect(a?.output).toBeNull();
    expect(a?.callbackResult).toStrictEqual({ at: new Date(T0 + 1).toISOString() });
  });

  it('keeps a JSON "__proto__" key as plain data', async () => {
    const store = new MemoryWorkflowStore({ clock: createManualClock(T0) });
    await store.createWorkflow(input('w1', { input: JSON.parse('{"__proto__": {"polluted": true}, "plan": "x"}') as unknown }));
    const stored = (await store.getWorkflow('w1'))?.input as Record<string, unknown>;
    expect(Object.getPrototypeOf(stored)).toBe(Object.prototype);
    expect(Object.keys(stored)).toEqual(['__proto__', 'plan']);
    expect(JSON.stringify(stored)).toBe('{"__proto__":{"polluted":true},"plan":"x"}');
    expect((stored as { polluted?: unknown }).polluted).toBeUndefined();
  });

  it('skips a locked workflow without waiting, and reads see the last committed state', async () => {
    const store = new MemoryWorkflowStore({ clock: createManualClock(T0) });
    await store.createWorkflow(input('locked'));
    await store.createWorkflow(input('free'));
    const observed = await store.transact('locked', async (tx) => {
      tx.updateStep('a', { status: 'skipped', dueAt: null });
      const claimed = await store.claimSteps({ workerId: 'w', leaseMs: 1_000, limit: 10, tokens: tokens(10) });
      const [a] = await store.getSteps('locked');
      return { claimed: claimed.map((c) => c.workflow.id), status: a?.status };
    });
    expect(observed).toEqual({ claimed: ['free'], status: 'pending' });
    expect((await store.getSteps('locked'))[0]?.status).toBe('skipped');
  });

  it('locks per workflow: a transaction on another workflow is not blocked', async () => {
    const store = new MemoryWorkflowStore({ clock: createManualClock(T0) });
    await store.createWorkflow(input('w1'));
    await store.createWorkflow(input('w2'));
    const gate = deferred();
    const entered = deferred();
    const held = store.transact('w1', async (tx) => {
      entered.resolve();
      await gate.promise;
      tx.updateWorkflow({ currentStep: 'a' });
    });
    await entered.promise;
    await store.transact('w2', (tx) => tx.updateWorkflow({ currentStep: 'b' }));
    expect((await store.getWorkflow('w2'))?.currentStep).toBe('b');
    expect((await store.getWorkflow('w1'))?.currentStep).toBeNull();
    gate.resolve();
    await held;
    expect((await store.getWorkflow('w1'))?.currentStep).toBe('a');
  });

  it('extendLease waits for a transaction on the workflow and sees its result', async () => {
    const clock = createManualClock(T0);
    const store = new MemoryWorkflowStore({ clock });
    await store.createWorkflow(input('w1'));
    await store.claimSteps({ workerId: 'w', leaseMs: 1_000, limit: 1, tokens: tokens(1) });
    const gate = deferred();
    const entered = deferred();
    const held = store.transact('w1', async (tx) => {
      entered.resolve();
      await gate.promise;
      tx.updateStep('a', { status: 'completed', leaseToken: null, leaseOwner: null, leaseExpiresAt: null }, { expectLeaseToken: 'lease-0' });
    });
    await entered.promise;
    const extended = store.extendLease('w1', 'a', 'lease-0', 5_000);
    gate.resolve();
    await held;
    expect(await extended).toBe(false);
    expect((await store.getSteps('w1'))[0]).toMatchObject({ status: 'completed', leaseExpiresAt: null });
  });

  it('rejects writes to an unknown step, writes after the transaction ended and unknown patch fields', async () => {
    const store = new MemoryWorkflowStore({ clock: createManualClock(T0) });
    await store.createWorkflow(input('w1'));
    await expect(store.transact('w1', (tx) => tx.updateStep('nope', { status: 'completed' }))).rejects.toMatchObject({
      code: 'not_found',
      stepName: 'nope',
    });
    let leaked: Parameters<Parameters<MemoryWorkflowStore['transact']>[1]>[0] | undefined;
    await store.transact('w1', (tx) => {
      leaked = tx;
    });
    expect(() => leaked?.updateWorkflow({ currentStep: 'a' })).toThrow(/already ended/);
    await expect(
      store.transact('w1', (tx) => tx.updateStep('a', { name: 'renamed' } as unknown as { status: 'completed' })),
    ).rejects.toThrow(/name cannot be updated/);
    expect((await store.getSteps('w1')).map((s) => s.name)).toEqual(['a', 'b']);
    expect((await store.getWorkflow('w1'))?.currentStep).toBeNull();
  });

  it('rejects a second workflow with the same id', async () => {
    const store = new MemoryWorkflowStore({ clock: createManualClock(T0) });
    await store.createWorkflow(input('w1'));
    await expect(store.createWorkflow(input('w1', { tenantId: 'tenant-b' }))).rejects.toMatchObject({ code: 'conflict' });
    expect((await store.getWorkflow('w1'))?.tenantId).toBe('tenant-a');
  });

  it('uses the system clock by default', async () => {
    const store = new MemoryWorkflowStore();
    const before = Date.now();
    const now = (await store.now()).getTime();
    expect(now).toBeGreaterThanOrEqual(before);
    expect(now).toBeLessThanOrEqual(Date.now());
  });

  it('keeps claiming in due order through many index updates', async () => {
    const clock = createManualClock(T0);
    const store = new MemoryWorkflowStore({ clock });
    const count = 3_000;
    for (let i = 0; i < count; i++) {
      // Due times out of insertion order, with ties.
      await store.createWorkflow({
        ...input(`w${String(i).padStart(5, '0')}`),
        steps: [{ name: 'a', position: 0, dependsOn: [], maxAttempts: 1, dueAt: new Date(T0 - ((i * 7919) % 1_000)) }],
      });
    }
    // Move every third step into the future and back, churning the index.
    for (let i = 0; i < count; i += 3) {
      const id = `w${String(i).padStart(5, '0')}`;
      await store.transact(id, (tx) => tx.updateStep('a', { dueAt: new Date(T0 + 10_000) }));
      await store.transact(id, (tx) => tx.updateStep('a', { dueAt: new Date(T0 - 1_000) }));
    }
    const dueTimes: number[] = [];
    for (;;) {
      const batch = await store.claimSteps({ workerId: 'w', leaseMs: 60_000, limit: 64, tokens: tokens(64) });
      if (batch.length === 0) break;
      for (const c of batch) dueTimes.push(c.steps[0]!.dueAt!.getTime());
    }
    expect(dueTimes).toHaveLength(count);
    expect(dueTimes).toEqual([...dueTimes].sort((x, y) => x - y));
    expect(await store.nextDueAt()).toEqual(new Date(T0 - 1_000));
  });
});
