/**
 * SIGKILL at exact points of a step's life, on a SQLite file and on Postgres
 * shared by processes. The engine process kills
 * itself where told (see `KillPoint` in `test/support/engine-process.ts`),
 * after writing a marker; a second process then finishes the work.
 *
 * Forward: (a) claimed but the body has not run, (b) the body's side effect
 * happened but its result is not stored, (c) the result is stored. A step runs
 * again only when its result was not stored, with the same idempotency key;
 * a stored result is never run again; the workflows finish. The other
 * workflows in flight die wherever they happened to be, and must finish too.
 * Every `step:completed` the dying process reported is stored as reported.
 * The forward cases run again with the store's group commit, where the
 * workflows in flight share batches: a process killed between or during
 * batches loses none that was reported committed.
 *
 * Rollback: a step fails for good, the workflow compensates, and the process
 * dies inside a compensation (before or after it is recorded). On restart the
 * rollback resumes, never goes forward, compensations run in reverse
 * completion order, and a recorded compensation never runs again.
 */
import { join } from 'node:path';
import { isDeepStrictEqual } from 'node:util';
import { expect, it } from 'vitest';
import type { KillPoint } from '../../support/engine-process.js';
import {
  EngineProcess,
  checkedWorkflows,
  compensationEffectViolations,
  completedAttempt,
  describeOnProcessStores,
  processCompensable,
  processDatabasePerTest,
  readMarkers,
  waitFor,
  type ProcessDatabase,
} from '../../process/process-harness.js';
import { caseTimeoutMs, iterations, loop } from '../support/iterations.js';
import { reportedCase } from '../support/report.js';

const SUITE = 'kill-points';
/** Workflows in flight when the process dies. */
const IN_FLIGHT = 4;

/**
 * One round: process A runs `IN_FLIGHT` fresh workflows (with `input`) until
 * it kills itself at `point` of step `target`; process B then finishes them.
 * Both stores have `groupCommit` when asked. Resolves to what the checks need.
 */
async function killRound(
  db: ProcessDatabase,
  round: string,
  workflow: 'pw_linear5' | 'pw_rollback5',
  point: KillPoint,
  target: string,
  { input = {}, groupCommit = false }: { input?: Record<string, unknown>; groupCommit?: boolean } = {},
) {
  const markerFile = join(db.dir, `${round}.jsonl`);
  const [a, b] = await Promise.all([
    EngineProcess.spawn({
      workerId: `${round}_a`,
      database: db.target,
      effects: db.effectsTarget,
      leaseMs: 1000,
      concurrency: IN_FLIGHT,
      idlePollMs: 20,
      kill: { point, step: target, markerFile },
      forwardEvents: ['step:completed'],
      groupCommit,
    }),
    EngineProcess.spawn({
      workerId: `${round}_b`,
      database: db.target,
      effects: db.effectsTarget,
      leaseMs: 10_000,
      concurrency: IN_FLIGHT,
      idlePollMs: 50,
      groupCommit,
    }),
  ]);
  const { ids, errors } = await a.start(workflow, { count: IN_FLIGHT, tenantId: round, input });
  expect(errors).toEqual([]);
  await a.work();
  expect(await a.waitForExit(30_000)).toEqual({ code: null, signal: 'SIGKILL' });
  const markers = readMarkers(markerFile);
  expect(markers).toHaveLength(1);
  const marker = markers[0]!;
  expect(marker).toMatchObject({ point, stepName: target, workerId: a.workerId });

  await b.work();
  const done = workflow === 'pw_linear5' ? 'completed' : 'rolled_back';
  await waitFor(
    async () => {
      if (!b.alive) throw new Error(`process B died\n${b.describe()}`);
      return (await db.statusCounts(ids))[done] === IN_FLIGHT;
    },
    `every workflow ${done}`,
    30_000,
  );
  await b.stop();
  expect(b.problems()).toEqual([]);

  const checked = await checkedWorkflows(db, ids);
  // What A reported committed before it died is stored as it reported it: the same attempt's output.
  const acknowledged = a.events
    .filter((e) => e.name === 'step:completed')
    .map((e) => e.payload as { workflowId: string; stepName: string; attempt: number; output: unknown });
  const storedStep = (workflowId: string, stepName: string) =>
    checked.find((c) => c.stored.workflow.id === workflowId)?.stored.steps.find((s) => s.name === stepName);
  expect(acknowledged.filter((e) => !isDeepStrictEqual(storedStep(e.workflowId, e.stepName)?.output, e.output))).toEqual([]);
  if (workflow === 'pw_rollback5') {
    for (const { stored: s, effects: mine } of checked) expect(compensationEffectViolations(s, mine, processCompensable)).toEqual([]);
  }
  const found = checked.find((c) => c.stored.workflow.id === marker.workflowId);
  expect(found).toBeDefined();
  const { stored: victim, effects: victimEffects } = found!;
  return { marker, victim, victimEffects, acknowledged, a, b };
}

