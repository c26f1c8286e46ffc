import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { Kysely, sql, SqliteDialect } from 'kysely';
import { afterEach, describe, expect, it } from 'vitest';
import { createManualClock } from '../../src/core/clock.js';
import type { CreateWorkflowInput } from '../../src/storage/workflow-store.js';
import { migrateToLatest, type KyselyMigrationOptions } from '../../src/stores/kysely/kysely-migrations.js';
import { KyselyWorkflowStore } from '../../src/stores/kysely/kysely-workflow-store.js';
import { createPostgresDatabase, createSqliteDatabase, openSqlite } from '../support/databases.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const childScript = join(root, 'test', 'support', 'migrate-child.ts');
const PROCESSES = 4;

type ChildResult = { ok: true; applied: string[] } | { ok: false; error: string };

/**
 * Starts `PROCESSES` processes that each call migrateToLatest on the same
 * database, releases them together once all are ready, and collects results.
 */
async function migrateConcurrently(dialect: 'postgres' | 'sqlite', target: string, options: KyselyMigrationOptions = {}): Promise<ChildResult[]> {
  const children = Array.from({ length: PROCESSES }, () => {
    const child = spawn(process.execPath, ['--import', 'tsx', childScript, dialect, target, JSON.stringify(options)], {
      cwd: root,
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString('utf8')));
    const lines = createInterface({ input: child.stdout });
    const output: string[] = [];
    const ready = new Promise<void>((resolve, reject) => {
      lines.on('line', (line) => {
        output.push(line);
        if (line === 'ready') resolve();
      });
      child.once('exit', (code) => reject(new Error(`migration process exited (${String(code)}) before it was ready: ${stderr}`)));
    });
    const exited = new Promise<ChildResult>((resolve, reject) => {
      child.once('exit', (code) => {
        const last = output[output.length - 1];
        if (last === undefined || last === 'ready') reject(new Error(`migration process exited (${String(code)}) without a result: ${stderr}`));
        else resolve(JSON.parse(last) as ChildResult);
      });
    });
    return { child, ready, exited };
  });
  await Promise.all(children.map((c) => c.ready));
  for (const { child } of children) child.stdin.end('go\n');
  return Promise.all(children.map((c) => c.exited));
}

/** Every migration, in the order they apply. */
const MIGRATIONS = ['0001_initial', '0002_callback_tokens_name_their_step'];

function expectAppliedOnce(results: ChildResult[]): void {
  expect(results.filter((r) => !r.ok)).toEqual([]);
  const applied = results.map((r) => (r.ok ? r.applied : []));
  expect(applied.filter((a) => a.length > 0)).toEqual([MIGRATIONS]);
  expect(applied.filter((a) => a.length === 0)).toHaveLength(PROCESSES - 1);
}

function workflow(id: string): CreateWorkflowInput {
  const at = new Date(Date.UTC(2026, 0, 1));
  return {
    workflow: {
      id,
      tenantId: 'tenant-a',
      type: 'provision',
      serviceSlug: null,
      status: 'pending',
      definitionVersion: 'v1',
      input: null,
      idempotencyKey: null,
      createdAt: at,
    },
    steps: [{ name: 'a', position: 0, dependsOn: [], maxAttempts: 1, dueAt: at }],
    history: [],
  };
}

/** {@link workflow} with one history entry. */
function workflowWithHistory(id: string): CreateWorkflowInput {
  const entry = { kind: 'workflow' as const, stepName: null, from: null, to: 'pending' as const, actor: null, reason: null, action: null, detail: null };
  return { ...workflow(id), history: [entry] };
}

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

