import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { Kysely, sql, SqliteDialect } from 'kysely';
import { afterEach, describe, expect, it } from 'vitest';
import { createManualClock } from '../../src/core/clock.js';
import { migrateToLatest } from '../../src/stores/kysely/kysely-migrations.js';
import { KyselyWorkflowStore } from '../../src/stores/kysely/kysely-workflow-store.js';
import { runWorkflowStoreContract } from '../../src/testing/store-contract.js';
import { createSqliteDatabase, type SqliteTestDatabase } from '../support/databases.js';
import { contractFactory, storeFactory } from '../support/store-factories.js';

runWorkflowStoreContract('sqlite', contractFactory(storeFactory('sqlite').create));

const T0 = Date.UTC(2026, 0, 1, 0, 0, 0, 123);

function workflow(id: string) {
  return {
    workflow: {
      id,
      tenantId: 'tenant-a',
      type: 'provision',
      serviceSlug: null,
      status: 'pending' as const,
      definitionVersion: 'v1',
      input: { plan: 'basic' },
      idempotencyKey: null,
      createdAt: new Date(T0),
    },
    steps: [{ name: 'a', position: 0, dependsOn: [], maxAttempts: 3, dueAt: new Date(T0) }],
    history: [],
  };
}

describe('KyselyWorkflowStore on SQLite', () => {
  const opened: (() => Promise<void>)[] = [];
  afterEach(async () => {
    while (opened.length) await opened.pop()!();
  });

  async function fresh(): Promise<SqliteTestDatabase> {
    const database = await createSqliteDatabase();
    opened.push(() => database.cleanup());
    await migrateToLatest(database.db);
    return database;
  }

  /** A raw database file with the given settings, without going through the test helper. */
  function rawDatabase(configure: (sqlite: Database.Database) => void): Kysely<any> {
    const dir = mkdtempSync(join(tmpdir(), 'sagaline-sqlite-raw-'));
    const sqlite = new Database(join(dir, 'raw.db'));
    configure(sqlite);
    const db = new Kysely<any>({ dialect: new SqliteDialect({ database: sqlite }) });
    opened.push(async () => {
      await db.destroy();
      rmSync(dir, { recursive: true, force: true });
    });
    return db;
  }

  it('detects the dialect and passes its own check on a WAL database with a busy timeout', async () => {
    const { db } = await fresh();
    const store = new KyselyWorkflowStore({ db });
    expect(store.dialect).toBe('sqlite');
    await expect(store.check()).resolves.toBeUndefined();
  });

  it('refuses a file database that is not in WAL mode, naming the setting', async () => {
    const db = rawDatabase((sqlite) => sqlite.pragma('busy_timeout = 5000'));
    await migrateToLatest(db);
    const store = new KyselyWorkflowStore({ db });
    await expect(store.check()).rejects.toThrow(/journal_mode/);
    await expect(store.getWorkflow('x')).rejects.toMatchObject({ code: 'store', message: expect.stringMatching(/WAL/) });
  });

  it('refuses a file database without a busy timeout, naming the setting', async () => {
    const db = rawDatabase((sqlite) => {
      sqlite.pragma('journal_mode = WAL');
      sqlite.pragma('busy_timeout = 0');
    });
    await migrateToLatest(db);
    await expect(new KyselyWorkflowStore({ db }).check()).rejects.toThrow(/busy_timeout/);
  });

  it('accepts an in-memory database, where WAL and busy_timeout do not apply', async () => {
    const db = new Kysely<any>({ dialect: new SqliteDialect({ database: new Database(':memory:', { timeout: 0 }) }) });
    opened.push(() => db.destroy());
    await migrateToLatest(db);
    const store = new KyselyWorkflowStore({ db, clock: createManualClock(T0) });
    await expect(store.check()).resolves.toBeUndefined();
    await store.createWorkflow(workflow('w1'));
    expect((await store.claimSteps({ workerId: 'w', leaseMs: 1_000, limit: 1, tokens: [{ leaseToken: 'l', callbackTokenHash: 'h' }] })).map((c) => c.stepName)).toEqual(['a']);
  });

  it('tells the host to migrate when the tables are missing', async () => {
    const { db } = await createSqliteDatabase().then((d) => (opened.push(() => d.cleanup()), d));
    await expect(new KyselyWorkflowStore({ db }).getWorkflow('x')).rejects.toThrow(/migrateToLatest/);
  });

  it('uses the JavaScript clock without an injected one', async () => {
    const { db } = await fresh();
    const store = new KyselyWorkflowStore({ db });
    const before = Date.now();
    const now = (await store.now()).getTime();
    expect(now).toBeGreaterThanOrEqual(before);
    expect(now).toBeLessThanOrEqual(Date.now());
  });

  it('stores timestamps as integer epoch milliseconds', async () => {
    const { db } = await fresh();
    const store = new KyselyWorkflowStore({ db, clock: createManualClock(T0) });
    await store.createWorkflow(workflow('w1'));
    const { rows } = await sql<{ created_at: unknown; kind: string }>`select created_at, typeof(created_at) as kind from sagaline_workflows`.execute(db);
    expect(rows).toEqual([{ created_at: T0, kind: 'integer' }]);
  });

  it('runs inside a host transaction and rolls back with it', async () => {
    const { db } = await fresh();
    const clock = createManualClock(T0);
    await expect(
      db.transaction().execute(async (trx) => {
        const store = new KyselyWorkflowStore({ db: trx, clock });
        await store.createWorkflow(workflow('w1'));
        const claimed = await store.claimSteps({ workerId: 'w', leaseMs: 1_000, limit: 1, tokens: [{ leaseToken: 'l', callbackTokenHash: 'h' }] });
        expect(claimed.map((c) => c.stepName)).toEqual(['a']);
        await store.transact('w1', (tx) => tx.updateWorkflow({ currentStep: 'a' }));
        expect((await store.getWorkflow('w1'))?.currentStep).toBe('a');
        throw new Error('host rolls back');
      }),
    ).rejects.toThrow('host rolls back');
    expect(await new KyselyWorkflowStore({ db, clock }).getWorkflow('w1')).toBeNull();
  });

  it('uses its table prefix', async () => {
    const database = await createSqliteDatabase();
    opened.push(() => database.cleanup());
    await migrateToLatest(database.db, { tablePrefix: 'wf_' });
    const store = new KyselyWorkflowStore({ db: database.db, tablePrefix: 'wf_', clock: createManualClock(T0) });
    await store.createWorkflow(workflow('w1'));
    const { rows } = await sql<{ n: number }>`select count(*) as n from wf_steps`.execute(database.db);
    expect(rows[0]?.n).toBe(1);
    await expect(new KyselyWorkflowStore({ db: database.db }).check()).rejects.toThrow(/sagaline_steps/);
  });

  it('rejects the Postgres-only schema option and a malformed prefix', async () => {
    const { db } = await fresh();
    expect(() => new KyselyWorkflowStore({ db, schema: 'jobs' })).toThrow(/only supported on Postgres/);
    expect(() => new KyselyWorkflowStore({ db, tablePrefix: 'bad-prefix' })).toThrow(/tablePrefix/);
  });
});
