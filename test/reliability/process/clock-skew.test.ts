/**
 * Application clocks an hour apart on one Postgres database whose store has no
 * injected clock (a skewed application clock cannot reclaim early). One engine process runs an hour ahead, one an hour behind
 * (`Date.now` and the engine's `clock`); lease expiry, due times and poll
 * times all come from the database, so:
 * - no live lease is reclaimed (a step held for several lease lengths, kept by
 *   heartbeats, runs once while both processes poll every 20 ms);
 * - no poll fires twice or early (each poll is one effect row with its own
 *   `pollCount`, spaced at least `pollIntervalMs` apart on the database clock).
 *
 * A control case gives the ahead process's store the skewed clock (a store
 * that trusts the app clock) and checks that the same detector sees the early
 * reclaim.
 */
import { sql } from 'kysely';
import { expect, it } from 'vitest';
import {
  EngineProcess,
  checkedWorkflows,
  describeOnProcessStores,
  processDatabasePerTest,
  waitFor,
  type ProcessDatabase,
} from '../../process/process-harness.js';
import { caseTimeoutMs, iterations, loop } from '../support/iterations.js';
import { reportedCase } from '../support/report.js';

const HOUR = 3_600_000;
const LEASE_MS = 1500;
/** The `hold` step runs this long: several lease lengths, kept only by heartbeats. */
const HOLD_MS = 2.5 * LEASE_MS;
const POLL_INTERVAL_MS = 300;
const PER_PROCESS = 3;

describeOnProcessStores('clock skew between engine processes (%s, database time)', () => {
  const openDatabase = processDatabasePerTest();

  const skewed = (db: ProcessDatabase, workerId: string, skewMs: number, skewStoreClock = false) =>
    EngineProcess.spawn({
      workerId,
      database: db.target,
      effects: db.effectsTarget,
      skewMs,
      skewStoreClock,
      leaseMs: LEASE_MS,
      // Each process can hold at most PER_PROCESS long steps: both must take some.
      concurrency: PER_PROCESS,
      idlePollMs: 20,
    });

  it(
    'one process an hour ahead, one an hour behind: no early reclaim, no poll fired twice',
    () =>
      reportedCase({ suite: 'clock-skew', fault: 'app clocks +1 h and -1 h, database time governs', stores: ['postgres'] }, async (tally) => {
        const db = await openDatabase('postgres');
        const [ahead, behind] = await Promise.all([skewed(db, 'skew_ahead', HOUR), skewed(db, 'skew_behind', -HOUR)]);
        await Promise.all([ahead.work(), behind.work()]);
        await loop(iterations(1, 0.02), tally, async (i) => {
          const input = { sleepMs: { hold: HOLD_MS } };
          const started = await Promise.all([
            ahead.start('pw_poll', { count: PER_PROCESS, tenantId: `skew_${i}`, input }),
            behind.start('pw_poll', { count: PER_PROCESS, tenantId: `skew_${i}`, input }),
          ]);
          expect(started.flatMap((s) => s.errors)).toEqual([]);
          const ids = started.flatMap((s) => s.ids);
          await waitFor(
            async () => {
              for (const p of [ahead, behind]) if (!p.alive) throw new Error(`an engine process died\n${p.describe()}`);
              // Fail at the first sign rather than at the deadline: nothing here may ever be reclaimed.
              const reclaims = await sql<{ workflow_id: string; step_name: string; detail: unknown }>`
                select workflow_id, step_name, detail from sagaline_history where action = 'lease_reclaimed' and workflow_id in (${sql.join(ids)})`.execute(db.db);
              if (reclaims.rows.length > 0) throw new Error(`a live lease was reclaimed: ${JSON.stringify(reclaims.rows)}`);
              const counts = await db.statusCounts(ids);
              if ((counts['failed'] ?? 0) > 0) throw new Error(`workflows failed: ${JSON.stringify(counts)}`);
              return counts['completed'] === ids.length;
            },
            'every workflow to complete',
            60_000,
          );

          const holders = new Set<string>();
          for (const { stored: s, effects: mine } of await checkedWorkflows(db, ids)) {
            // No reclaim at all: every step ran once, as attempt 1.
            expect(s.history.filter((h) => h.action === 'lease_reclaimed')).toEqual([]);
            expect(mine.filter((e) => e.kind === 'run').map((e) => [e.stepName, e.attempt])).toEqual([
              ['hold', 1],
              ['wait', 1],
              ['last', 1],
            ]);
            holders.add(mine.find((e) => e.stepName === 'hold')!.worker);
            // Polls 0..3, each once, each at least an interval after the previous one (and after run).
            const polls = mine.filter((e) => e.kind === 'poll');
            expect(polls.map((e) => e.pollCount)).toEqual([0, 1, 2, 3]);
            const waitRun = mine.find((e) => e.kind === 'run' && e.stepName === 'wait')!;
            const times = [waitRun, ...polls].map((e) => e.at.getTime());
            const gaps = times.slice(1).map((t, j) => t - times[j]!);
            expect(gaps.filter((g) => g < POLL_INTERVAL_MS)).toEqual([]);
            expect(s.steps.find((st) => st.name === 'wait')?.output).toEqual({ polls: 4 });
          }
          // Both clocks held a lease for several lease lengths.
          expect([...holders].sort()).toEqual(['skew_ahead', 'skew_behind']);
        });
        for (const p of [ahead, behind]) expect(p.problems()).toEqual([]);
        await Promise.all([ahead.stop(), behind.stop()]);
      }),
    caseTimeoutMs(),
  );

  it("control: when the ahead process's store trusts its app clock, the same checks see an early reclaim", async () => {
    const db = await openDatabase('postgres');
    const [ahead, behind] = await Promise.all([skewed(db, 'trust_ahead', HOUR, true), skewed(db, 'trust_behind', -HOUR)]);
    // The process behind holds every long step first (database time).
    await behind.work();
    const { ids } = await behind.start('pw_poll', { count: PER_PROCESS, input: { sleepMs: { hold: HOLD_MS } } });
    await waitFor(async () => (await db.effects()).filter((e) => e.stepName === 'hold').length === PER_PROCESS, 'the long steps to run', 20_000);
    await ahead.work();
    // Its store thinks every lease expired an hour ago: it takes them at once, while they are alive,
    // and runs them again (the run is recorded by the handler, a moment after the reclaim commits).
    const rerunByAhead = async () =>
      (await db.effects()).filter((e) => e.stepName === 'hold' && e.attempt === 2 && e.worker === 'trust_ahead');
    await waitFor(async () => (await rerunByAhead()).length > 0, 'an early reclaim and its second run', HOLD_MS);
    const reclaims = await sql<{ workflow_id: string }>`select workflow_id from sagaline_history where action = 'lease_reclaimed'`.execute(db.db);
    const twice = await rerunByAhead();
    expect(twice.length).toBeGreaterThan(0);
    expect(ids).toContain(twice[0]!.workflowId);
    expect(reclaims.rows.map((r) => r.workflow_id)).toContain(twice[0]!.workflowId);
  });
}, ['postgres']);
