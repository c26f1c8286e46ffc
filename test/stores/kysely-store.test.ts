import { Kysely, PostgresDialect, SqliteDialect, type LogEvent } from 'kysely';
import pg from 'pg';
import { afterEach, describe, expect, it } from 'vitest';
import { createManualClock } from '../../src/core/clock.js';
import type { ClaimRequest, CreateWorkflowInput, WorkflowStore, WorkflowTransaction } from '../../src/storage/workflow-store.js';
import { migrateToLatest } from '../../src/stores/kysely/kysely-migrations.js';
import { KyselyWorkflowStore } from '../../src/stores/kysely/kysely-workflow-store.js';
import { STATEMENT_MARKER } from '../../src/stores/kysely/pg-prepared-statements.js';
import { createPostgresDatabase, createSqliteDatabase, openSqlite } from '../support/databases.js';
import { storeFactory } from '../support/store-factories.js';

const T0 = Date.UTC(2026, 0, 1, 0, 0, 0, 321);

function workflow(id: string, steps = ['a', 'b', 'c']): CreateWorkflowInput {
  return {
    workflow: {
      id,
      tenantId: 'tenant-a',
      type: 'provision',
      serviceSlug: 'svc',
      status: 'pending',
      definitionVersion: 'v1',
      input: { plan: 'basic' },
      idempotencyKey: null,
      createdAt: new Date(T0),
    },
    steps: steps.map((name, position) => ({ name, position, dependsOn: [], maxAttempts: 3, dueAt: new Date(T0) })),
    history: [{ kind: 'workflow', stepName: null, from: null, to: 'pending', actor: null, reason: null, action: 'start', detail: null }],
  };
}

function claim(limit: number): ClaimRequest {
  return {
    workerId: 'w1',
    leaseMs: 60_000,
    limit,
    tokens: Array.from({ length: limit }, (_, i) => ({ leaseToken: `lease-${i}`, callbackTokenHash: `hash-${i}` })),
  };
}

describe.each(['sqlite', 'postgres'] as const)('KyselyWorkflowStore writes on %s', (name) => {
  const cleanups: (() => Promise<void>)[] = [];
  afterEach(async () => {
    while (cleanups.length) await cleanups.pop()!();
  });

  async function fresh(): Promise<WorkflowStore> {
    const { store, cleanup } = await storeFactory(name).create(createManualClock(T0));
    cleanups.push(cleanup);
    return store;
  }

  it('applies steps with different sets of changed columns in one transaction', async () => {
    const store = await fresh();
    await store.createWorkflow(workflow('w1'));
    await store.claimSteps(claim(3));
    await store.transact('w1', (tx) => {
      tx.updateStep('a', { status: 'completed', output: { a: 1 }, leaseToken: null }, { expectLeaseToken: 'lease-0' });
      tx.updateStep('b', { status: 'completed', output: { b: 2 }, leaseToken: null }, { expectLeaseToken: 'lease-1' });
      tx.updateStep('c', { pollCount: 4 });
      tx.updateStep('c', { dueAt: null });
      tx.appendHistory([{ kind: 'note', stepName: null, from: null, to: null, actor: null, reason: null, action: 'x', detail: [1] }]);
    });
    const steps = await store.getSteps('w1');
    expect(steps.map((s) => [s.name, s.status, s.output, s.leaseToken, s.pollCount, s.dueAt])).toEqual([
      ['a', 'completed', { a: 1 }, null, 0, new Date(T0)],
      ['b', 'completed', { b: 2 }, null, 0, new Date(T0)],
      ['c', 'running', null, 'lease-2', 4, null],
    ]);
    // start, workflow pending -> running, three step starts, the note.
    expect((await store.getHistory('w1')).map((h) => h.seq)).toEqual([1, 2, 3, 4, 5, 6]);
  });

  it('checks the fence of an update that changes nothing', async () => {
    const store = await fresh();
    await store.createWorkflow(workflow('w1', ['a']));
    await store.claimSteps(claim(1));
    await expect(store.transact('w1', (tx) => tx.updateStep('a', {}, { expectLeaseToken: 'other' }))).rejects.toMatchObject({
      code: 'stale_lease',
    });
    await expect(store.transact('w1', (tx) => tx.updateStep('a', {}, { expectLeaseToken: 'lease-0' }))).resolves.toBeUndefined();
  });

  it('rejects a value that is not JSON and writes nothing', async () => {
    const store = await fresh();
    await store.createWorkflow(workflow('w1', ['a']));
    const circular: Record<string, unknown> = {};
    circular['self'] = circular;
    // Fails in the callback, as a TypeError from JSON.stringify, before anything is sent.
    await expect(store.transact('w1', (tx) => tx.updateStep('a', { output: circular }))).rejects.toThrow(TypeError);
    expect((await store.getSteps('w1'))[0]?.output).toBeNull();
  });
});

