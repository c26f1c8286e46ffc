/**
 * Wake-ups across processes on Postgres (`notifications`): one process
 * starts workflows without a worker of its own, so every first step must be
 * claimed by a worker in another process, and those workers poll only every
 * ten minutes. Every workflow completes within a minute only if each create
 * wakes them, through a notification sent after its commit.
 *
 * Each case checks the same as the many-workers test: every step ran once and
 * completed once, and each workflow's history replays legally.
 */
import { sql } from 'kysely';
import { describe, expect, it } from 'vitest';
import { reportedCase } from '../reliability/support/report.js';
import {
  EngineProcess,
  checkedWorkflows,
  expectOneEffectPerStep,
  processDatabasePerTest,
  waitFor,
} from './process-harness.js';

const WORKFLOWS = 150;
const STEPS = 5;
/** Far longer than the run: a worker that is not woken finds the work only after this. */
const IDLE_POLL_MS = 600_000;
/** The run takes a few seconds on 2 cores; a missed wake-up leaves it waiting for the poll above. */
const FINISH_LIMIT_MS = 60_000;

describe('notifications wake workers in other processes (Postgres)', () => {
  const openDatabase = processDatabasePerTest();

  for (const groupCommit of [false, true]) {
    it(
      `${WORKFLOWS} workflows started in a process without a worker all run in two listening workers${groupCommit ? ', with group commit' : ''}`,
      () =>
        reportedCase(
          {
            suite: 'notify-wakeups',
            fault: `a process with no worker starts ${WORKFLOWS} workflows; two listening workers poll every ${IDLE_POLL_MS / 60_000} minutes${groupCommit ? '; group commit' : ''}`,
            stores: ['postgres'],
          },
          async (tally) => {
            const db = await openDatabase('postgres');
            const target = db.target as { dialect: 'postgres'; url: string };
            const spawn = (workerId: string, notifications: 'send' | 'listen') =>
              EngineProcess.spawn({
                workerId,
                database: { ...target, poolSize: 6 },
                effects: db.effectsTarget,
                concurrency: 16,
                idlePollMs: IDLE_POLL_MS,
                notifications,
                groupCommit,
              });
            const [starter, ...workers] = await Promise.all([spawn('starter', 'send'), spawn('listener_0', 'listen'), spawn('listener_1', 'listen')]);
            // Each worker polls once as it starts (finding nothing) and then only when woken.
            await Promise.all(workers.map((w) => w.work()));

            const began = Date.now();
            // Three waves, so that creates arrive while the workers are busy and while they are idle.
            const ids: string[] = [];
            for (let wave = 0; wave < 3; wave++) {
              const started = await starter.start('pw_linear5', { count: WORKFLOWS / 3, tenantId: `tenant_${wave}` });
              expect(started.errors).toEqual([]);
              ids.push(...started.ids);
              await waitFor(
                async () => ((await db.statusCounts())['completed'] ?? 0) >= ids.length,
                `the ${ids.length} workflows started so far to complete`,
                FINISH_LIMIT_MS,
                100,
              );
            }
            const finishedMs = Date.now() - began;
            await Promise.all([starter, ...workers].map((w) => w.stop()));

            expect(new Set(ids).size).toBe(WORKFLOWS);
            expect(await db.statusCounts()).toEqual({ completed: WORKFLOWS });
            const effects = await db.effects();
            expectOneEffectPerStep(effects, WORKFLOWS * STEPS);
            // The starter has no worker: the listening processes ran every step.
            expect(effects.filter((e) => e.worker === 'starter')).toEqual([]);
            const completions = await sql<{ n: string }>`
              select count(*) as n from sagaline_history where kind = 'step' and to_status = 'completed'`.execute(db.db);
            expect(Number(completions.rows[0]!.n)).toBe(WORKFLOWS * STEPS);

            // Each workflow's history replays legally, and its effects match what it stored.
            expect((await checkedWorkflows(db, ids)).length).toBe(WORKFLOWS);
            // No notification failed to send, and nothing else was logged as a problem.
            for (const w of [starter, ...workers]) expect(w.problems()).toEqual([]);
            console.info(`[notify-wakeups] group commit ${groupCommit ? 'on' : 'off'}: ${WORKFLOWS} workflows completed after ${finishedMs} ms`);
            tally.iterations++;
          },
        ),
      FINISH_LIMIT_MS * 3 + 60_000,
    );
  }
});
