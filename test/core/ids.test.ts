import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { defineWorkflow, step } from '../../src/core/define-workflow.js';
import { newWorkflowId } from '../../src/engine/ids.js';
import { useHarness } from '../fixtures/harness.js';
import { storeFactories } from '../support/store-factories.js';

const ID = /^wf_[0-9a-f]{32}$/;

describe('newWorkflowId', () => {
  it('is wf_ and 32 hex digits: the creation time in ms, then 80 random bits', () => {
    const at = Date.UTC(2026, 11, 6, 10, 0, 0, 123);
    const id = newWorkflowId(at);
    expect(id).toMatch(ID);
    expect(parseInt(id.slice(3, 15), 16)).toBe(at);
  });

  it('sorts ids by creation time, whatever their random parts', () => {
    const times = [0, 1, 999, 1_000, 65_535, 65_536, Date.UTC(2000, 0, 1), Date.UTC(2026, 11, 6), Date.UTC(9999, 11, 31)];
    for (let round = 0; round < 50; round++) {
      const ids = times.map((t) => newWorkflowId(t));
      expect([...ids].sort()).toEqual(ids);
    }
  });

  it('makes distinct ids within one millisecond, with every random digit varying', () => {
    const at = Date.UTC(2026, 11, 6);
    const ids = Array.from({ length: 10_000 }, () => newWorkflowId(at));
    expect(new Set(ids).size).toBe(ids.length);
    for (let digit = 15; digit < 35; digit++) {
      expect(new Set(ids.map((id) => id[digit])).size, `digit ${digit}`).toBe(16);
    }
  });

  it('takes a time it cannot encode as 0, and still makes a valid id', () => {
    for (const bad of [Number.NaN, -1, Number.NEGATIVE_INFINITY]) {
      const id = newWorkflowId(bad);
      expect(id).toMatch(ID);
      expect(id.slice(3, 15)).toBe('000000000000');
    }
  });
});

const wf = defineWorkflow({ name: 'one', input: z.object({}), steps: { a: step({ run: () => 1 }) } });

describe.each(storeFactories)('workflow ids on the $name store', (factory) => {
  const setup = useHarness(factory);

  it('encode the workflow’s creation time, so later workflows sort after earlier ones', async () => {
    const { engine, clock } = await setup([wf]);
    const first = await engine.start('one', { tenantId: 't', input: {} });
    clock.advance(5);
    const second = await engine.start('one', { tenantId: 't', input: {} });
    for (const w of [first, second]) {
      expect(w.id).toMatch(ID);
      expect(parseInt(w.id.slice(3, 15), 16)).toBe(w.createdAt.getTime());
    }
    expect(second.createdAt.getTime()).toBeGreaterThan(first.createdAt.getTime());
    expect(first.id < second.id).toBe(true);
  });
});