describe.each(['postgres', 'sqlite'] as const)('KyselyWorkflowStore remembered state on %s', (dialect) => {
  const cleanups: (() => Promise<void>)[] = [];
  afterEach(async () => {
    while (cleanups.length) await cleanups.pop()!();
  });

  /** Two stores on one database, as two processes (on SQLite, two connections to one file): each remembers only its own writes. */
  async function twoStores(theirsOptions: { groupCommit?: boolean } = {}): Promise<{ mine: KyselyWorkflowStore; theirs: KyselyWorkflowStore }> {
    const clock = createManualClock(T0);
    if (dialect === 'postgres') {
      const database = await createPostgresDatabase();
      cleanups.push(() => database.cleanup());
      await migrateToLatest(database.db);
      return { mine: new KyselyWorkflowStore({ db: database.db, clock }), theirs: new KyselyWorkflowStore({ db: database.db, clock, ...theirsOptions }) };
    }
    const database = await createSqliteDatabase();
    cleanups.push(() => database.cleanup());
    await migrateToLatest(database.db);
    const other = new Kysely<any>({ dialect: new SqliteDialect({ database: openSqlite(database.file) }) });
    cleanups.push(() => other.destroy());
    return { mine: new KyselyWorkflowStore({ db: database.db, clock }), theirs: new KyselyWorkflowStore({ db: other, clock, ...theirsOptions }) };
  }

  it('decides again on a fresh read when what the store remembers is out of date', async () => {
    const { mine, theirs } = await twoStores();
    await mine.createWorkflow(workflow('w1'));
    await theirs.transact('w1', (tx) => tx.updateWorkflow({ currentStep: 'b' }), { optimistic: true });
    const seen: (string | null)[] = [];
    // A callback that fails, writes nothing, or writes on the remembered (old) state: each is run again on the current one.
    const failsOnOld = await mine.transact(
      'w1',
      (tx) => {
        seen.push(tx.workflow.currentStep);
        if (tx.workflow.currentStep !== 'b') throw new Error('decided on an old state');
        return 'ok';
      },
      { optimistic: true },
    );
    expect(failsOnOld).toBe('ok');
    expect(seen).toEqual([null, 'b']);
    // Mine writes (and remembers), theirs writes after it: a read-only callback must see theirs.
    await mine.transact('w1', (tx) => tx.updateWorkflow({ retryCount: 1 }), { optimistic: true });
    await theirs.transact('w1', (tx) => tx.updateWorkflow({ currentStep: 'c' }), { optimistic: true });
    const readOnly = await mine.transact('w1', (tx) => tx.workflow.currentStep, { optimistic: true });
    expect(readOnly).toBe('c');
    await theirs.transact('w1', (tx) => tx.updateWorkflow({ currentStep: 'd' }), { optimistic: true });
    await mine.transact('w1', (tx) => tx.updateWorkflow({ output: { after: tx.workflow.currentStep } }), { optimistic: true });
    expect(await mine.getWorkflow('w1')).toMatchObject({ currentStep: 'd', output: { after: 'd' } });
  });

  it('hands each callback its own copy of the remembered state', async () => {
    const { mine } = await twoStores();
    await mine.createWorkflow(workflow('w1'));
    await mine.transact('w1', (tx) => tx.updateStep('a', { output: { endpoint: { host: 'db-1', ports: [5432] } } }), { optimistic: true });
    // A callback that changes everything it is handed, and writes nothing of it…
    await mine.transact(
      'w1',
      (tx) => {
        (tx.workflow.input as { plan: string }).plan = 'changed';
        tx.workflow.createdAt.setTime(0);
        (tx.steps[0]!.output as { endpoint: { ports: number[] } }).endpoint.ports.push(1);
        tx.steps[0]!.dueAt!.setTime(0);
        tx.steps[1]!.dependsOn.push('x');
        tx.updateWorkflow({ currentStep: 'a' });
      },
      { optimistic: true },
    );
    // …leaves the next one (decided on what the store remembers) the stored state.
    const seen = await mine.transact('w1', (tx) => ({ workflow: tx.workflow, steps: tx.steps.map((s) => ({ ...s })) }), { optimistic: true });
    expect(seen.workflow).toMatchObject({ input: { plan: 'basic' }, createdAt: new Date(T0), currentStep: 'a' });
    expect(seen.steps[0]).toMatchObject({ output: { endpoint: { host: 'db-1', ports: [5432] } }, dueAt: new Date(T0) });
    expect(seen.steps[1]?.dependsOn).toEqual([]);
    expect(seen).toEqual({ workflow: await mine.getWorkflow('w1'), steps: await mine.getSteps('w1') });
  });

  it('sees the writes of a store with group commit', async () => {
    const { mine, theirs } = await twoStores({ groupCommit: true });
    await mine.createWorkflow(workflow('w1'));
    await Promise.all([
      theirs.transact('w1', (tx) => tx.updateWorkflow({ currentStep: 'batched' }), { optimistic: true }),
      theirs.transact('w1', (tx) => tx.updateStep('b', { pollCount: 7 })),
    ]);
    expect(await mine.transact('w1', (tx) => [tx.workflow.currentStep, tx.steps[1]?.pollCount], { optimistic: true })).toEqual(['batched', 7]);
  });

  it('sees a claim and a locked write by another store, and a step it fenced on the old state stays fenced', async () => {
    const { mine, theirs } = await twoStores();
    await mine.createWorkflow(workflow('w1', ['a']));
    // Theirs claims the step mine remembers as pending: mine decides on the claimed state…
    expect(await theirs.claimSteps(claim(1))).toHaveLength(1);
    await mine.transact('w1', (tx) => tx.updateWorkflow({ output: { seen: tx.steps[0]?.status ?? null } }), { optimistic: true });
    expect(await theirs.getWorkflow('w1')).toMatchObject({ status: 'running', output: { seen: 'running' } });
    // …and its fenced write on the old state fails.
    await expect(
      mine.transact('w1', (tx) => tx.updateStep('a', { status: 'completed', leaseToken: null }, { expectLeaseToken: null }), { optimistic: true }),
    ).rejects.toMatchObject({ code: 'stale_lease' });
    // A locked (admin) write by theirs is seen as well.
    await theirs.transact('w1', (tx) => tx.updateWorkflow({ currentStep: 'locked' }));
    expect(await mine.transact('w1', (tx) => [tx.workflow.currentStep, tx.steps[0]?.leaseToken], { optimistic: true })).toEqual(['locked', 'lease-0']);
    expect((await mine.getSteps('w1'))[0]).toMatchObject({ status: 'running', leaseToken: 'lease-0' });
  });
});