describeOnProcessStores('SIGKILL at exact points on %s shared by processes', (storeName) => {
  const openDatabase = processDatabasePerTest();

  const forward: { point: KillPoint; fault: string }[] = [
    { point: 'after-claim', fault: 'SIGKILL after the claim, before the step body' },
    { point: 'after-effect', fault: "SIGKILL after the body's side effect, before its result is stored" },
    { point: 'after-store', fault: 'SIGKILL after the result is stored' },
  ];
  const forwardCases = [false, true].flatMap((groupCommit) =>
    forward.map(({ point, fault }) => ({ point, groupCommit, fault: groupCommit ? `${fault}, with group commit` : fault })),
  );
  for (const { point, fault, groupCommit } of forwardCases) {
    it(
      fault,
      () =>
        reportedCase({ suite: SUITE, fault, stores: [storeName] }, async (tally) => {
          const db = await openDatabase(storeName);
          await loop(iterations(1, 0.1), tally, async (i) => {
            // With group commit, from s3 on: the workflows have results committed (and reported) before the kill.
            const position = ((groupCommit ? i + 2 : i) % 5) + 1;
            const target = `s${position}`;
            const round = `${point.replace(/-/g, '_')}${groupCommit ? '_group' : ''}_${i}`;
            const { marker, victim, victimEffects, acknowledged, b } = await killRound(db, round, 'pw_linear5', point, target, { groupCommit });
            // The victim completed the steps before its target, and reported them, before it died there.
            if (position >= 3) expect(acknowledged.filter((e) => e.workflowId === marker.workflowId).length).toBeGreaterThan(0);
            const step = victim.steps.find((s) => s.name === target)!;
            const runs = victimEffects.filter((e) => e.kind === 'run' && e.stepName === target).map((e) => [e.attempt, e.worker]);
            const k = marker.attempt;
            if (point === 'after-claim') {
              // Claimed, never ran: the next attempt is its only run.
              expect(runs).toEqual([[k + 1, b.workerId]]);
              expect(completedAttempt(step)).toBe(k + 1);
            } else if (point === 'after-effect') {
              // Ran, result lost: it runs again, once, with the same idempotency key (checked for every row).
              expect(runs).toEqual([
                [k, marker.workerId],
                [k + 1, b.workerId],
              ]);
              expect(completedAttempt(step)).toBe(k + 1);
            } else {
              // Ran and stored: never again.
              expect(runs).toEqual([[k, marker.workerId]]);
              expect(completedAttempt(step)).toBe(k);
            }
            expect(victim.history.filter((h) => h.stepName === target && h.to === 'completed')).toHaveLength(1);
          });
        }),
      caseTimeoutMs(),
    );
  }

  const rollback: { point: KillPoint; fault: string }[] = [
    { point: 'compensation-effect', fault: 'SIGKILL during rollback, after a compensation ran and before it was recorded' },
    { point: 'compensation-stored', fault: 'SIGKILL during rollback, after a compensation was recorded' },
  ];
  for (const { point, fault } of rollback) {
    it(
      fault,
      () =>
        reportedCase({ suite: SUITE, fault, stores: [storeName] }, async (tally) => {
          const db = await openDatabase(storeName);
          await loop(iterations(1, 0.1), tally, async (i) => {
            // Fail at r3, r4 or r5; die in the first or second compensation.
            const failAt = 3 + (i % 3);
            const target = `r${failAt - 1 - (Math.floor(i / 3) % 2)}`;
            const { marker, victim, victimEffects } = await killRound(db, `${point.replace(/-/g, '_')}_${i}`, 'pw_rollback5', point, target, {
              input: { failAt: `r${failAt}` },
            });
            const comps = victimEffects.filter((e) => e.kind === 'compensate');
            // Reverse order, each step once, the killed one again only if its compensation was not recorded.
            const expectedOrder = Array.from({ length: failAt - 1 }, (_, j) => `r${failAt - 1 - j}`);
            const k = marker.attempt;
            const expected = expectedOrder.flatMap((name) => {
              if (name !== target) return [[name, 1]];
              return point === 'compensation-effect' ? [[name, k], [name, k + 1]] : [[name, k]];
            });
            expect(comps.map((e) => [e.stepName, e.attempt])).toEqual(expected);
            expect(victim.steps.find((s) => s.name === target)?.status).toBe('compensated');
            expect(victim.steps.find((s) => s.name === `r${failAt}`)?.status).toBe('failed');
          });
        }),
      caseTimeoutMs(),
    );
  }
});
