import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { defineWorkflow, step } from '../../src/core/define-workflow.js';
import { NonRetryableError } from '../../src/errors.js';
import { storeFactories } from '../support/store-factories.js';
import { createManualClock } from '../../src/core/clock.js';
import { deferred, settle, until, useHarness } from '../fixtures/harness.js';

const input = z.object({ plan: z.string() });

describe.each(storeFactories)('engine execution on $name store', (factory) => {
  const setup = useHarness(factory);

  it('runs a linear workflow in order, passing dependency outputs and a stable idempotency key', async () => {
    const seen: { step: string; deps: unknown; key: string; attempt: number }[] = [];
    const wf = defineWorkflow({
      name: 'linear',
      input,
      steps: {
        a: step({ run: (ctx) => (seen.push({ step: 'a', deps: ctx.deps, key: ctx.idempotencyKey, attempt: ctx.attempt }), { a: ctx.input.plan }) }),
        b: step({ run: (ctx) => (seen.push({ step: 'b', deps: ctx.deps, key: ctx.idempotencyKey, attempt: ctx.attempt }), { b: 2 }) }),
        c: step({ run: (ctx) => (seen.push({ step: 'c', deps: ctx.deps, key: ctx.idempotencyKey, attempt: ctx.attempt }), 'done') }),
      },
    });
    const { engine } = await setup([wf]);
    const started = await engine.start('linear', { tenantId: 't1', input: { plan: 'pro' } });
    expect(started.status).toBe('pending');
    expect(started.steps.map((s) => [s.name, s.status, s.dependsOn])).toEqual([
      ['a', 'pending', []],
      ['b', 'pending', ['a']],
      ['c', 'pending', ['b']],
    ]);
    await engine.drain();
    const done = await engine.get(started.id);
    expect(done.status).toBe('completed');
    expect(done.completedAt).toBeInstanceOf(Date);
    expect(done.steps.map((s) => s.status)).toEqual(['completed', 'completed', 'completed']);
    expect(done.output).toEqual({ a: { a: 'pro' }, b: { b: 2 }, c: 'done' });
    expect(seen).toEqual([
      { step: 'a', deps: {}, key: `${started.id}:a`, attempt: 1 },
      { step: 'b', deps: { a: { a: 'pro' } }, key: `${started.id}:b`, attempt: 1 },
      { step: 'c', deps: { b: { b: 2 } }, key: `${started.id}:c`, attempt: 1 },
    ]);
    const transitions = done.history.filter((h) => h.kind === 'workflow').map((h) => `${h.from}->${h.to}`);
    expect(transitions).toEqual(['null->pending', 'pending->running', 'running->completed']);
  });

  it('runs independent branches concurrently and joins them', async () => {
    const gates = { left: deferred(), right: deferred() };
    const running = new Set<string>();
    let maxParallel = 0;
    const branch = (name: 'left' | 'right') =>
      step({
        dependsOn: ['root'],
        run: async () => {
          running.add(name);
          maxParallel = Math.max(maxParallel, running.size);
          await gates[name].promise;
          running.delete(name);
          return name;
        },
      });
    const wf = defineWorkflow({
      name: 'diamond',
      input,
      steps: {
        root: step({ run: () => 'r' }),
        left: branch('left'),
        right: branch('right'),
        join: step({ dependsOn: ['left', 'right'], run: (ctx) => ctx.deps }),
      },
    });
    const { engine } = await setup([wf]);
    const { id } = await engine.start('diamond', { tenantId: 't1', input: { plan: 'x' } });
    await engine.tick(); // root
    const ticking = engine.tick(); // left and right together
    await until(() => running.size === 2, 'both branches running');
    expect([...running].sort()).toEqual(['left', 'right']);
    gates.left.resolve();
    gates.right.resolve();
    await ticking;
    await engine.drain();
    const done = await engine.get(id);
    expect(maxParallel).toBe(2);
    expect(done.status).toBe('completed');
    expect(done.steps.find((s) => s.name === 'join')?.output).toEqual({ left: 'left', right: 'right' });
  });

  it('respects the concurrency limit', async () => {
    const gate = deferred();
    let active = 0;
    let peak = 0;
    const wf = defineWorkflow({
      name: 'wide',
      input,
      steps: Object.fromEntries(
        ['s1', 's2', 's3', 's4', 's5'].map((n) => [
          n,
          step({
            dependsOn: [],
            run: async () => {
              active++;
              peak = Math.max(peak, active);
              await gate.promise;
              active--;
              return n;
            },
          }),
        ]),
      ),
    });
    const { engine } = await setup([wf], { concurrency: 2 });
    const { id } = await engine.start('wide', { tenantId: 't1', input: { plan: 'x' } });
    const ticking = engine.tick();
    await until(() => active === 2, 'two handlers');
    await settle();
    expect(active).toBe(2);
    gate.resolve();
    await ticking;
    await engine.drain();
    expect(peak).toBe(2);
    expect((await engine.get(id)).status).toBe('completed');
  });

  it('retries a step that fails twice with the configured backoff, then completes with retry_count 2', async () => {
    let calls = 0;
    const wf = defineWorkflow({
      name: 'flaky',
      input,
      steps: {
        flaky: step({
          retry: { maximumAttempts: 4, initialIntervalMs: 1000, backoffCoefficient: 3, jitter: 0 },
          run: () => {
            calls++;
            if (calls <= 2) throw new Error(`boom ${calls}`);
            return { ok: true };
          },
        }),
        after: step({ run: () => 'after' }),
      },
    });
    const { engine, clock } = await setup([wf]);
    const retries: number[] = [];
    engine.events.on('step:retry_scheduled', (e) => retries.push(e.delayMs));
    const { id } = await engine.start('flaky', { tenantId: 't1', input: { plan: 'x' } });
    await engine.drain();
    let wfNow = await engine.get(id);
    expect(wfNow.steps[0]).toMatchObject({ status: 'pending', retryCount: 1, error: { code: 'step_failed', message: 'boom 1' } });
    expect(wfNow.steps[0]?.nextAttemptAt?.getTime()).toBe(clock.now() + 1000);
    clock.advance(999);
    expect(await engine.drain()).toBe(0);
    clock.advance(1);
    await engine.drain();
    wfNow = await engine.get(id);
    expect(wfNow.steps[0]).toMatchObject({ status: 'pending', retryCount: 2 });
    expect(wfNow.steps[0]?.nextAttemptAt?.getTime()).toBe(clock.now() + 3000);
    clock.advance(3000);
    await engine.drain();
    wfNow = await engine.get(id);
    expect(calls).toBe(3);
    expect(retries).toEqual([1000, 3000]);
    expect(wfNow.status).toBe('completed');
    expect(wfNow.steps[0]).toMatchObject({ status: 'completed', retryCount: 2, attempts: 3, maxRetries: 3, error: null });
    expect(wfNow.retryCount).toBe(2);
  });

  it('fails at once on a NonRetryableError and halts the workflow (onFailure defaults to halt)', async () => {
    let calls = 0;
    const wf = defineWorkflow({
      name: 'fatal',
      input,
      steps: {
        a: step({
          retry: { maximumAttempts: 5 },
          run: () => {
            calls++;
            throw new NonRetryableError('plan does not exist', { code: 'unknown_plan' });
          },
        }),
        b: step({ run: () => 'never' }),
      },
    });
    const { engine } = await setup([wf]);
    const failed: string[] = [];
    engine.events.on('workflow:failed', (e) => failed.push(e.error.code));
    const { id } = await engine.start('fatal', { tenantId: 't1', input: { plan: 'x' } });
    await engine.drain();
    const d = await engine.get(id);
    expect(calls).toBe(1);
    expect(d.status).toBe('failed');
    expect(d.error).toEqual({ code: 'unknown_plan', message: 'plan does not exist', step: 'a' });
    expect(d.currentStep).toBe('a');
    expect(d.steps.map((s) => s.status)).toEqual(['failed', 'pending']);
    expect(failed).toEqual(['unknown_plan']);
  });

  it('honours nonRetryableErrors and the isRetryable predicate', async () => {
    let calls = 0;
    const wf = defineWorkflow({
      name: 'predicates',
      input,
      steps: {
        a: step({
          retry: { maximumAttempts: 5, nonRetryableErrors: ['QuotaError'] },
          run: () => {
            calls++;
            const e = new Error('quota');
            e.name = 'QuotaError';
            throw e;
          },
        }),
      },
    });
    const { engine } = await setup([wf]);
    const { id } = await engine.start('predicates', { tenantId: 't1', input: { plan: 'x' } });
    await engine.drain();
    expect(calls).toBe(1);
    expect((await engine.get(id)).steps[0]?.status).toBe('failed');
  });

  it("gives a handler's signal the attempt's end, however late the handler first reads it", async () => {
    const contexts: { signal: AbortSignal }[] = [];
    let release!: () => void;
    const wf = defineWorkflow({
      name: 'late-signal',
      input,
      steps: {
        quick: step({ run: (ctx) => (contexts.push(ctx), 'ok') }),
        // Reads nothing of ctx until after its attempt timed out.
        slow: step({
          dependsOn: ['quick'],
          timeoutMs: 1000,
          retry: { maximumAttempts: 1 },
          run: (ctx) => new Promise((resolve) => (release = () => resolve(contexts.push(ctx)))),
        }),
      },
    });
    const { engine, clock } = await setup([wf]);
    const { id } = await engine.start('late-signal', { tenantId: 't1', input: { plan: 'x' } });
    await engine.tick();
    expect(contexts).toHaveLength(1);
    const ticking = engine.tick();
    await until(() => release !== undefined, 'slow step running');
    clock.advance(1000);
    await ticking;
    release();
    await settle();
    const [quick, slow] = contexts;
    // The finished attempt's signal is aborted with the "finished" reason; the timed-out one with the timeout.
    expect(quick?.signal.aborted).toBe(true);
    expect(quick?.signal.reason).toMatchObject({ why: 'finished' });
    expect(slow?.signal.aborted).toBe(true);
    expect(slow?.signal.reason).toMatchObject({ name: 'StepTimeoutError' });
    expect((await engine.get(id)).steps.map((s) => s.status)).toEqual(['completed', 'failed']);
  });


  it('takes a handler result from any thenable, and records a thenable whose then throws as a failed attempt', async () => {
    const wf = defineWorkflow({
      name: 'thenables',
      input,
      steps: {
        // Not a Promise: an object with a `then` method, as some client libraries return.
        custom: step({ run: () => ({ then: (resolve: (v: unknown) => void) => resolve({ from: 'thenable' }) }) as unknown as Promise<{ from: string }> }),
        broken: step({
          dependsOn: ['custom'],
          retry: { maximumAttempts: 1 },
          run: () =>
            ({
              then: () => {
                throw new Error('then exploded');
              },
            }) as unknown as Promise<unknown>,
        }),
      },
    });
    const { engine } = await setup([wf]);
    const { id } = await engine.start('thenables', { tenantId: 't1', input: { plan: 'x' } });
    await engine.drain();
    const d = await engine.get(id);
    expect(d.steps.map((s) => [s.name, s.status])).toEqual([
      ['custom', 'completed'],
      ['broken', 'failed'],
    ]);
    expect(d.steps[0]?.output).toEqual({ from: 'thenable' });
    expect(d.steps[1]?.error).toMatchObject({ message: 'then exploded' });
  });

  it('hands every handler a context whose signal and logger are own enumerable properties, so a spread copies them', async () => {
    const keys: Record<string, string[]> = {};
    const copies: Record<string, { signal: unknown; logger: unknown }> = {};
    const capture = (kind: string, ctx: object & { signal: AbortSignal; logger: unknown }) => {
      keys[kind] = Object.keys(ctx).sort();
      const copy = { ...ctx };
      copies[kind] = { signal: copy.signal, logger: copy.logger };
      // The copy holds the attempt's own signal and logger, not getters of its own.
      expect(Object.getOwnPropertyDescriptor(copy, 'signal')?.value).toBe(ctx.signal);
      expect(Object.getOwnPropertyDescriptor(copy, 'logger')?.value).toBe(ctx.logger);
    };
    const wf = defineWorkflow({
      name: 'context-shape',
      input,
      steps: {
        polled: step({
          run: (ctx) => (capture('run', ctx), { n: 1 }),
          poll: (ctx) => (capture('poll', ctx), { done: true, output: { n: 2 } }),
          compensate: (ctx) => capture('compensate', ctx),
          pollIntervalMs: 10,
        }),
        fails: step({
          dependsOn: ['polled'],
          retry: { maximumAttempts: 1 },
          run: () => {
            throw new NonRetryableError('no');
          },
        }),
      },
    });
    const { engine, clock } = await setup([wf]);
    const { id } = await engine.start('context-shape', { tenantId: 't1', input: { plan: 'x' } });
    await engine.drain();
    clock.advance(10);
    await engine.drain();
    expect((await engine.get(id)).status).toBe('failed');
    await engine.rollback(id);
    await engine.drain();
    expect((await engine.get(id)).status).toBe('rolled_back');
    const base = ['attempt', 'deps', 'idempotencyKey', 'input', 'logger', 'retryCount', 'signal', 'stepName', 'tenantId', 'workflowId'];
    expect(keys).toEqual({
      run: [...base, 'callbackToken', 'waitForCallback'].sort(),
      poll: [...base, 'pollCount', 'runOutput'].sort(),
      compensate: ['attempt', 'idempotencyKey', 'input', 'logger', 'output', 'signal', 'stepName', 'tenantId', 'workflowId'],
    });
    for (const kind of ['run', 'poll', 'compensate']) {
      expect(copies[kind]?.signal).toBeInstanceOf(AbortSignal);
      expect(typeof (copies[kind]?.logger as { info?: unknown }).info).toBe('function');
    }
  });
  it('aborts a handler that exceeds timeoutMs and counts it as a failed attempt', async () => {
    let signalAborted = false;
    let calls = 0;
    const wf = defineWorkflow({
      name: 'slow',
      input,
      steps: {
        slow: step({
          timeoutMs: 5000,
          retry: { maximumAttempts: 2, initialIntervalMs: 100, jitter: 0 },
          run: (ctx) => {
            calls++;
            return new Promise((_, reject) => {
              ctx.signal.addEventListener('abort', () => {
                signalAborted = true;
                reject(new Error('aborted by signal'));
              });
            });
          },
        }),
      },
    });
    const { engine, clock } = await setup([wf]);
    const { id } = await engine.start('slow', { tenantId: 't1', input: { plan: 'x' } });
    const ticking = engine.tick();
    await until(() => calls === 1, 'first attempt');
    clock.advance(4999);
    await settle();
    expect(signalAborted).toBe(false);
    clock.advance(1);
    await ticking;
    expect(signalAborted).toBe(true);
    let d = await engine.get(id);
    expect(d.steps[0]).toMatchObject({ status: 'pending', retryCount: 1, error: { code: 'timeout' } });
    clock.advance(100);
    const second = engine.tick();
    await until(() => calls === 2, 'second attempt');
    clock.advance(5000);
    await second;
    d = await engine.get(id);
    expect(calls).toBe(2);
    expect(d.status).toBe('failed');
    expect(d.steps[0]).toMatchObject({ status: 'failed', error: { code: 'timeout' } });
  });

  it('rejects invalid input with the field named, and an unknown type', async () => {
    const wf = defineWorkflow({ name: 'typed', input, steps: { a: step({ run: () => 1 }) } });
    const { engine } = await setup([wf]);
    await expect(engine.start('typed', { tenantId: 't1', input: { plan: 3 } })).rejects.toMatchObject({
      code: 'validation',
      issues: [expect.objectContaining({ path: ['input', 'plan'] })],
    });
    await expect(engine.start('nope', { tenantId: 't1', input: {} })).rejects.toMatchObject({ code: 'validation', issues: [expect.objectContaining({ path: ['type'] })] });
    await expect(engine.start('typed', { tenantId: '', input: { plan: 'x' } })).rejects.toMatchObject({
      code: 'validation',
      issues: [expect.objectContaining({ path: ['tenantId'] })],
    });
    expect((await engine.list()).items).toHaveLength(0);
  });

  it('returns the existing workflow for a repeated idempotency key of the same tenant', async () => {
    const wf = defineWorkflow({ name: 'idem', input, steps: { a: step({ run: () => 1 }) } });
    const { engine } = await setup([wf]);
    let started = 0;
    engine.events.on('workflow:started', () => started++);
    const first = await engine.start('idem', { tenantId: 't1', input: { plan: 'x' }, idempotencyKey: 'k1' });
    const again = await engine.start('idem', { tenantId: 't1', input: { plan: 'y' }, idempotencyKey: 'k1' });
    const other = await engine.start('idem', { tenantId: 't2', input: { plan: 'x' }, idempotencyKey: 'k1' });
    expect(again.id).toBe(first.id);
    expect(again.input).toEqual({ plan: 'x' });
    expect(other.id).not.toBe(first.id);
    expect(started).toBe(2);
  });

  it('reclaims the step of a frozen worker after its lease expires and discards the late result', async () => {
    const gate = deferred<string>();
    const attempts: number[] = [];
    const wf = defineWorkflow({
      name: 'lease',
      input,
      steps: {
        a: step({
          retry: { maximumAttempts: 3 },
          run: async (ctx) => {
            attempts.push(ctx.attempt);
            return ctx.attempt === 1 ? gate.promise : 'second';
          },
        }),
      },
    });
    const { engine, clock, otherEngine, logger } = await setup([wf], { leaseMs: 30_000 });
    const { id } = await engine.start('lease', { tenantId: 't1', input: { plan: 'x' } });
    // A frozen process: its own timers (heartbeat, timeout) never fire.
    const zombie = otherEngine({ clock: createManualClock() });
    const zombieTick = zombie.tick();
    await until(() => attempts.length === 1, 'first attempt');
    clock.advance(29_999);
    expect(await engine.tick()).toBe(0);
    clock.advance(1);
    await engine.drain();
    let d = await engine.get(id);
    expect(attempts).toEqual([1, 2]);
    expect(d.status).toBe('completed');
    expect(d.steps[0]).toMatchObject({ status: 'completed', output: 'second', attempts: 2, retryCount: 1 });
    expect(d.history.some((h) => h.kind === 'note' && h.action === 'lease_reclaimed' && h.stepName === 'a')).toBe(true);
    gate.resolve('first-late');
    await zombieTick;
    d = await engine.get(id);
    expect(d.steps[0]?.output).toBe('second');
    expect(logger.lines.some((l) => l.message.includes('lease was lost'))).toBe(true);
  });

  it('keeps the lease of a live handler alive with heartbeats', async () => {
    const gate = deferred<string>();
    let calls = 0;
    const wf = defineWorkflow({
      name: 'heartbeat',
      input,
      steps: { a: step({ timeoutMs: 600_000, run: async () => (calls++, gate.promise) }) },
    });
    const { engine, clock, otherEngine, store } = await setup([wf], { leaseMs: 30_000 });
    const { id } = await engine.start('heartbeat', { tenantId: 't1', input: { plan: 'x' } });
    const ticking = engine.tick();
    await until(() => calls === 1, 'handler start');
    const other = otherEngine();
    for (let i = 0; i < 12; i++) {
      clock.advance(10_000);
      // The heartbeat due now extends the lease to now + leaseMs.
      await until(async () => ((await store.getSteps(id))[0]?.leaseExpiresAt?.getTime() ?? 0) >= clock.now() + 30_000, 'heartbeat');
      expect(await other.tick()).toBe(0);
    }
    gate.resolve('ok');
    await ticking;
    const d = await engine.get(id);
    expect(calls).toBe(1);
    expect(d.steps[0]).toMatchObject({ status: 'completed', output: 'ok', attempts: 1, retryCount: 0 });
  });
}, 60_000);