describe('migrateToLatest on Postgres', () => {
  async function fresh() {
    const database = await createPostgresDatabase();
    cleanups.push(() => database.cleanup());
    return database;
  }

  it('applies the schema once when several processes migrate at the same time', async () => {
    const { db, url } = await fresh();
    expectAppliedOnce(await migrateConcurrently('postgres', url));
    const { rows } = await sql<{ name: string }>`select name from sagaline_migration`.execute(db);
    expect(rows).toEqual(MIGRATIONS.map((name) => ({ name })));
    const indexes = await sql<{ indexname: string }>`select indexname from pg_indexes where tablename = 'sagaline_steps' order by indexname`.execute(db);
    expect(indexes.rows.map((r) => r.indexname)).toEqual(['sagaline_steps_due_idx', 'sagaline_steps_pkey']);
    const tables = await sql<{ table_name: string }>`
      select table_name from information_schema.tables where table_schema = 'public' order by table_name`.execute(db);
    expect(tables.rows.map((r) => r.table_name)).toEqual([
      'sagaline_history',
      'sagaline_migration',
      'sagaline_migration_lock',
      'sagaline_steps',
      'sagaline_workflows',
    ]);
    expect(await migrateToLatest(db)).toEqual({ applied: [] });
  });

  it('applies the schema once in a named schema with a table prefix, from several processes', async () => {
    const { db, url } = await fresh();
    const options = { schema: 'jobs', tablePrefix: 'wf_' };
    expectAppliedOnce(await migrateConcurrently('postgres', url, options));
    const tables = await sql<{ table_name: string }>`
      select table_name from information_schema.tables where table_schema = 'jobs' order by table_name`.execute(db);
    expect(tables.rows.map((r) => r.table_name)).toEqual(['wf_history', 'wf_migration', 'wf_migration_lock', 'wf_steps', 'wf_workflows']);
    const store = new KyselyWorkflowStore({ db, ...options, clock: createManualClock() });
    await store.createWorkflow(workflow('w1'));
    const { rows } = await sql<{ id: string }>`select id from jobs.wf_workflows`.execute(db);
    expect(rows).toEqual([{ id: 'w1' }]);
  });

  it('keeps same-prefixed tables in different schemas apart, whichever is migrated first', async () => {
    const { db } = await fresh();
    const clock = createManualClock();
    expect(await migrateToLatest(db, { schema: 'tenant_one' })).toEqual({ applied: MIGRATIONS });
    expect(await migrateToLatest(db)).toEqual({ applied: MIGRATIONS });
    expect(await migrateToLatest(db, { schema: 'tenant_two' })).toEqual({ applied: MIGRATIONS });
    const one = new KyselyWorkflowStore({ db, schema: 'tenant_one', clock });
    const publicStore = new KyselyWorkflowStore({ db, clock });
    await one.createWorkflow(workflow('only-in-one'));
    expect(await one.getWorkflow('only-in-one')).not.toBeNull();
    expect(await publicStore.getWorkflow('only-in-one')).toBeNull();
    expect(await new KyselyWorkflowStore({ db, schema: 'tenant_two', clock }).getWorkflow('only-in-one')).toBeNull();
  });

  it('deletes the steps and history of deleted workflows, whatever the search path', async () => {
    const { db } = await fresh();
    const clock = createManualClock();
    await migrateToLatest(db);
    await migrateToLatest(db, { schema: 'jobs', tablePrefix: 'wf_' });
    const publicStore = new KyselyWorkflowStore({ db, clock });
    const jobs = new KyselyWorkflowStore({ db, schema: 'jobs', tablePrefix: 'wf_', clock });
    for (const store of [publicStore, jobs]) for (const id of ['gone', 'kept']) await store.createWorkflow(workflowWithHistory(id));
    await sql`set search_path to pg_catalog`.execute(db);
    try {
      await sql`delete from public.sagaline_workflows where id = 'gone'`.execute(db);
      await sql`delete from jobs.wf_workflows where id in ('gone', 'kept')`.execute(db);
    } finally {
      await sql`reset search_path`.execute(db);
    }
    expect(await publicStore.getWorkflow('gone')).toBeNull();
    expect(await publicStore.getSteps('gone')).toEqual([]);
    expect(await publicStore.getHistory('gone')).toEqual([]);
    expect((await publicStore.getSteps('kept')).length).toBeGreaterThan(0);
    expect((await publicStore.getHistory('kept')).length).toBeGreaterThan(0);
    const left = await sql<{ n: number }>`
      select (select count(*) from jobs.wf_steps)::int + (select count(*) from jobs.wf_history)::int as n`.execute(db);
    expect(left.rows).toEqual([{ n: 0 }]);
  });

  it('refuses a transaction, which cannot hold the migrator', async () => {
    const { db } = await fresh();
    await expect(db.transaction().execute((trx) => migrateToLatest(trx))).rejects.toThrow(/not a Transaction/);
  });
});

