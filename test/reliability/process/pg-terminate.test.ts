/**
 * The database drops the engine's connections (Postgres):
 * `pg_terminate_backend` of every connection of two engine processes,
 * at random moments for a few seconds — idle between steps, or busy in a
 * claim, a result transaction or a heartbeat. The engines retry (a failed
 * claim is retried, a lost result write is redone after its lease expires), a
 * graceful stop in the middle of it still stops cleanly, and afterwards every
 * workflow finishes with a legal history, each step completed once and no
 * attempt run twice.
 */
import { sql } from 'kysely';
import { expect, it } from 'vitest';
import {
  EngineProcess,
  checkedWorkflows,
  delay,
  describeOnProcessStores,
  processDatabasePerTest,
  waitFor,
} from '../../process/process-harness.js';
import { caseTimeoutMs, iterations, loop } from '../support/iterations.js';
import { reportedCase } from '../support/report.js';

const APPLICATION = 'sagaline_engine';
const WORKFLOWS = 20;
const STORM_MS = 4000;

describeOnProcessStores('pg_terminate_backend of the engine connections (%s)', () => {
  const openDatabase = processDatabasePerTest();

  it(
    'connections killed between and during steps: engines retry or stop cleanly, every workflow finishes consistently',
    () =>
      reportedCase({ suite: 'pg-terminate', fault: 'pg_terminate_backend of engine connections, between and during steps', stores: ['postgres'] }, async (tally) => {
        const db = await openDatabase('postgres');
        const target = { dialect: 'postgres' as const, url: (db.target as { url: string }).url, poolSize: 4, applicationName: APPLICATION };
        const spawn = (workerId: string) =>
          EngineProcess.spawn({ workerId, database: target, effects: db.effectsTarget, leaseMs: 1000, concurrency: 4, idlePollMs: 50 });
        const all: EngineProcess[] = [];
        let terminated = 0;
        const terminate = async (busyOnly: boolean): Promise<number> => {
          const busy = busyOnly ? sql`and state in ('active', 'idle in transaction', 'idle in transaction (aborted)')` : sql``;
          const rows = await sql<{ ok: boolean }>`
            select pg_terminate_backend(pid) as ok from pg_stat_activity
            where datname = current_database() and application_name = ${APPLICATION} and pid <> pg_backend_pid() ${busy}`.execute(db.db);
          return rows.rows.filter((r) => r.ok).length;
        };

        await loop(iterations(1, 0.02), tally, async (i) => {
          const a = await spawn(`term_a${i}`);
          let b = await spawn(`term_b${i}`);
          all.push(a, b);
          const { ids, errors } = await a.start('pw_linear5', { count: WORKFLOWS, tenantId: `term_${i}`, input: { jitterMs: 40 } });
          expect(errors).toEqual([]);
          await Promise.all([a.work(), b.work()]);

          // The storm: every 30-200 ms, either every engine connection or only those in a statement or transaction.
          const stormEnds = Date.now() + STORM_MS;
          let restarted = false;
          for (let n = 0; Date.now() < stormEnds; n++) {
            terminated += await terminate(n % 2 === 1);
            if (!restarted && Date.now() > stormEnds - STORM_MS / 2) {
              // A graceful stop while connections keep dying: it must finish, and exit 0.
              restarted = true;
              await b.stop(20_000);
              b = await spawn(`term_b${i}_2`);
              all.push(b);
              await b.work();
            }
            await delay(30 + Math.floor(Math.random() * 170));
          }

          await waitFor(
            async () => {
              for (const p of [a, b]) if (!p.alive || p.fatal.length > 0) throw new Error(`an engine process failed\n${p.describe()}`);
              return (await db.statusCounts(ids))['completed'] === WORKFLOWS;
            },
            'every workflow to complete after the storm',
            60_000,
            100,
          );
          await Promise.all([a.stop(), b.stop()]);

          await checkedWorkflows(db, ids);
        });
        expect(terminated).toBeGreaterThan(0);
        const logged = all.flatMap((p) => p.problems());
        for (const p of all) expect(p.fatal).toEqual([]);
        console.info(
          `[pg-terminate] ${terminated} connections terminated; engines logged ${logged.length} warnings/errors: ` +
            JSON.stringify(Object.entries(countBy(logged.map((l) => l.message))).sort((x, y) => y[1] - x[1])),
        );
      }),
    caseTimeoutMs(),
  );
}, ['postgres']);

function countBy(values: string[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const v of values) out[v] = (out[v] ?? 0) + 1;
  return out;
}
