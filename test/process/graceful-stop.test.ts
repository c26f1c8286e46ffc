/**
 * A graceful stop while steps run (`engine.stop()`): the handlers already running finish and their results are
 * stored before `stop()` resolves, nothing new starts once the stop was
 * requested, and the host can then close its database and exit without any
 * step having to run again elsewhere.
 */
import { sql } from 'kysely';
import { describe, expect, it } from 'vitest';
import { reportedCase } from '../reliability/support/report.js';
import {
  EngineProcess,
  checkedWorkflows,
  processDatabasePerTest,
  waitFor,
} from './process-harness.js';

describe.each(['postgres', 'sqlite'] as const)('a graceful stop in the middle of steps (%s)', (storeName) => {
  const openDatabase = processDatabasePerTest();

  it('stores the results of the running handlers before stop() resolves, and starts nothing after it was asked to stop', () =>
    reportedCase({ suite: 'graceful-stop', fault: 'engine.stop() while steps run', stores: [storeName] }, async (tally) => {
      const db = await openDatabase(storeName);
      const N = 4;
      // s1 ends well within the shutdown timeout. An s2 started by A during the stop would never end
      // (held), so the stop would abandon it after its side effect, and it would run again elsewhere.
      const a = await EngineProcess.spawn({
        workerId: 'stop_a',
        database: db.target,
        effects: db.effectsTarget,
        concurrency: N,
        idlePollMs: 20,
        leaseMs: 2000,
        shutdownTimeoutMs: 1500,
        hold: { step: 's2', mode: 'forever' },
      });
      const { ids, errors } = await a.start('pw_linear5', { count: N, input: { sleepMs: { s1: 1000 } } });
      expect(errors).toEqual([]);
      await a.work();
      await waitFor(async () => (await db.effects()).filter((e) => e.stepName === 's1').length === N, 'every s1 to be running', 20_000, 10);

      // Asked to stop while every s1 handler sleeps: they finish, their results must be stored, nothing else may start.
      const before = await db.effects();
      await a.stop(20_000);
      const afterStop = await db.effects();
      expect(afterStop.filter((e) => !before.some((b) => b.id === e.id)).map((e) => `${e.stepName}#${e.attempt}`)).toEqual([]);
      for (const id of ids) {
        const s1 = (await db.store.getSteps(id)).find((s) => s.name === 's1')!;
        expect({ id, status: s1.status, output: s1.output }).toEqual({ id, status: 'completed', output: { attempt: 1, worker: 'stop_a' } });
      }
      expect(a.problems()).toEqual([]);

      const b = await EngineProcess.spawn({ workerId: 'stop_b', database: db.target, effects: db.effectsTarget, concurrency: N, idlePollMs: 20, leaseMs: 2000 });
      await b.work();
      await waitFor(async () => (await db.statusCounts(ids))['completed'] === N, 'B to finish the workflows', 30_000);
      await b.stop();
      for (const { effects: mine } of await checkedWorkflows(db, ids)) {
        expect(mine.map((e) => [e.stepName, e.attempt, e.worker])).toEqual([
          ['s1', 1, 'stop_a'],
          ['s2', 1, 'stop_b'],
          ['s3', 1, 'stop_b'],
          ['s4', 1, 'stop_b'],
          ['s5', 1, 'stop_b'],
        ]);
      }
      const reclaims = await sql<{ n: number }>`select count(*) as n from sagaline_history where action = 'lease_reclaimed'`.execute(db.db);
      expect(Number(reclaims.rows[0]!.n)).toBe(0);
      tally.iterations++;
    }),
  );
});
