/**
 * The Postgres store's `analyze` option: each time the workflow table has
 * doubled since the last analysis (from the planner's estimate, then counting
 * its own creates), the store analyzes its tables in the background, so that
 * the plans of its prepared statements are made again for the tables' size;
 * off with `analyze: false`. Counted from the server's own statistics
 * (`pg_stat_user_tables.analyze_count`, manual runs only).
 */
import { sql } from 'kysely';
import { afterEach, describe, expect, it } from 'vitest';
import { createManualClock } from '../../src/core/clock.js';
import type { CreateWorkflowInput } from '../../src/storage/workflow-store.js';
import { migrateToLatest } from '../../src/stores/kysely/kysely-migrations.js';
import { KyselyWorkflowStore } from '../../src/stores/kysely/kysely-workflow-store.js';
import { createPostgresSchema } from '../support/databases.js';

const T0 = Date.UTC(2026, 0, 1);

function workflow(n: number): CreateWorkflowInput {
  return {
    workflow: {
      id: `w${n}`,
      tenantId: 'tenant-a',
      type: 'provision',
      serviceSlug: null,
      status: 'pending',
      definitionVersion: 'v1',
      input: { n },
      idempotencyKey: null,
      createdAt: new Date(T0),
    },
    steps: [{ name: 'a', position: 0, dependsOn: [], maxAttempts: 3, dueAt: new Date(T0) }],
    history: [{ kind: 'workflow', stepName: null, from: null, to: 'pending', actor: null, reason: null, action: 'start', detail: null }],
  };
}

describe('analyze (Postgres)', () => {
  const opened: (() => Promise<void>)[] = [];
  afterEach(async () => {
    while (opened.length) await opened.pop()!();
  });

  async function fresh(analyze?: boolean, existing = 0) {
    const database = await createPostgresSchema();
    opened.push(() => database.cleanup());
    await migrateToLatest(database.db, { schema: database.schema });
    if (existing > 0) {
      // Workflows written before this store was opened, and statistics that count them.
      const before = new KyselyWorkflowStore({ db: database.db, schema: database.schema, clock: createManualClock(T0), groupCommit: true, analyze: false });
      await Promise.all(Array.from({ length: existing }, (_, n) => before.createWorkflow(workflow(-1 - n))));
      await sql`analyze ${sql.id(database.schema, 'sagaline_workflows')}`.execute(database.db);
    }
    const store = new KyselyWorkflowStore({
      db: database.db,
      schema: database.schema,
      clock: createManualClock(T0),
      groupCommit: { maxBatch: 64 },
      ...(analyze === undefined ? {} : { analyze }),
    });
    let created = 0;
    /** Creates workflows until the store has made `total`, then waits for a background ANALYZE to end. */
    const createUpTo = async (total: number) => {
      const numbers = Array.from({ length: total - created }, (_, i) => created + i);
      created = total;
      for (let i = 0; i < numbers.length; i += 200) await Promise.all(numbers.slice(i, i + 200).map((n) => store.createWorkflow(workflow(n))));
      await store.close();
    };
    /** Manual ANALYZE runs per table of the store, as the server counts them (the setup's own run taken off). */
    const setup = existing > 0 ? { sagaline_workflows: 1 } : {};
    const analyzed = async () => {
      const { rows } = await sql<{ relname: string; analyze_count: string }>`
        select relname, analyze_count from pg_stat_user_tables where schemaname = ${database.schema} order by relname`.execute(database.db);
      const runs = rows.filter((r) => /_(workflows|steps|history)$/.test(r.relname));
      return Object.fromEntries(runs.map((r) => [r.relname, Number(r.analyze_count) - ((setup as Record<string, number>)[r.relname] ?? 0)]));
    };
    const counts = (n: number) => ({ sagaline_history: n, sagaline_steps: n, sagaline_workflows: n });
    /** The columns with statistics in `pg_stats`, per table of the store. */
    const statistics = async () => {
      const { rows } = await sql<{ tablename: string; attname: string }>`
        select tablename, attname from pg_stats where schemaname = ${database.schema} order by tablename, attname`.execute(database.db);
      const byTable: Record<string, string[]> = {};
      for (const r of rows) (byTable[r.tablename] ??= []).push(r.attname);
      return byTable;
    };
    return { store, createUpTo, analyzed, counts, statistics, database };
  }

  it('analyzes its three tables of an empty database after its 100th create and again at each doubling', async () => {
    const { createUpTo, analyzed, counts } = await fresh();
    await createUpTo(99);
    expect(await analyzed()).toEqual(counts(0));
    await createUpTo(100);
    expect(await analyzed()).toEqual(counts(1));
    await createUpTo(199);
    expect(await analyzed()).toEqual(counts(1));
    await createUpTo(200);
    expect(await analyzed()).toEqual(counts(2));
    await createUpTo(799);
    expect(await analyzed()).toEqual(counts(3));
    await createUpTo(800);
    expect(await analyzed()).toEqual(counts(4));
  });

  it('gathers statistics on the columns its statements select, join or order by, and leaves the others to autovacuum', async () => {
    const { createUpTo, analyzed, counts, statistics, database } = await fresh();
    expect(await statistics()).toEqual({});
    await createUpTo(100);
    expect(await analyzed()).toEqual(counts(1));
    expect(await statistics()).toEqual({
      sagaline_history: ['seq', 'workflow_id'],
      sagaline_steps: ['due_at', 'lease_expires_at', 'name', 'position', 'status', 'workflow_id'],
      sagaline_workflows: ['created_at', 'id', 'idempotency_key', 'service_slug', 'status', 'tenant_id', 'type'],
    });
    // The row counts the planner sizes its plans by are refreshed as well.
    const { rows } = await sql<{ relname: string; reltuples: number }>`
      select c.relname, c.reltuples::float8 as reltuples from pg_class c join pg_namespace n on n.oid = c.relnamespace
      where n.nspname = ${database.schema} and c.relkind = 'r' and c.relname ~ '_(workflows|steps|history)$' order by c.relname`.execute(database.db);
    expect(rows).toEqual([
      { relname: 'sagaline_history', reltuples: 100 },
      { relname: 'sagaline_steps', reltuples: 100 },
      { relname: 'sagaline_workflows', reltuples: 100 },
    ]);
  });

  it('counts the workflows the table held when the store was opened, from the planner\'s estimate', async () => {
    // 600 workflows before: the first doubling is at 1,200, i.e. after 600 creates of this store.
    const { createUpTo, analyzed, counts } = await fresh(undefined, 600);
    await createUpTo(599);
    expect(await analyzed()).toEqual(counts(0));
    await createUpTo(600);
    expect(await analyzed()).toEqual(counts(1));
  });

  it('counts only creates that inserted a workflow', async () => {
    const { store, createUpTo, analyzed, counts } = await fresh();
    await createUpTo(90);
    // Twenty creates of ids that exist fail; they are not growth.
    const again = await Promise.allSettled(Array.from({ length: 20 }, (_, n) => store.createWorkflow(workflow(n))));
    expect(again.every((o) => o.status === 'rejected')).toBe(true);
    await store.close();
    expect(await analyzed()).toEqual(counts(0));
    await createUpTo(100);
    expect(await analyzed()).toEqual(counts(1));
  });

  it('does not analyze with analyze: false', async () => {
    const { createUpTo, analyzed, counts } = await fresh(false);
    await createUpTo(400);
    expect(await analyzed()).toEqual(counts(0));
  });
});
