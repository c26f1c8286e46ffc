/**
 * The Postgres store sends times as ISO text, never as `Date` objects, in
 * every kind of write (creates, claims, results, admin operations): the
 * `pg` driver formats a `Date` itself, in local time, through a dozen small
 * strings per value (about a tenth of all the memory the store allocated per
 * workflow under group commit). Every statement casts its time parameters,
 * so the stored times are the same instants; the engine and store suites
 * check those.
 */
import type { Kysely } from 'kysely';
import { afterEach, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { createManualClock } from '../../src/core/clock.js';
import { defineWorkflow, step } from '../../src/core/define-workflow.js';
import { createEngine } from '../../src/engine/workflow-engine.js';
import { migrateToLatest } from '../../src/stores/kysely/kysely-migrations.js';
import { timeParameter } from '../../src/stores/kysely/kysely-cas-write.js';
import { KyselyWorkflowStore } from '../../src/stores/kysely/kysely-workflow-store.js';
import { createPostgresSchema } from '../support/databases.js';
import { recordingKysely } from '../support/recording-pool.js';

const T0 = Date.UTC(2026, 0, 1);

/** A Kysely instance whose connections record the parameters of every statement they run. */
function recordingDb(url: string): { db: Kysely<any>; parameters: unknown[][] } {
  const parameters: unknown[][] = [];
  const db = recordingKysely(url, ({ values }) => {
    if (Array.isArray(values)) parameters.push(values);
  });
  return { db, parameters };
}

/** Every parameter, and every element of an array parameter (the batched creates send columns as arrays). */
function flatten(parameters: unknown[][]): unknown[] {
  return parameters.flat().flatMap((value) => (Array.isArray(value) ? value : [value]));
}

describe('time parameters (Postgres)', () => {
  const cleanups: (() => Promise<void>)[] = [];
  afterEach(async () => {
    while (cleanups.length) await cleanups.pop()!();
  });

  for (const groupCommit of [false, true]) {
    it(`are ISO text in every statement of a workflow's life, with groupCommit ${String(groupCommit)}`, async () => {
      const database = await createPostgresSchema();
      cleanups.push(() => database.cleanup());
      await migrateToLatest(database.db, { schema: database.schema });
      const { db, parameters } = recordingDb(database.url);
      cleanups.push(() => db.destroy());
      const clock = createManualClock(T0);
      const store = new KyselyWorkflowStore({ db, schema: database.schema, clock, groupCommit });
      let failures = 1;
      const wf = defineWorkflow({
        name: 'timed',
        input: z.object({ n: z.number() }),
        steps: {
          first: step({ run: () => ({ at: 'first' }) }),
          flaky: step({
            dependsOn: ['first'],
            retry: { maximumAttempts: 2, initialIntervalMs: 1_000, jitter: 0 },
            run: () => {
              if (failures-- > 0) throw new Error('once');
              return { ok: true };
            },
          }),
        },
      });
      const engine = createEngine({ store, workflows: [wf], clock });
      const started = await Promise.all([1, 2, 3].map((n) => engine.start('timed', { tenantId: 't', input: { n } })));
      await engine.drain();
      clock.advance(1_000);
      await engine.drain();
      for (const { id } of started) expect((await engine.get(id)).status).toBe('completed');
      // An admin operation writes under the workflow's lock (with group commit, in a locked batch).
      await engine.rollback(started[1]!.id, { actor: 'ops', reason: 'undo' });
      await engine.drain();
      expect((await engine.get(started[1]!.id)).status).toBe('rolled_back');
      const listed = await engine.list({ createdAfter: new Date(T0 - 1), limit: 10 });
      expect(listed.items).toHaveLength(3);

      const values = flatten(parameters);
      expect(values.length).toBeGreaterThan(0);
      expect(values.filter((v) => v instanceof Date)).toEqual([]);
      // The times went as text: the workflows' creation time is among them.
      expect(values).toContain(new Date(T0).toISOString());
      const detail = await engine.get(started[0]!.id);
      expect(detail.createdAt).toEqual(new Date(T0));
    });
  }
});

describe('timeParameter', () => {
  it('formats each time as its own, whichever it formatted last, and rejects an invalid date', () => {
    const a = new Date('2026-01-02T03:04:05.006Z');
    const b = new Date('2027-06-07T08:09:10.011Z');
    expect([a, a, b, new Date(a.getTime()), b].map(timeParameter)).toEqual([
      '2026-01-02T03:04:05.006Z',
      '2026-01-02T03:04:05.006Z',
      '2027-06-07T08:09:10.011Z',
      '2026-01-02T03:04:05.006Z',
      '2027-06-07T08:09:10.011Z',
    ]);
    // A date changed in place after it was formatted is formatted afresh.
    a.setTime(Date.UTC(2030, 0, 1));
    expect(timeParameter(a)).toBe('2030-01-01T00:00:00.000Z');
    expect(() => timeParameter(new Date(Number.NaN))).toThrow(RangeError);
    expect(timeParameter(a)).toBe('2030-01-01T00:00:00.000Z');
  });
});