describe('KyselyWorkflowStore round trips', () => {
  const cleanups: (() => Promise<void>)[] = [];
  afterEach(async () => {
    while (cleanups.length) await cleanups.pop()!();
  });

  /**
   * A migrated database, and a second Kysely instance on it that records the
   * first two words of every statement (on Postgres without the store's
   * marker, which every statement but Kysely's transaction control carries).
   */
  async function logged(dialect: 'sqlite' | 'postgres'): Promise<{ db: Kysely<any>; statements: string[] }> {
    const database = dialect === 'sqlite' ? await createSqliteDatabase() : await createPostgresDatabase();
    cleanups.push(() => database.cleanup());
    await migrateToLatest(database.db);
    const statements: string[] = [];
    const log = (event: LogEvent) => {
      const text = event.query.sql.trim();
      const marked = text.startsWith(STATEMENT_MARKER);
      if (dialect === 'postgres' && !marked) expect(text).toMatch(/^(start transaction|commit|rollback)/i);
      statements.push(text.slice(marked ? STATEMENT_MARKER.length : 0).trim().split(/\s+/).slice(0, 2).join(' ').toLowerCase());
    };
    const dialectOf =
      'file' in database
        ? new SqliteDialect({ database: openSqlite(database.file) })
        : new PostgresDialect({ pool: new pg.Pool({ connectionString: database.url, max: 2 }) });
    const db = new Kysely<any>({ dialect: dialectOf, log });
    cleanups.push(() => db.destroy());
    return { db, statements };
  }

  it('writes on the state its own last write left without reading it, on SQLite', async () => {
    const { db, statements } = await logged('sqlite');
    const store = new KyselyWorkflowStore({ db, clock: createManualClock(T0) });
    await store.check();
    await store.createWorkflow(workflow('w1'));
    const complete = (name: string, lease: string | null) => (tx: WorkflowTransaction) => {
      tx.updateStep(name, { status: 'completed', leaseToken: null }, { expectLeaseToken: lease });
      tx.appendHistory([{ kind: 'step', stepName: name, from: 'pending', to: 'completed', actor: null, reason: null, action: null, detail: null }]);
    };
    // After the create, and after each write of its own: no read, and the update compares the row version.
    for (const name of ['a', 'b']) {
      statements.length = 0;
      await store.transact('w1', complete(name, null), { optimistic: true });
      expect(statements).toEqual(['begin immediate', 'update "sagaline_workflows"', 'update "sagaline_steps"', 'insert into', 'commit']);
    }
    // A locked write reads, and leaves a state the next optimistic write starts from.
    statements.length = 0;
    await store.transact('w1', (tx) => tx.updateWorkflow({ currentStep: 'c' }));
    expect(statements).toEqual(['begin immediate', 'select *', 'select *', 'update "sagaline_workflows"', 'commit']);
    statements.length = 0;
    await store.transact('w1', complete('c', null), { optimistic: true });
    expect(statements).toEqual(['begin immediate', 'update "sagaline_workflows"', 'update "sagaline_steps"', 'insert into', 'commit']);
    expect((await store.getSteps('w1')).map((s) => s.status)).toEqual(['completed', 'completed', 'completed']);
    expect((await store.getHistory('w1')).map((h) => h.seq)).toEqual([1, 2, 3, 4]);
    // So does a claim, once committed.
    await store.createWorkflow({ ...workflow('w2', ['a']), workflow: { ...workflow('w2').workflow, idempotencyKey: 'second' } });
    expect(await store.claimSteps(claim(1))).toHaveLength(1);
    statements.length = 0;
    await store.transact('w2', complete('a', 'lease-0'), { optimistic: true });
    expect(statements).toEqual(['begin immediate', 'update "sagaline_workflows"', 'update "sagaline_steps"', 'insert into', 'commit']);
    expect((await store.getSteps('w2'))[0]).toMatchObject({ status: 'completed', leaseToken: null });
  });

  it('claims in one statement and writes a transaction in one statement, on Postgres', async () => {
    const { db, statements } = await logged('postgres');
    // Without the background ANALYZE bookkeeping (tested on its own), whose first read follows the first create.
    const store = new KyselyWorkflowStore({ db, clock: createManualClock(T0), analyze: false });
    await store.check();

    statements.length = 0;
    await store.createWorkflow(workflow('w1'));
    expect(statements).toEqual(['with ins']);

    statements.length = 0;
    // At the server's default isolation, read committed: no transaction of the store's own.
    expect(await store.claimSteps(claim(3))).toHaveLength(3);
    expect(statements).toEqual(['with due']);

    statements.length = 0;
    await store.transact('w1', (tx) => {
      tx.updateStep('a', { status: 'completed', leaseToken: null }, { expectLeaseToken: 'lease-0' });
      tx.updateStep('b', { status: 'failed', error: { code: 'x', message: 'y' } });
      tx.updateWorkflow({ currentStep: 'b' });
      tx.appendHistory([{ kind: 'step', stepName: 'a', from: 'running', to: 'completed', actor: null, reason: null, action: null, detail: null }]);
    });
    expect(statements).toEqual(['start transaction', 'select w.*,', 'select *', 'with wf', 'commit']);

    // Optimistic: one read and one compare-and-set write, outside a transaction…
    const bump = () =>
      store.transact('w1', (tx) => tx.updateStep('c', { attempts: (tx.steps.find((s) => s.name === 'c')?.attempts ?? 0) + 1 }), { optimistic: true });
    const attemptsOfC = async () => (await store.getSteps('w1')).find((s) => s.name === 'c')?.attempts;
    const before = await attemptsOfC();
    expect(before).toBeTypeOf('number');
    statements.length = 0;
    await bump();
    expect(statements).toEqual(['select w.*,', 'with wf']);
    // …then, on the state its own write left, the write alone.
    statements.length = 0;
    await bump();
    expect(statements).toEqual(['with wf']);
    expect(await attemptsOfC()).toBe(before! + 2);

    // A workflow this store created, or claimed a step of, needs no read either.
    const note = (action: string) => (tx: WorkflowTransaction) =>
      tx.appendHistory([{ kind: 'note', stepName: null, from: null, to: null, actor: null, reason: null, action, detail: null }]);
    statements.length = 0;
    await store.createWorkflow({ ...workflow('w2'), workflow: { ...workflow('w2').workflow, idempotencyKey: 'second' } });
    await store.transact('w2', note('after-create'), { optimistic: true });
    expect(statements).toEqual(['with ins', 'with wf']);
    statements.length = 0;
    await store.claimSteps(claim(3));
    await store.transact('w2', note('after-claim'), { optimistic: true });
    expect(statements).toEqual(['with due', 'with wf']);
    expect((await store.getHistory('w2')).map((h) => h.action).filter((a) => a?.startsWith('after-'))).toEqual(['after-create', 'after-claim']);
  });
});
