/**
 * Engine processes that die or freeze in the middle of a step, on one Postgres
 * database: a lease that is kept alive is never taken, a lease
 * that expires is reclaimed by another process which finishes the workflow,
 * completed steps never run again, and a frozen process that comes back with
 * a result after its lease was reclaimed is turned away by the lease fence.
 */
import { sql } from 'kysely';
import { describe, expect, it } from 'vitest';
import { readStored } from '../reliability/support/invariants.js';
import { reportedCase } from '../reliability/support/report.js';
import {
  EngineProcess,
  checkedWorkflows,
  delay,
  processDatabasePerTest,
  waitFor,
} from './process-harness.js';

const LEASE_MS = 1500;

describe('engine processes that crash or freeze mid-step (Postgres)', () => {
  const openDatabase = processDatabasePerTest();

  const reported = (fault: string, body: () => Promise<void>) => () =>
    reportedCase({ suite: 'crashes', fault, stores: ['postgres'] }, async (tally) => {
      await body();
      tally.iterations++;
    });

  it(
    'a SIGKILLed worker: its live leases are respected, then reclaimed once expired, and finished by another process',
    reported('SIGKILL of a worker while a step runs; live leases kept, expired ones reclaimed', async () => {
      const db = await openDatabase('postgres');
      const N = 8;
      const a = await EngineProcess.spawn({
        workerId: 'crash_a',
        database: db.target,
        effects: db.effectsTarget,
        leaseMs: LEASE_MS,
        concurrency: N + 2,
        idlePollMs: 50,
        hold: { step: 's2', mode: 'forever' },
      });
      const { ids, errors } = await a.start('pw_linear5', { count: N });
      expect(errors).toEqual([]);
      await a.work();
      // Each workflow's s2 is running in process A: the handler wrote its effect row and blocks.
      await waitFor(
        async () => (await db.effects()).filter((e) => e.stepName === 's2').length === N,
        'every s2 running in process A',
        20_000,
      );

      const b = await EngineProcess.spawn({ workerId: 'crash_b', database: db.target, effects: db.effectsTarget, leaseMs: 10_000, concurrency: N + 2, idlePollMs: 50 });
      await b.work();
      // While A is alive its heartbeats keep the leases: B, polling every 50 ms for 2 lease lengths, takes nothing.
      await delay(2 * LEASE_MS);
      const reclaimedEarly = await sql`select count(*)::int as n from sagaline_history where action = 'lease_reclaimed'`.execute(db.db);
      expect(reclaimedEarly.rows).toEqual([{ n: 0 }]);
      expect((await db.effects()).filter((e) => e.worker === 'crash_b')).toEqual([]);

      const killedAt = (await sql<{ now: Date }>`select clock_timestamp() as now`.execute(db.db)).rows[0]!.now;
      a.kill('SIGKILL');
      expect(await a.waitForExit(10_000)).toEqual({ code: null, signal: 'SIGKILL' });

      await waitFor(async () => (await db.statusCounts(ids))['completed'] === N, 'B to finish every workflow', 30_000);
      await b.stop();

      for (const { stored, effects: mine } of await checkedWorkflows(db, ids)) {
        // s1 had completed in A: never run again. s2 ran in A (attempt 1, lost) and in B (attempt 2). The rest ran once, in B.
        expect(mine.map((e) => [e.stepName, e.attempt, e.worker])).toEqual([
          ['s1', 1, 'crash_a'],
          ['s2', 1, 'crash_a'],
          ['s2', 2, 'crash_b'],
          ['s3', 1, 'crash_b'],
          ['s4', 1, 'crash_b'],
          ['s5', 1, 'crash_b'],
        ]);
        expect(stored.steps.find((s) => s.name === 's2')?.output).toEqual({ attempt: 2, worker: 'crash_b' });
        const reclaims = stored.history.filter((h) => h.action === 'lease_reclaimed');
        expect(reclaims.map((h) => [h.stepName, h.detail])).toEqual([['s2', { previousLeaseOwner: 'crash_a', attempt: 2 }]]);
        expect(reclaims[0]!.at.getTime()).toBeGreaterThanOrEqual(killedAt.getTime());
      }
      expect(b.problems()).toEqual([]);
    }),
  );

  it(
    'a zombie (frozen until its lease was reclaimed) reports its result late: it is rejected and the newer attempt stands',
    reported('a zombie reports a result after its lease was reclaimed', async () => {
      const db = await openDatabase('postgres');
      // A freezes itself (SIGSTOP) inside s2's first attempt, right after the effect row.
      const a = await EngineProcess.spawn({
        workerId: 'zombie_a',
        database: db.target,
        effects: db.effectsTarget,
        leaseMs: LEASE_MS,
        idlePollMs: 50,
        hold: { step: 's2', mode: 'stop-self', attempt: 1 },
      });
      // B holds s2's second attempt until released, so that the zombie reports while B's attempt is running.
      const b = await EngineProcess.spawn({
        workerId: 'zombie_b',
        database: db.target,
        effects: db.effectsTarget,
        leaseMs: 10_000,
        idlePollMs: 50,
        hold: { step: 's2', mode: 'until-release', attempt: 2 },
      });
      const { ids, errors } = await a.start('pw_linear5', { count: 1 });
      expect(errors).toEqual([]);
      const id = ids[0]!;
      await a.work();
      await waitFor(() => a.isStopped(), 'process A to freeze inside s2', 20_000, 20);

      await b.work();
      await waitFor(() => b.held.some((h) => h.workflowId === id && h.stepName === 's2' && h.attempt === 2), 'B to run s2 attempt 2', 20_000);
      const reclaimed = await readStored(db.store, id);
      expect(reclaimed.history.filter((h) => h.action === 'lease_reclaimed').map((h) => h.detail)).toEqual([{ previousLeaseOwner: 'zombie_a', attempt: 2 }]);

      // The zombie wakes up and returns attempt 1's result at once.
      a.kill('SIGCONT');
      const s2 = async () => (await db.store.getSteps(id)).find((s) => s.name === 's2')!;
      const discarded = () => a.logs.some((l) => l.message === 'discarded a result whose lease was lost' && l.context?.['workflowId'] === id && l.context['stepName'] === 's2');
      await waitFor(async () => discarded() || (await s2()).status !== 'running', 'the zombie to report its result', 10_000, 20);
      const during = await s2();
      expect({ status: during.status, attempts: during.attempts, leaseOwner: during.leaseOwner, output: during.output }).toEqual({
        status: 'running',
        attempts: 2,
        leaseOwner: 'zombie_b',
        output: null,
      });
      expect(discarded()).toBe(true);

      b.release(id, 's2');
      await waitFor(async () => (await db.statusCounts([id]))['completed'] === 1, 'the workflow to complete', 20_000);
      await Promise.all([a.stop(), b.stop()]);

      const { stored, effects } = (await checkedWorkflows(db, [id]))[0]!;
      expect(stored.steps.find((s) => s.name === 's2')?.output).toEqual({ attempt: 2, worker: 'zombie_b' });
      expect(stored.history.filter((h) => h.stepName === 's2' && h.to === 'completed')).toHaveLength(1);
      expect(effects.filter((e) => e.stepName === 's2').map((e) => [e.attempt, e.worker])).toEqual([
        [1, 'zombie_a'],
        [2, 'zombie_b'],
      ]);
      expect(effects.filter((e) => e.stepName !== 's2').map((e) => e.attempt)).toEqual([1, 1, 1, 1]);
    }),
  );
});