describe('migrateToLatest on SQLite', () => {
  it('applies the schema once when several processes migrate the same file at the same time', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'sagaline-migrate-'));
    cleanups.push(async () => rmSync(dir, { recursive: true, force: true }));
    const file = join(dir, 'shared.db');
    expectAppliedOnce(await migrateConcurrently('sqlite', file));
    const db = new Kysely<any>({ dialect: new SqliteDialect({ database: openSqlite(file) }) });
    cleanups.push(() => db.destroy());
    const { rows } = await sql<{ name: string }>`select name from sagaline_migration`.execute(db);
    expect(rows).toEqual(MIGRATIONS.map((name) => ({ name })));
    const tables = await sql<{ name: string }>`
      select name from sqlite_master where type = 'table' order by name`.execute(db);
    expect(tables.rows.map((r) => r.name)).toEqual([
      'sagaline_history',
      'sagaline_migration',
      'sagaline_migration_lock',
      'sagaline_steps',
      'sagaline_workflows',
    ]);
    expect(await migrateToLatest(db)).toEqual({ applied: [] });
  });

  it('deletes the steps and history of deleted workflows, without the foreign_keys pragma', async () => {
    const database = await createSqliteDatabase();
    cleanups.push(() => database.cleanup());
    const { db } = database;
    await migrateToLatest(db);
    await sql`pragma foreign_keys = off`.execute(db);
    const store = new KyselyWorkflowStore({ db, clock: createManualClock() });
    for (const id of ['gone', 'kept']) await store.createWorkflow(workflowWithHistory(id));
    await sql`delete from sagaline_workflows where id = 'gone'`.execute(db);
    expect(await store.getWorkflow('gone')).toBeNull();
    expect(await store.getSteps('gone')).toEqual([]);
    expect(await store.getHistory('gone')).toEqual([]);
    expect((await store.getSteps('kept')).length).toBeGreaterThan(0);
    expect((await store.getHistory('kept')).length).toBeGreaterThan(0);
  });

  it('uses the table prefix for tables, indexes and migration tables', async () => {
    const database = await createSqliteDatabase();
    cleanups.push(() => database.cleanup());
    expect(await migrateToLatest(database.db, { tablePrefix: 'wf_' })).toEqual({ applied: MIGRATIONS });
    expect(await migrateToLatest(database.db)).toEqual({ applied: MIGRATIONS });
    const { rows } = await sql<{ name: string }>`
      select name from sqlite_master where name like 'wf\\_%' escape '\\' order by name`.execute(database.db);
    const names = rows.map((r) => r.name);
    expect(names).toEqual(expect.arrayContaining(['wf_migration', 'wf_migration_lock', 'wf_workflows', 'wf_steps', 'wf_history', 'wf_steps_due_idx']));
    // The callback-hash index the first migration made is gone: a callback reads its step by key.
    expect(names).not.toContain('wf_steps_callback_idx');
    expect(names.every((n) => n.startsWith('wf_'))).toBe(true);
    await new KyselyWorkflowStore({ db: database.db, tablePrefix: 'wf_', clock: createManualClock() }).createWorkflow(workflow('w1'));
    expect(await new KyselyWorkflowStore({ db: database.db, clock: createManualClock() }).getWorkflow('w1')).toBeNull();
  });
});
