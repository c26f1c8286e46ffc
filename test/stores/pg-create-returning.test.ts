/**
 * A create on Postgres reads back only the new row's id and version: the
 * store builds the record from what it sent, so a workflow's input does not
 * travel back over the wire and is not parsed twice. The record must still
 * be the one a read returns, and share nothing with the caller's input.
 */
import type { Kysely } from 'kysely';
import { afterEach, describe, expect, it } from 'vitest';
import type { CreateWorkflowInput } from '../../src/storage/workflow-store.js';
import { migrateToLatest } from '../../src/stores/kysely/kysely-migrations.js';
import { KyselyWorkflowStore } from '../../src/stores/kysely/kysely-workflow-store.js';
import { createPostgresSchema } from '../support/databases.js';
import { recordingKysely } from '../support/recording-pool.js';

const T0 = Date.UTC(2026, 0, 1, 12, 30, 15, 250);

/** A Kysely instance whose connections record the result columns of every create statement. */
function recordingDb(url: string): { db: Kysely<any>; createColumns: string[][] } {
  const createColumns: string[][] = [];
  const db = recordingKysely(url, ({ text }, result) => {
    if (!text.includes('insert into') || !text.includes(' ins as (') || !result) return;
    void result.then(
      (r) => createColumns.push(r.fields.map((f) => f.name)),
      () => undefined,
    );
  });
  return { db, createColumns };
}

function createInput(id: string, input: unknown, idempotencyKey: string | null): CreateWorkflowInput {
  const createdAt = new Date(T0);
  return {
    workflow: { id, tenantId: 't', type: 'provision', serviceSlug: 'db', status: 'pending', definitionVersion: '3', input, idempotencyKey, createdAt },
    steps: [
      { name: 'first', position: 0, dependsOn: [], maxAttempts: 3, dueAt: createdAt },
      { name: 'second', position: 1, dependsOn: ['first'], maxAttempts: 1, dueAt: null },
    ],
    history: [{ kind: 'workflow', stepName: null, from: null, to: 'pending', actor: null, reason: null, action: 'start', detail: null }],
  };
}

describe('creates on Postgres', () => {
  const cleanups: (() => Promise<void>)[] = [];
  afterEach(async () => {
    while (cleanups.length) await cleanups.pop()!();
  });

  for (const groupCommit of [false, true]) {
    it(`read back only the id and row version, and return the record a read returns, with groupCommit ${String(groupCommit)}`, async () => {
      const database = await createPostgresSchema();
      cleanups.push(() => database.cleanup());
      await migrateToLatest(database.db, { schema: database.schema });
      const { db, createColumns } = recordingDb(database.url);
      cleanups.push(() => db.destroy());
      const store = new KyselyWorkflowStore({ db, schema: database.schema, groupCommit });

      // Keys out of jsonb's order, nesting, text that needs escaping, numbers, nulls; and no input at all.
      const inputs: unknown[] = [
        { zeta: 1, alpha: { b: [1, 'two', null, { c: true }], a: 'quote " and \\ backslash' }, n: -0.5 },
        [3, 'x', { y: 1e21 }],
        'plain text',
        null,
      ];
      const results = await Promise.all(inputs.map((input, i) => store.createWorkflow(createInput(`wf_${i}`, input, `key-${i}`))));
      for (const [i, result] of results.entries()) {
        expect(result.created).toBe(true);
        expect(result.workflow).toEqual(await store.getWorkflow(`wf_${i}`));
        expect(result.workflow).toMatchObject({ id: `wf_${i}`, status: 'pending', createdAt: new Date(T0), updatedAt: new Date(T0), input: inputs[i] });
      }

      // The record holds its own copy of the input: changing the caller's object afterwards changes nothing in it.
      const callerInput = { nested: { list: [1, 2] } };
      const created = await store.createWorkflow(createInput('wf_copy', callerInput, null));
      callerInput.nested.list.push(3);
      expect(created.workflow.input).toEqual({ nested: { list: [1, 2] } });
      expect(created.workflow.input).not.toBe(callerInput);

      // A create whose idempotency key is taken inserts nothing, and answers with the workflow that has it.
      const repeat = await store.createWorkflow(createInput('wf_repeat', { other: true }, 'key-0'));
      expect(repeat.created).toBe(false);
      expect(repeat.workflow).toEqual(await store.getWorkflow('wf_0'));
      expect(await store.getWorkflow('wf_repeat')).toBeNull();

      await new Promise((resolve) => setTimeout(resolve, 0));
      expect(createColumns.length).toBeGreaterThan(0);
      for (const columns of createColumns) expect(columns).toEqual(['id', 'row_version']);
    });
  }
});
