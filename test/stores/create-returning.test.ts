/**
 * A create reads back only the new row's id (on Postgres, with its row
 * version): the store builds the record from what it sent, so a workflow's
 * input does not travel back and is not parsed twice. The record must still
 * be the one a read returns, and share nothing with the caller's input.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Kysely, SqliteDialect } from 'kysely';
import { afterEach, describe, expect, it } from 'vitest';
import type { CreateWorkflowInput } from '../../src/storage/workflow-store.js';
import { migrateToLatest } from '../../src/stores/kysely/kysely-migrations.js';
import { KyselyWorkflowStore } from '../../src/stores/kysely/kysely-workflow-store.js';
import { cachedStatements } from '../../src/stores/kysely/sqlite-statement-cache.js';
import { createPostgresSchema, openSqlite } from '../support/databases.js';
import { recordingKysely } from '../support/recording-pool.js';

const T0 = Date.UTC(2026, 0, 1, 12, 30, 15, 250);

/** A store on a database whose driver records the result columns of every create statement. */
interface RecordingStore {
  store: KyselyWorkflowStore;
  createColumns: string[][];
  cleanup: () => Promise<void>;
}

/** A workflow insert (a create statement), on either dialect, with or without a schema. */
const isCreate = (text: string) => /insert into \S*sagaline_workflows"? \(/.test(text);

async function postgresStore(groupCommit: boolean): Promise<RecordingStore> {
  const database = await createPostgresSchema();
  await migrateToLatest(database.db, { schema: database.schema });
  const createColumns: string[][] = [];
  const db = recordingKysely(database.url, ({ text }, result) => {
    if (!isCreate(text) || !result) return;
    void result.then(
      (r) => createColumns.push(r.fields.map((f) => f.name)),
      () => undefined,
    );
  });
  const store = new KyselyWorkflowStore({ db, schema: database.schema, groupCommit });
  return {
    store,
    createColumns,
    cleanup: async () => {
      await db.destroy();
      await database.cleanup();
    },
  };
}

async function sqliteStore(groupCommit: boolean): Promise<RecordingStore> {
  const dir = mkdtempSync(join(tmpdir(), 'sagaline-create-'));
  const sqlite = openSqlite(join(dir, 'test.db'));
  const createColumns: string[][] = [];
  // better-sqlite3 reports a statement's result columns; Kysely's dialect prepares every statement it runs here.
  const prepare = sqlite.prepare.bind(sqlite);
  (sqlite as unknown as { prepare: (text: string) => unknown }).prepare = (text: string) => {
    const statement = prepare(text);
    if (isCreate(text) && statement.reader) createColumns.push(statement.columns().map((c) => c.name));
    return statement;
  };
  const db = new Kysely<any>({ dialect: new SqliteDialect({ database: cachedStatements(sqlite) }) });
  await migrateToLatest(db);
  const store = new KyselyWorkflowStore({ db, groupCommit });
  return {
    store,
    createColumns,
    cleanup: async () => {
      await db.destroy();
      rmSync(dir, { recursive: true, force: true });
    },
  };
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

const DIALECTS = [
  { name: 'Postgres', open: postgresStore, returned: ['id', 'row_version'] },
  { name: 'SQLite', open: sqliteStore, returned: ['id'] },
];

describe('creates', () => {
  const cleanups: (() => Promise<void>)[] = [];
  afterEach(async () => {
    while (cleanups.length) await cleanups.pop()!();
  });

  for (const dialect of DIALECTS) {
    for (const groupCommit of [false, true]) {
      it(`on ${dialect.name} read back only ${dialect.returned.join(' and ')}, and return the record a read returns, with groupCommit ${String(groupCommit)}`, async () => {
        const { store, createColumns, cleanup } = await dialect.open(groupCommit);
        cleanups.push(cleanup);

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
        for (const columns of createColumns) expect(columns).toEqual(dialect.returned);
      });
    }
  }
});
