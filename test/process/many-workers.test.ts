/**
 * Several engine processes on one Postgres database: every
 * step runs exactly once and is recorded exactly once, with claims racing
 * across processes (`FOR UPDATE SKIP LOCKED`) and chained claims inside result
 * transactions.
 *
 * `SAGALINE_PROCESS_WORKFLOWS` (default 2000) and `SAGALINE_PROCESS_WORKERS`
 * (default 4) size the run.
 */
import { sql } from 'kysely';
import { describe, expect, it } from 'vitest';
import { violations } from '../reliability/support/invariants.js';
import { reportedCase } from '../reliability/support/report.js';
import {
  EngineProcess,
  effectsByWorkflow,
  expectOneEffectPerStep,
  processCompensable,
  processDatabasePerTest,
  readAllStored,
  runEffectViolations,
  waitFor,
} from './process-harness.js';

function envInt(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw.trim() === '') return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 1) throw new Error(`${name} must be a positive integer, got ${JSON.stringify(raw)}`);
  return n;
}

const WORKFLOWS = envInt('SAGALINE_PROCESS_WORKFLOWS', 2000);
const WORKERS = envInt('SAGALINE_PROCESS_WORKERS', 4);
const STEPS = 5;
/** Generous: the default run takes well under a minute on 2 cores. */
const FINISH_LIMIT_MS = Math.max(120_000, WORKFLOWS * 60);

describe('many engine processes on one Postgres database', () => {
  const openDatabase = processDatabasePerTest();

  it(
    `${WORKERS} processes run ${WORKFLOWS} workflows of ${STEPS} steps: each step runs once and completes once`,
    () =>
      reportedCase(
        { suite: 'many-workers', fault: `${WORKERS} engine processes, ${WORKFLOWS} workflows of ${STEPS} steps, claims racing`, stores: ['postgres'] },
        async (tally) => {
          const db = await openDatabase('postgres');
          const workers = await Promise.all(
            Array.from({ length: WORKERS }, (_, i) =>
              EngineProcess.spawn({
                workerId: `many_${i}`,
                database: { ...(db.target as { dialect: 'postgres'; url: string }), poolSize: 8 },
                effects: db.effectsTarget,
                concurrency: 16,
                idlePollMs: 100,
              }),
            ),
          );
          const began = Date.now();
          await Promise.all(workers.map((w) => w.work()));
          // Each process starts its share while every process is already claiming.
          const shares = workers.map((_, i) => Math.floor(WORKFLOWS / WORKERS) + (i < WORKFLOWS % WORKERS ? 1 : 0));
          const started = await Promise.all(workers.map((w, i) => w.start('pw_linear5', { count: shares[i]!, tenantId: `tenant_${i}` }, FINISH_LIMIT_MS)));
          expect(started.flatMap((s) => s.errors)).toEqual([]);
          const ids = started.flatMap((s) => s.ids);
          expect(new Set(ids).size).toBe(WORKFLOWS);
          const startedMs = Date.now() - began;

          await waitFor(
            async () => {
              for (const w of workers) if (!w.alive || w.fatal.length > 0) throw new Error(`an engine process failed\n${w.describe()}`);
              return (await db.statusCounts())['completed'] === WORKFLOWS;
            },
            `${WORKFLOWS} completed workflows`,
            FINISH_LIMIT_MS,
            250,
          );
          const finishedMs = Date.now() - began;
          await Promise.all(workers.map((w) => w.stop()));
          const checking = Date.now();

          // Totals first: one effect row per step, every step completed once in history.
          expect(await db.statusCounts()).toEqual({ completed: WORKFLOWS });
          const effects = await db.effects();
          const totals = (
            await sql<{ completions: string; reclaims: string; steps: string; completed_steps: string }>`
              select
                (select count(*) from sagaline_history where kind = 'step' and to_status = 'completed') as completions,
                (select count(*) from sagaline_history where kind = 'note' and action = 'lease_reclaimed') as reclaims,
                (select count(*) from sagaline_steps) as steps,
                (select count(*) from sagaline_steps where status = 'completed') as completed_steps`.execute(db.db)
          ).rows[0]!;
          expect({
            effects: effects.length,
            completions: Number(totals.completions),
            reclaims: Number(totals.reclaims),
            steps: Number(totals.steps),
            completedSteps: Number(totals.completed_steps),
          }).toEqual({ effects: WORKFLOWS * STEPS, completions: WORKFLOWS * STEPS, reclaims: 0, steps: WORKFLOWS * STEPS, completedSteps: WORKFLOWS * STEPS });
          expectOneEffectPerStep(effects, WORKFLOWS * STEPS);

          // Then each workflow: its history replays legally, and its effects match what it stored.
          const stored = await readAllStored(db.store, ids);
          const byWorkflow = effectsByWorkflow(effects);
          const problems = stored.flatMap((s) => [...violations(s, processCompensable), ...runEffectViolations(s, byWorkflow.get(s.workflow.id) ?? [])]);
          expect(problems.slice(0, 20)).toEqual([]);
          // Every process did part of the work.
          const byWorker = new Map<string, number>();
          for (const e of effects) byWorker.set(e.worker, (byWorker.get(e.worker) ?? 0) + 1);
          expect(byWorker.size).toBe(WORKERS);
          for (const w of workers) expect(w.problems()).toEqual([]);
          console.info(
            `[many-workers] ${WORKERS} processes, ${WORKFLOWS} workflows x ${STEPS} steps: started in ${startedMs} ms, all completed after ${finishedMs} ms ` +
              `(${Math.round((WORKFLOWS * STEPS * 1000) / finishedMs)} steps/s), checked in ${Date.now() - checking} ms; effects per process ${JSON.stringify(Object.fromEntries(byWorker))}`,
          );
          tally.iterations++;
        },
      ),
    FINISH_LIMIT_MS + 120_000,
  );
});
