/**
 * The Postgres store's `analyze` option: after its 1,000th create and at each
 * doubling it analyzes its tables in the background, so that the plans of its
 * prepared statements are made again for the tables' size; off with
 * `analyze: false`. Counted from the server's own statistics
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

  async function fresh(analyze?: boolean) {
    const database = await createPostgresSchema();
    opened.push(() => database.cleanup());
    await migrateToLatest(database.db, { schema: database.schema });
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
    /** Manual ANALYZE runs per table of the store, as the server counts them. */
    const analyzed = async () => {
      const { rows } = await sql<{ relname: string; analyze_count: string }>`
        select relname, analyze_count from pg_stat_user_tables where schemaname = ${database.schema} order by relname`.execute(database.db);
      return Object.fromEntries(rows.filter((r) => /_(workflows|steps|history)$/.test(r.relname)).map((r) => [r.relname, Number(r.analyze_count)]));
    };
    const counts = (n: number) => ({ sagaline_history: n, sagaline_steps: n, sagaline_workflows: n });
    return { store, createUpTo, analyzed, counts };
  }

  it('analyzes its three tables after its 1,000th create and again once its creates have doubled', async () => {
    const { createUpTo, analyzed, counts } = await fresh();
    await createUpTo(999);
    expect(await analyzed()).toEqual(counts(0));
    await createUpTo(1000);
    expect(await analyzed()).toEqual(counts(1));
    await createUpTo(1999);
    expect(await analyzed()).toEqual(counts(1));
    await createUpTo(2000);
    expect(await analyzed()).toEqual(counts(2));
  });

  it('counts only creates that inserted a workflow', async () => {
    const { store, createUpTo, analyzed, counts } = await fresh();
    await createUpTo(990);
    // Twenty creates of ids that exist fail; they are not growth.
    const again = await Promise.allSettled(Array.from({ length: 20 }, (_, n) => store.createWorkflow(workflow(n))));
    expect(again.every((o) => o.status === 'rejected')).toBe(true);
    await store.close();
    expect(await analyzed()).toEqual(counts(0));
    await createUpTo(1000);
    expect(await analyzed()).toEqual(counts(1));
  });

  it('does not analyze with analyze: false', async () => {
    const { createUpTo, analyzed, counts } = await fresh(false);
    await createUpTo(1000);
    expect(await analyzed()).toEqual(counts(0));
  });
});
