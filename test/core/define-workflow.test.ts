import { describe, expect, expectTypeOf, it } from 'vitest';
import { z } from 'zod';
import { defineWorkflow, step } from '../../src/core/define-workflow.js';

const input = z.object({ plan: z.string() });
const run = () => 'ok';

describe('defineWorkflow', () => {
  it('defaults each step to depend on the one declared before it, and onFailure to halt', () => {
    const wf = defineWorkflow({ name: 'w', input, steps: { a: step({ run }), b: step({ run }), c: step({ dependsOn: ['a'], run }), d: step({ dependsOn: [], run }) } });
    expect(wf.steps.map((s) => [s.name, s.dependsOn])).toEqual([
      ['a', []],
      ['b', ['a']],
      ['c', ['a']],
      ['d', []],
    ]);
    expect(wf.onFailure).toBe('halt');
    expect(wf.steps[0]?.retry).toEqual({ maximumAttempts: 3, initialIntervalMs: 1000, backoffCoefficient: 2, maximumIntervalMs: 100_000, jitter: 0.2, nonRetryableErrors: [] });
  });

  it('rejects cycles with the names in the message', () => {
    expect(() =>
      defineWorkflow({ name: 'w', input, steps: { a: step({ dependsOn: ['c'], run }), b: step({ dependsOn: ['a'], run }), c: step({ dependsOn: ['b'], run }) } }),
    ).toThrowError(/cycle: (a -> b -> c -> a|b -> c -> a -> b|c -> a -> b -> c)/);
    expect(() => defineWorkflow({ name: 'w', input, steps: { a: step({ dependsOn: ['a'], run }) } })).toThrowError(/cycle: a -> a/);
  });

  it('rejects unknown dependencies and duplicate names, naming them', () => {
    expect(() => defineWorkflow({ name: 'w', input, steps: { a: step({ run }), b: step({ dependsOn: ['a', 'ghost', 'phantom'], run }) } })).toThrowError(
      /step "b" depends on unknown steps: ghost, phantom/,
    );
    const base = defineWorkflow({ name: 'w', input }).step('a', { run });
    expect(() => (base as any).step('a', { run })).toThrowError(/duplicate step names: a/);
    expect(() => defineWorkflow({ name: 'w', input, steps: {} })).toThrowError(/has no steps/);
  });

  it('rejects bad retry values with the step and field named', () => {
    expect(() => defineWorkflow({ name: 'w', input, steps: { db: step({ run, retry: { maximumAttempts: 0 } }) } })).toThrowError(
      /step "db": invalid retry policy field "maximumAttempts"/,
    );
    expect(() => defineWorkflow({ name: 'w', input, steps: { db: step({ run, retry: { backoffCoefficient: 0.5 } }) } })).toThrowError(/"backoffCoefficient"/);
    expect(() => defineWorkflow({ name: 'w', input, steps: { db: step({ run, retry: { initialIntervalMs: 500, maximumIntervalMs: 100 } }) } })).toThrowError(
      /"maximumIntervalMs": 100 is below initialIntervalMs 500/,
    );
    expect(() => defineWorkflow({ name: 'w', input, steps: { db: step({ run, retry: { maxAttempts: 3 } as never }) } })).toThrowError(/maxAttempts/);
    expect(() => defineWorkflow({ name: 'w', input, steps: { db: step({ run, timeoutMs: -1 }) } })).toThrowError(/step "db": "timeoutMs" must be an integer/);
    expect(() => defineWorkflow({ name: 'w', input, steps: { db: step({ run, pollIntervalMs: 1.5 }) } })).toThrowError(/"pollIntervalMs"/);
  });

  it('rejects bad names, a missing schema and a bad onFailure', () => {
    expect(() => defineWorkflow({ name: 'has space', input, steps: { a: step({ run }) } })).toThrowError(/workflow name "has space" is invalid/);
    expect(() => defineWorkflow({ name: 'w', input: {} as never, steps: { a: step({ run }) } })).toThrowError(/"input" must be a zod schema/);
    expect(() => defineWorkflow({ name: 'w', input, onFailure: 'retry' as never, steps: { a: step({ run }) } })).toThrowError(/onFailure/);
    expect(() => defineWorkflow({ name: 'w', input, steps: { 'bad name': step({ run }) } })).toThrowError(/step "bad name": invalid step name/);
    expect(() => defineWorkflow({ name: 'w', input, steps: { a: { run } as never } })).toThrowError(/not created with step\(\)/);
  });

  it('derives a version from the step graph unless one is given', () => {
    const a = defineWorkflow({ name: 'w', input, steps: { a: step({ run }), b: step({ run }) } });
    const same = defineWorkflow({ name: 'w', input, steps: { a: step({ run: () => 'other body' }), b: step({ run }) } });
    const rewired = defineWorkflow({ name: 'w', input, steps: { a: step({ run }), b: step({ dependsOn: [], run }) } });
    expect(a.version).toBe(same.version);
    expect(a.version).not.toBe(rewired.version);
    expect(defineWorkflow({ name: 'w', version: 7, input, steps: { a: step({ run }) } }).version).toBe('7');
  });

  it('types dependency outputs in the builder form', () => {
    const wf = defineWorkflow({ name: 'typed', input })
      .step('create_database', { run: async () => ({ dbId: 'db_1' }) })
      .step('register_dns', {
        dependsOn: ['create_database'],
        run: async (ctx) => {
          expectTypeOf(ctx.deps.create_database).toEqualTypeOf<{ dbId: string }>();
          expectTypeOf(ctx.input).toEqualTypeOf<{ plan: string }>();
          return { host: `${ctx.deps.create_database.dbId}.example.com` };
        },
      })
      .step('vendor', { run: (ctx) => ctx.waitForCallback<{ accountId: string }>() })
      .step('cert', { run: () => ({ orderId: 'o' }), poll: (ctx) => ({ done: true as const, output: { pem: ctx.runOutput.orderId } }) })
      .step('summary', {
        dependsOn: ['register_dns', 'vendor', 'cert'],
        run: (ctx) => {
          expectTypeOf(ctx.deps.vendor).toEqualTypeOf<{ accountId: string }>();
          expectTypeOf(ctx.deps.cert).toEqualTypeOf<{ pem: string }>();
          expectTypeOf(ctx.deps.register_dns).toEqualTypeOf<{ host: string }>();
          return 'ok';
        },
      });
    expect(wf.steps.map((s) => s.name)).toEqual(['create_database', 'register_dns', 'vendor', 'cert', 'summary']);
    expect(wf.steps[2]?.dependsOn).toEqual(['register_dns']);
    // @ts-expect-error a dependency must be a step defined earlier
    expect(() => wf.step('late', { dependsOn: ['nope'], run })).toThrowError(/depends on unknown steps: nope/);
  });
});
