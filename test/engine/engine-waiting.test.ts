import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { defineWorkflow, step } from '../../src/core/define-workflow.js';
import { createHash } from 'node:crypto';
import { storeFactories } from '../support/store-factories.js';
import { deferred, settle, until, useHarness } from '../fixtures/harness.js';

const input = z.object({ plan: z.string() });

function callbackWorkflow(tokens: string[], opts: { timeoutMs?: number; gate?: Promise<void>; maximumAttempts?: number } = {}) {
  return defineWorkflow({
    name: 'vendor',
    input,
    steps: {
      vendor_account: step({
        retry: { maximumAttempts: opts.maximumAttempts ?? 1, initialIntervalMs: 1000, jitter: 0 },
        run: async (ctx) => {
          tokens.push(ctx.callbackToken);
          if (opts.gate) await opts.gate;
          return ctx.waitForCallback<{ accountId: string }>(opts.timeoutMs !== undefined ? { timeoutMs: opts.timeoutMs } : {});
        },
      }),
      after: step({ run: (ctx) => ({ saw: ctx.deps }) }),
    },
  });
}

describe.each(storeFactories)('callbacks and polls on $name store', (factory) => {
  const setup = useHarness(factory);

  it('waits for a callback, stores only the token hash, and completes with its output', async () => {
    const tokens: string[] = [];
    const { engine, store } = await setup([callbackWorkflow(tokens, { timeoutMs: 60_000 })]);
    const waiting: string[] = [];
    engine.events.on('step:waiting_callback', (e) => waiting.push(e.stepName));
    const { id } = await engine.start('vendor', { tenantId: 't1', input: { plan: 'x' } });
    await engine.drain();
    let d = await engine.get(id);
    expect(d.steps[0]?.status).toBe('waiting_callback');
    expect(d.currentStep).toBe('vendor_account');
    expect(waiting).toEqual(['vendor_account']);
    const token = tokens[0]!;
    // `<workflow id>.<step position>.<secret>`: 256 random bits, of which only the SHA-256 is stored.
    const secret = token.slice(token.lastIndexOf('.') + 1);
    expect(token).toBe(`${id}.0.${secret}`);
    expect(secret).toMatch(/^[A-Za-z0-9_-]{43}$/);
    const rows = await store.getSteps(id);
    expect(rows[0]?.callbackTokenHash).toBe(createHash('sha256').update(secret).digest('hex'));
    expect(JSON.stringify(rows)).not.toContain(secret);
    await engine.completeCallback(token, { status: 'success', output: { accountId: 'acc_1' } });
    await engine.drain();
    d = await engine.get(id);
    expect(d.status).toBe('completed');
    expect(d.steps[0]?.output).toEqual({ accountId: 'acc_1' });
    expect(d.steps[1]?.output).toEqual({ saw: { vendor_account: { accountId: 'acc_1' } } });
  });

  it('applies a callback that arrives before the handler returned', async () => {
    const tokens: string[] = [];
    const gate = deferred();
    const { engine } = await setup([callbackWorkflow(tokens, { gate: gate.promise })]);
    const { id } = await engine.start('vendor', { tenantId: 't1', input: { plan: 'x' } });
    const ticking = engine.tick();
    await until(() => tokens.length === 1, 'handler start');
    await engine.completeCallback(tokens[0]!, { status: 'success', endpoint: 'https://db.example', credentials: { password: 'pw' } });
    expect((await engine.get(id)).steps[0]?.status).toBe('running');
    gate.resolve();
    await ticking;
    await engine.drain();
    const d = await engine.get(id);
    expect(d.steps[0]).toMatchObject({ status: 'completed', output: { endpoint: 'https://db.example', credentials: { password: 'pw' } } });
    expect(d.status).toBe('completed');
  });

  it('refuses unknown, reused and expired tokens alike', async () => {
    const tokens: string[] = [];
    const { engine, clock } = await setup([callbackWorkflow(tokens, { timeoutMs: 10_000 })]);
    const first = await engine.start('vendor', { tenantId: 't1', input: { plan: 'a' } });
    await engine.drain();
    const second = await engine.start('vendor', { tenantId: 't1', input: { plan: 'b' } });
    await engine.drain();
    expect(tokens).toHaveLength(2);
    await engine.completeCallback(tokens[0]!, { status: 'success' });
    const errors: unknown[] = [];
    const attempt = async (token: string) => {
      try {
        await engine.completeCallback(token, { status: 'success' });
        errors.push(null);
      } catch (err) {
        errors.push({ name: (err as Error).name, code: (err as { code: string }).code, message: (err as Error).message });
      }
    };
    await attempt('x'.repeat(43)); // unknown
    await attempt(tokens[0]!); // reused
    clock.advance(10_000);
    await attempt(tokens[1]!); // expired
    expect(errors).toHaveLength(3);
    expect(errors[0]).toEqual({ name: 'NotFoundError', code: 'not_found', message: 'callback token is unknown, used or expired' });
    expect(errors[1]).toEqual(errors[0]);
    expect(errors[2]).toEqual(errors[0]);
    await engine.drain();
    expect((await engine.get(first.id)).steps[0]?.status).toBe('completed');
    const timedOut = await engine.get(second.id);
    expect(timedOut.steps[0]).toMatchObject({ status: 'failed', error: { code: 'callback_timeout' } });
    expect(timedOut.status).toBe('failed');
  });

  it('a failed callback is a failed attempt: retried with a new token, the old one refused', async () => {
    const tokens: string[] = [];
    const { engine, clock } = await setup([callbackWorkflow(tokens, { maximumAttempts: 2 })]);
    const { id } = await engine.start('vendor', { tenantId: 't1', input: { plan: 'x' } });
    await engine.drain();
    await engine.completeCallback(tokens[0]!, { status: 'failed', error: { message: 'vendor rejected' } });
    let d = await engine.get(id);
    expect(d.steps[0]).toMatchObject({ status: 'pending', retryCount: 1, error: { code: 'callback_failed', message: 'vendor rejected' } });
    clock.advance(1000);
    await engine.drain();
    expect(tokens).toHaveLength(2);
    expect(tokens[1]).not.toBe(tokens[0]);
    await expect(engine.completeCallback(tokens[0]!, { status: 'success' })).rejects.toMatchObject({ code: 'not_found' });
    await engine.completeCallback(tokens[1]!, { status: 'success', output: { accountId: 'acc_2' } });
    await engine.drain();
    d = await engine.get(id);
    expect(d.status).toBe('completed');
    expect(d.steps[0]).toMatchObject({ output: { accountId: 'acc_2' }, retryCount: 1 });
  });

  it('rejects a malformed callback result with the field named', async () => {
    const tokens: string[] = [];
    const { engine } = await setup([callbackWorkflow(tokens)]);
    const { id } = await engine.start('vendor', { tenantId: 't1', input: { plan: 'x' } });
    await engine.drain();
    await expect(engine.completeCallback(tokens[0]!, { status: 'maybe' } as never)).rejects.toMatchObject({
      code: 'validation',
      issues: [expect.objectContaining({ path: ['status'] })],
    });
    expect((await engine.get(id)).steps[0]?.status).toBe('waiting_callback');
  });

  it('polls every pollIntervalMs with a durable count until done', async () => {
    let polls = 0;
    const wf = defineWorkflow({
      name: 'cert',
      input,
      steps: {
        issue_cert: step({
          pollIntervalMs: 5000,
          pollTimeoutMs: 60_000,
          run: () => ({ orderId: 'ord_1' }),
          poll: (ctx) => {
            polls++;
            expect(ctx.runOutput).toEqual({ orderId: 'ord_1' });
            return ctx.pollCount >= 2 ? { done: true, output: { cert: 'PEM', order: ctx.runOutput.orderId } } : { done: false };
          },
        }),
      },
    });
    const { engine, clock } = await setup([wf]);
    const { id } = await engine.start('cert', { tenantId: 't1', input: { plan: 'x' } });
    await engine.drain();
    let d = await engine.get(id);
    expect(d.steps[0]).toMatchObject({ status: 'waiting_poll', pollCount: 0 });
    expect(d.steps[0]?.nextPollAt?.getTime()).toBe(clock.now() + 5000);
    clock.advance(4999);
    await engine.drain();
    expect(polls).toBe(0);
    clock.advance(1);
    await engine.drain();
    d = await engine.get(id);
    expect(polls).toBe(1);
    expect(d.steps[0]).toMatchObject({ status: 'waiting_poll', pollCount: 1 });
    clock.advance(5000);
    await engine.drain();
    clock.advance(5000);
    await engine.drain();
    d = await engine.get(id);
    expect(polls).toBe(3);
    expect(d.status).toBe('completed');
    expect(d.steps[0]).toMatchObject({ status: 'completed', pollCount: 2, output: { cert: 'PEM', order: 'ord_1' } });
  });

  it('fails a poll loop with poll_timeout once pollTimeoutMs has passed', async () => {
    let polls = 0;
    const wf = defineWorkflow({
      name: 'cert_slow',
      input,
      steps: {
        issue_cert: step({
          pollIntervalMs: 4000,
          pollTimeoutMs: 10_000,
          run: () => 'ordered',
          poll: () => (polls++, { done: false }),
        }),
      },
    });
    const { engine, clock } = await setup([wf]);
    const { id } = await engine.start('cert_slow', { tenantId: 't1', input: { plan: 'x' } });
    await engine.drain();
    for (let i = 0; i < 5; i++) {
      clock.advance(4000);
      await engine.drain();
    }
    const d = await engine.get(id);
    expect(polls).toBe(2); // at 4 s and 8 s; at 10 s the deadline has passed
    expect(d.steps[0]).toMatchObject({ status: 'failed', error: { code: 'poll_timeout' } });
    expect(d.status).toBe('failed');
  });

  it('retries a throwing poll under the retry policy', async () => {
    let polls = 0;
    const wf = defineWorkflow({
      name: 'cert_flaky',
      input,
      steps: {
        issue_cert: step({
          pollIntervalMs: 1000,
          retry: { maximumAttempts: 2, initialIntervalMs: 500, jitter: 0 },
          run: () => 'ordered',
          poll: () => {
            polls++;
            if (polls === 1) throw new Error('ca unavailable');
            return { done: true, output: 'cert' };
          },
        }),
      },
    });
    const { engine, clock } = await setup([wf]);
    const { id } = await engine.start('cert_flaky', { tenantId: 't1', input: { plan: 'x' } });
    await engine.drain();
    clock.advance(1000);
    await engine.drain();
    let d = await engine.get(id);
    expect(d.steps[0]).toMatchObject({ status: 'waiting_poll', retryCount: 1, error: { message: 'ca unavailable' } });
    clock.advance(500);
    await engine.drain();
    d = await engine.get(id);
    expect(d.steps[0]).toMatchObject({ status: 'completed', output: 'cert', retryCount: 1 });
    await settle();
  });
});
