import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { defineWorkflow, step } from '../../src/core/define-workflow.js';
import { STEP_TRANSITIONS, type StepStatus } from '../../src/core/step-status.js';
import { WORKFLOW_TRANSITIONS, type WorkflowStatus } from '../../src/core/workflow-status.js';
import { NonRetryableError } from '../../src/errors.js';
import type { WorkflowDetail } from '../../src/engine/engine-types.js';
import { storeFactories } from '../support/store-factories.js';
import { createManualClock } from '../../src/core/clock.js';
import { deferred, until, useHarness } from '../fixtures/harness.js';

const input = z.object({ plan: z.string() });

/** Every transition recorded in the history must be allowed by the transition tables. */
function expectLegalHistory(d: WorkflowDetail): void {
  for (const h of d.history) {
    if (h.kind === 'workflow' && h.from !== null) {
      expect(WORKFLOW_TRANSITIONS[h.from as WorkflowStatus], `${h.from}->${h.to}`).toContain(h.to);
    }
    if (h.kind === 'step') expect(STEP_TRANSITIONS[h.from as StepStatus], `${h.stepName}: ${h.from}->${h.to}`).toContain(h.to);
  }
}

describe.each(storeFactories)('admin operations on $name store', (factory) => {
  const setup = useHarness(factory);

  it('force-completes a workflow with pending, running, waiting_callback and waiting_poll steps', async () => {
    const gate = deferred<string>();
    let runningSignal: AbortSignal | undefined;
    const wf = defineWorkflow({
      name: 'mixed',
      input,
      steps: {
        root: step({ run: () => 'root' }),
        broken: step({ dependsOn: ['root'], retry: { maximumAttempts: 1 }, run: () => Promise.reject(new NonRetryableError('bad')) }),
        vendor: step({ dependsOn: ['root'], run: (ctx) => ctx.waitForCallback() }),
        cert: step({ dependsOn: ['root'], run: () => 'ordered', poll: () => ({ done: false }) }),
        slow: step({
          dependsOn: ['root'],
          run: (ctx) => {
            runningSignal = ctx.signal;
            return gate.promise;
          },
        }),
        later: step({ dependsOn: ['vendor'], run: () => 'later' }),
      },
    });
    const { engine } = await setup([wf]);
    const { id } = await engine.start('mixed', { tenantId: 't1', input: { plan: 'x' } });
    await engine.tick();
    const ticking = engine.tick();
    await until(() => runningSignal !== undefined, 'slow handler');
    await until(async () => (await engine.get(id)).status === 'failed' && (await engine.get(id)).steps.filter((s) => s.status.startsWith('waiting')).length === 2, 'siblings settle');
    let d = await engine.get(id);
    expect(Object.fromEntries(d.steps.map((s) => [s.name, s.status]))).toEqual({
      root: 'completed',
      broken: 'failed',
      vendor: 'waiting_callback',
      cert: 'waiting_poll',
      slow: 'running',
      later: 'pending',
    });
    expect(d.status).toBe('failed');
    const events: string[] = [];
    engine.events.on('step:skipped', (e) => events.push(`skipped:${e.stepName}`));
    engine.events.on('workflow:force_completed', (e) => events.push(`force:${e.actor}:${e.reason}:${e.skippedSteps.join(',')}`));
    d = await engine.forceComplete(id, { actor: 'ops@example.com', reason: 'vendor is down' });
    expect(runningSignal?.aborted).toBe(true);
    expect(d.status).toBe('completed');
    expect(Object.fromEntries(d.steps.map((s) => [s.name, s.status]))).toEqual({
      root: 'completed',
      broken: 'failed',
      vendor: 'skipped',
      cert: 'skipped',
      slow: 'skipped',
      later: 'skipped',
    });
    expect(events).toEqual(['skipped:vendor', 'skipped:cert', 'skipped:slow', 'skipped:later', 'force:ops@example.com:vendor is down:vendor,cert,slow,later']);
    const admin = d.history.find((h) => h.kind === 'admin');
    expect(admin).toMatchObject({ action: 'force_complete', actor: 'ops@example.com', reason: 'vendor is down', from: 'failed' });
    expect(admin?.at).toBeInstanceOf(Date);
    gate.resolve('late');
    await ticking;
    await engine.drain();
    d = await engine.get(id);
    expect(d.steps.find((s) => s.name === 'slow')?.status).toBe('skipped');
    expect(d.steps.find((s) => s.name === 'slow')?.output).toBeNull();
    expectLegalHistory(d);
  });

  it("discards a late result from another process's handler after force-complete (lease fence)", async () => {
    const gate = deferred<string>();
    let started = false;
    const wf = defineWorkflow({
      name: 'remote',
      input,
      steps: { a: step({ run: async () => ((started = true), gate.promise) }), b: step({ run: () => 'b' }) },
    });
    const { engine, otherEngine, logger } = await setup([wf]);
    const { id } = await engine.start('remote', { tenantId: 't1', input: { plan: 'x' } });
    const remote = otherEngine({ clock: createManualClock() });
    const remoteTick = remote.tick();
    await until(() => started, 'remote handler');
    await engine.forceComplete(id);
    gate.resolve('late result');
    await remoteTick;
    const d = await engine.get(id);
    expect(d.status).toBe('completed');
    expect(d.steps.map((s) => [s.status, s.output])).toEqual([
      ['skipped', null],
      ['skipped', null],
    ]);
    expect(logger.lines.some((l) => l.message.includes('lease was lost'))).toBe(true);
  });

  it('retries a failed step: pending, retry_count + 1, then it completes and its dependents run', async () => {
    let fail = true;
    const wf = defineWorkflow({
      name: 'retryable',
      input,
      steps: {
        a: step({ retry: { maximumAttempts: 2, initialIntervalMs: 10, jitter: 0 }, run: () => { if (fail) throw new Error('down'); return 'a'; } }),
        b: step({ run: (ctx) => `b after ${String(ctx.deps.a)}` }),
      },
    });
    const { engine, clock } = await setup([wf]);
    const { id } = await engine.start('retryable', { tenantId: 't1', input: { plan: 'x' } });
    await engine.drain();
    clock.advance(10);
    await engine.drain();
    let d = await engine.get(id);
    expect(d.status).toBe('failed');
    expect(d.steps[0]).toMatchObject({ status: 'failed', retryCount: 1 });
    await expect(engine.retryStep(id, 'b')).rejects.toMatchObject({ code: 'conflict', message: expect.stringContaining('the step is pending') });
    fail = false;
    d = await engine.retryStep(id, 'a', { actor: 'ops', reason: 'fixed the vendor' });
    expect(d.status).toBe('running');
    expect(d.steps[0]).toMatchObject({ status: 'pending', retryCount: 2, error: null });
    expect(d.steps[0]?.nextAttemptAt?.getTime()).toBe(clock.now());
    await engine.drain();
    d = await engine.get(id);
    expect(d.status).toBe('completed');
    expect(d.steps.map((s) => s.output)).toEqual(['a', 'b after a']);
    expect(d.retryCount).toBe(2);
    expect(d.history.filter((h) => h.kind === 'admin').map((h) => [h.action, h.stepName, h.actor, h.reason])).toEqual([
      ['retry_step', 'a', 'ops', 'fixed the vendor'],
    ]);
    expectLegalHistory(d);
  });

  it('rolls back a failed workflow: compensations in reverse completion order, steps without compensate stay completed', async () => {
    const undone: string[] = [];
    const order = ['db', 'dns', 'vendor'];
    const comp = (name: string) => async () => {
      undone.push(name);
    };
    const wf = defineWorkflow({
      name: 'saga',
      input,
      steps: {
        db: step({ run: () => ({ dbId: 'db_1' }), compensate: comp('db') }),
        audit: step({ dependsOn: ['db'], run: () => 'logged' }),
        dns: step({ dependsOn: ['audit'], run: () => 'dns', compensate: comp('dns') }),
        vendor: step({ dependsOn: ['dns'], run: () => 'vendor', compensate: comp('vendor') }),
        cert: step({ dependsOn: ['vendor'], retry: { maximumAttempts: 1 }, run: () => Promise.reject(new Error('ca down')) }),
      },
    });
    const { engine } = await setup([wf]);
    const { id } = await engine.start('saga', { tenantId: 't1', input: { plan: 'x' } });
    await engine.drain();
    expect((await engine.get(id)).status).toBe('failed');
    let d = await engine.rollback(id, { actor: 'ops', reason: 'customer cancelled' });
    expect(d.status).toBe('rolling_back');
    expect(d.steps.find((s) => s.name === 'vendor')?.status).toBe('compensating');
    await engine.drain();
    d = await engine.get(id);
    expect(undone).toEqual([...order].reverse());
    expect(d.status).toBe('rolled_back');
    expect(Object.fromEntries(d.steps.map((s) => [s.name, s.status]))).toEqual({
      db: 'compensated',
      audit: 'completed',
      dns: 'compensated',
      vendor: 'compensated',
      cert: 'failed',
    });
    expectLegalHistory(d);
  });

  it('rolls back a completed workflow', async () => {
    const undone: string[] = [];
    const wf = defineWorkflow({
      name: 'done_saga',
      input,
      steps: {
        a: step({ run: () => 1, compensate: () => void undone.push('a') }),
        b: step({ dependsOn: [], run: () => 2, compensate: () => void undone.push('b') }),
      },
    });
    const { engine } = await setup([wf]);
    const { id } = await engine.start('done_saga', { tenantId: 't1', input: { plan: 'x' } });
    await engine.drain();
    expect((await engine.get(id)).status).toBe('completed');
    await engine.rollback(id);
    await engine.drain();
    const d = await engine.get(id);
    expect(d.status).toBe('rolled_back');
    expect(undone).toHaveLength(2);
    // Reverse completion order: whichever completed last is undone first.
    const seqs = (await engine.get(id)).history.filter((h) => h.kind === 'step' && h.to === 'completed').map((h) => h.stepName);
    expect(undone).toEqual([...seqs].reverse());
  });

  it('stops at a compensation that fails for good, then a second rollback resumes there and finishes', async () => {
    const undone: string[] = [];
    let dnsBroken = true;
    const wf = defineWorkflow({
      name: 'stuck_saga',
      input,
      steps: {
        db: step({ run: () => 'db', compensate: () => void undone.push('db') }),
        dns: step({
          run: () => 'dns',
          compensationRetry: { maximumAttempts: 2, initialIntervalMs: 100, jitter: 0 },
          compensate: () => {
            if (dnsBroken) throw new Error('dns api down');
            undone.push('dns');
          },
        }),
        vendor: step({ run: () => 'vendor', compensate: () => void undone.push('vendor') }),
      },
    });
    const { engine, clock } = await setup([wf]);
    const failedEvents: string[] = [];
    engine.events.on('workflow:rollback_failed', (e) => failedEvents.push(e.stepName));
    const { id } = await engine.start('stuck_saga', { tenantId: 't1', input: { plan: 'x' } });
    await engine.drain();
    await engine.rollback(id);
    await engine.drain();
    let d = await engine.get(id);
    expect(d.steps.find((s) => s.name === 'dns')).toMatchObject({ status: 'compensating', retryCount: 1 });
    clock.advance(100);
    await engine.drain();
    d = await engine.get(id);
    expect(undone).toEqual(['vendor']);
    expect(d.status).toBe('rollback_failed');
    expect(d.error).toMatchObject({ step: 'dns', message: 'dns api down' });
    expect(Object.fromEntries(d.steps.map((s) => [s.name, s.status]))).toEqual({ db: 'completed', dns: 'compensation_failed', vendor: 'compensated' });
    expect(failedEvents).toEqual(['dns']);
    await expect(engine.forceComplete(id)).rejects.toMatchObject({ code: 'conflict', status: 'rollback_failed' });
    dnsBroken = false;
    await engine.rollback(id, { reason: 'dns is back' });
    await engine.drain();
    d = await engine.get(id);
    expect(undone).toEqual(['vendor', 'dns', 'db']);
    expect(d.status).toBe('rolled_back');
    expectLegalHistory(d);
  });

  it("starts a rollback by itself with onFailure: 'rollback', aborting running siblings", async () => {
    const undone: string[] = [];
    const gate = deferred<string>();
    let siblingSignal: AbortSignal | undefined;
    const wf = defineWorkflow({
      name: 'auto',
      input,
      onFailure: 'rollback',
      steps: {
        db: step({ run: () => 'db', compensate: () => void undone.push('db') }),
        sibling: step({
          dependsOn: ['db'],
          run: (ctx) => {
            siblingSignal = ctx.signal;
            return gate.promise;
          },
          compensate: () => void undone.push('sibling'),
        }),
        bad: step({ dependsOn: ['db'], retry: { maximumAttempts: 1 }, run: () => Promise.reject(new Error('nope')) }),
      },
    });
    const { engine } = await setup([wf]);
    const { id } = await engine.start('auto', { tenantId: 't1', input: { plan: 'x' } });
    await engine.tick();
    const ticking = engine.tick();
    await until(() => siblingSignal !== undefined, 'sibling start');
    await until(async () => (await engine.get(id)).status !== 'running', 'rollback');
    expect(siblingSignal?.aborted).toBe(true);
    gate.resolve('late');
    await ticking;
    await engine.drain();
    const d = await engine.get(id);
    expect(d.status).toBe('rolled_back');
    expect(undone).toEqual(['db']);
    expect(Object.fromEntries(d.steps.map((s) => [s.name, s.status]))).toEqual({ db: 'compensated', sibling: 'skipped', bad: 'failed' });
    expect(d.history.find((h) => h.kind === 'admin')).toMatchObject({ action: 'rollback', actor: 'sagaline' });
    expectLegalHistory(d);
  });

  it('refuses every admin operation from a disallowed state with a conflict naming the status', async () => {
    const wf = defineWorkflow({ name: 'simple', input, steps: { a: step({ run: () => 'a', compensate: () => {} }) } });
    const { engine } = await setup([wf]);
    const { id } = await engine.start('simple', { tenantId: 't1', input: { plan: 'x' } });
    await engine.drain();
    // completed
    await expect(engine.forceComplete(id)).rejects.toMatchObject({ code: 'conflict', status: 'completed', message: expect.stringContaining('completed') });
    await expect(engine.retryStep(id, 'a')).rejects.toMatchObject({ code: 'conflict', status: 'completed' });
    // rolling_back
    await engine.rollback(id);
    await expect(engine.rollback(id)).rejects.toMatchObject({ code: 'conflict', status: 'rolling_back' });
    await expect(engine.forceComplete(id)).rejects.toMatchObject({ code: 'conflict', status: 'rolling_back' });
    await expect(engine.retryStep(id, 'a')).rejects.toMatchObject({ code: 'conflict', status: 'rolling_back' });
    await engine.drain();
    // rolled_back
    for (const op of [() => engine.rollback(id), () => engine.forceComplete(id), () => engine.retryStep(id, 'a')]) {
      await expect(op()).rejects.toMatchObject({ code: 'conflict', status: 'rolled_back', message: expect.stringContaining('rolled_back') });
    }
    // existence first
    await expect(engine.retryStep(id, 'nope')).rejects.toMatchObject({ code: 'not_found' });
    await expect(engine.rollback('wf_missing')).rejects.toMatchObject({ code: 'not_found' });
    await expect(engine.forceComplete('wf_missing')).rejects.toMatchObject({ code: 'not_found' });
    await expect(engine.retryStep('wf_missing', 'a')).rejects.toMatchObject({ code: 'not_found' });
    await expect(engine.get('wf_missing')).rejects.toMatchObject({ code: 'not_found' });
  });

  it('emits events only after the transition is stored, and survives a throwing listener', async () => {
    const wf = defineWorkflow({ name: 'evented', input, steps: { a: step({ run: () => 'a' }), b: step({ run: () => 'b' }) } });
    const { engine, store, logger } = await setup([wf]);
    const checks: Promise<string>[] = [];
    engine.events.on('step:completed', (e) => {
      checks.push(store.getSteps(e.workflowId).then((rows) => `${e.stepName}:${rows.find((r) => r.name === e.stepName)?.status}`));
    });
    engine.events.on('step:completed', () => {
      throw new Error('listener bug');
    });
    const completed: string[] = [];
    engine.events.on('workflow:completed', (e) => completed.push(e.workflowId));
    const { id } = await engine.start('evented', { tenantId: 't1', input: { plan: 'x' } });
    await engine.drain();
    expect(await Promise.all(checks)).toEqual(['a:completed', 'b:completed']);
    expect(completed).toEqual([id]);
    expect((await engine.get(id)).status).toBe('completed');
    expect(logger.lines.filter((l) => l.message === 'event listener threw')).toHaveLength(2);
  });

  it('detects a workflow resumed under a changed definition instead of mis-mapping it', async () => {
    const v1 = defineWorkflow({ name: 'evolving', version: 1, input, steps: { a: step({ run: () => 'a' }), b: step({ run: () => 'b' }) } });
    const v2 = defineWorkflow({ name: 'evolving', version: 2, input, steps: { a: step({ run: () => 'a' }), c: step({ run: () => 'c' }) } });
    const { engine: engineV1, store, clock, logger } = await setup([v1]);
    const { id } = await engineV1.start('evolving', { tenantId: 't1', input: { plan: 'x' } });
    const { createEngine } = await import('../../src/engine/workflow-engine.js');
    const engineV2 = createEngine({ store, workflows: [v2], clock, logger });
    await engineV2.drain();
    const d = await engineV2.get(id);
    expect(d.definitionVersion).toBe('1');
    expect(d.status).toBe('failed');
    expect(d.steps[0]).toMatchObject({ status: 'failed', error: { code: 'definition_mismatch' } });
  });

  it('lists across tenants with filters and a keyset cursor, newest first', async () => {
    const wf = defineWorkflow({ name: 'listed', input, steps: { a: step({ run: () => 'a' }) } });
    const { engine, clock } = await setup([wf]);
    const ids: string[] = [];
    for (let i = 0; i < 7; i++) {
      ids.push((await engine.start('listed', { tenantId: i % 2 ? 'odd' : 'even', input: { plan: 'x' }, serviceSlug: `svc-${i % 3}` })).id);
      clock.advance(1000);
    }
    const seen: string[] = [];
    let cursor: string | undefined;
    for (let page = 0; page < 10; page++) {
      const res = await engine.list({ limit: 3, ...(cursor ? { cursor } : {}) });
      seen.push(...res.items.map((i) => i.id));
      if (!res.nextCursor) break;
      cursor = res.nextCursor;
    }
    expect(seen).toEqual([...ids].reverse());
    const odd = await engine.list({ tenantId: 'odd' });
    expect(odd.items.map((i) => i.id)).toEqual([ids[5], ids[3], ids[1]]);
    expect(odd.nextCursor).toBeNull();
    const svc = await engine.list({ serviceSlug: 'svc-0', tenantId: 'even' });
    expect(svc.items.map((i) => i.id)).toEqual([ids[6], ids[0]]);
    const created = new Date(Date.UTC(2026, 0, 1, 0, 0, 2));
    const window = await engine.list({ createdAfter: created, createdBefore: new Date(created.getTime() + 2000) });
    expect(window.items.map((i) => i.id)).toEqual([ids[3], ids[2]]);
    await engine.drain();
    expect((await engine.list({ status: 'completed' })).items).toHaveLength(7);
    expect((await engine.list({ status: 'failed' })).items).toHaveLength(0);
    await expect(engine.list({ limit: 0 })).rejects.toMatchObject({ code: 'validation', issues: [expect.objectContaining({ path: ['limit'] })] });
    await expect(engine.list({ limit: 201 })).rejects.toMatchObject({ code: 'validation' });
    await expect(engine.list({ cursor: 'not-a-cursor' })).rejects.toMatchObject({ code: 'validation', issues: [expect.objectContaining({ path: ['cursor'] })] });
    await expect(engine.list({ status: 'weird' as never })).rejects.toMatchObject({ code: 'validation', issues: [expect.objectContaining({ path: ['status'] })] });
  });
});
