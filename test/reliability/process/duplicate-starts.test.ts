/**
 * The same idempotency key started many times at once from several processes
 * (a repeated start returns the existing workflow): one workflow, one set of steps, one `start` history row, one
 * `workflow:started` event, and every caller gets its id.
 */
import { sql } from 'kysely';
import { expect, it } from 'vitest';
import { EngineProcess, describeOnProcessStores, processDatabasePerTest } from '../../process/process-harness.js';
import { caseTimeoutMs, iterations, loop } from '../support/iterations.js';
import { reportedCase } from '../support/report.js';

const PROCESSES = 5;
const STARTS_PER_PROCESS = 10;

describeOnProcessStores('duplicate starts from several processes on %s', (storeName) => {
  const openDatabase = processDatabasePerTest();

  it(
    `${PROCESSES * STARTS_PER_PROCESS} concurrent starts of one idempotency key from ${PROCESSES} processes make one workflow`,
    () =>
      reportedCase(
        { suite: 'duplicate-starts', fault: `${PROCESSES * STARTS_PER_PROCESS} concurrent starts, one key, ${PROCESSES} processes`, stores: [storeName] },
        async (tally) => {
          const db = await openDatabase(storeName);
          // Starting only (no worker loop): every process is a caller of start().
          const procs = await Promise.all(
            Array.from({ length: PROCESSES }, (_, i) =>
              EngineProcess.spawn({ workerId: `dup_${i}`, database: db.target, effects: db.effectsTarget, forwardEvents: ['workflow:started'] }),
            ),
          );
          const count = await loop(iterations(10, 0.5), tally, async (i) => {
            const key = `order-${i}`;
            // Released together at one instant of the real clock.
            const atMs = Date.now() + 150;
            const replies = await Promise.all(procs.map((p) => p.start('pw_linear5', { count: STARTS_PER_PROCESS, tenantId: 'tenant_dup', idempotencyKey: key, atMs })));
            expect(replies.flatMap((r) => r.errors)).toEqual([]);
            const ids = replies.flatMap((r) => r.ids);
            expect(ids).toHaveLength(PROCESSES * STARTS_PER_PROCESS);
            expect(new Set(ids).size).toBe(1);
            const id = ids[0]!;
            const rows = await sql<{ workflows: number; steps: number; history: number; starts: number }>`
              select
                (select cast(count(*) as integer) from sagaline_workflows where tenant_id = 'tenant_dup' and idempotency_key = ${key}) as workflows,
                (select cast(count(*) as integer) from sagaline_steps where workflow_id = ${id}) as steps,
                (select cast(count(*) as integer) from sagaline_history where workflow_id = ${id}) as history,
                (select cast(count(*) as integer) from sagaline_history where workflow_id = ${id} and action = 'start') as starts`.execute(db.db);
            expect(rows.rows.map((r) => ({ workflows: Number(r.workflows), steps: Number(r.steps), history: Number(r.history), starts: Number(r.starts) }))).toEqual([
              { workflows: 1, steps: 5, history: 1, starts: 1 },
            ]);
            // Emitted after the commit by the one process whose insert won, before its reply (IPC keeps the order).
            const startedEvents = procs.flatMap((p) => p.events.filter((e) => e.name === 'workflow:started' && e.payload['workflowId'] === id));
            expect(startedEvents).toHaveLength(1);
          });
          const total = await sql<{ n: number }>`select cast(count(*) as integer) as n from sagaline_workflows`.execute(db.db);
          expect(Number(total.rows[0]!.n)).toBe(count);

          // The key is unique per tenant: another tenant's start with it is a new workflow.
          const [same, other] = await Promise.all([
            procs[0]!.start('pw_linear5', { tenantId: 'tenant_dup', idempotencyKey: 'order-0' }),
            procs[1]!.start('pw_linear5', { tenantId: 'tenant_other', idempotencyKey: 'order-0' }),
          ]);
          const first = await sql<{ id: string }>`select id from sagaline_workflows where tenant_id = 'tenant_dup' and idempotency_key = 'order-0'`.execute(db.db);
          expect(same.ids).toEqual([first.rows[0]!.id]);
          expect(other.ids).toHaveLength(1);
          expect(other.ids[0]).not.toBe(first.rows[0]!.id);
          for (const p of procs) expect(p.problems()).toEqual([]);
          await Promise.all(procs.map((p) => p.stop()));
        },
      ),
    caseTimeoutMs(),
  );
});
