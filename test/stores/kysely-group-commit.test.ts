/**
 * Group commit of the Kysely store: concurrent `transact` calls share one
 * database transaction. Checked on SQLite and Postgres: the store contract,
 * results equal to serial application, isolation of a throwing callback, a
 * stale fence and an unknown workflow within a batch, and that a batch that
 * fails to commit (a forced failure, or its connection killed) writes nothing
 * and fails every caller, while what committed before stays; and an engine
 * on such a store, whose results must be durable before events and dependents.
 */
import { Kysely, PostgresDialect, sql, SqliteDialect, type LogEvent, type RawBuilder } from 'kysely';
import pg from 'pg';
import { afterEach, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { createManualClock, type ManualClock } from '../../src/core/clock.js';
import { defineWorkflow, step } from '../../src/core/define-workflow.js';
import { createEngine } from '../../src/engine/workflow-engine.js';
import type { ClaimRequest, CreateWorkflowInput, NewHistoryEntry, WorkflowStore, WorkflowTransaction } from '../../src/storage/workflow-store.js';
import { migrateToLatest } from '../../src/stores/kysely/kysely-migrations.js';
import { contractFactory } from '../support/store-factories.js';
import { until } from '../fixtures/harness.js';
import { KyselyWorkflowStore } from '../../src/stores/kysely/kysely-workflow-store.js';
import { STATEMENT_MARKER } from '../../src/stores/kysely/pg-prepared-statements.js';
import type { KyselyWorkflowStoreConfig } from '../../src/stores/kysely/kysely-workflow-store-config.js';
import { runWorkflowStoreContract } from '../../src/testing/store-contract.js';
import { createPostgresDatabase, createPostgresSchema, createSqliteDatabase, openSqlite } from '../support/databases.js';

const T0 = Date.UTC(2026, 0, 1, 0, 0, 0, 250);

type Dialect = 'sqlite' | 'postgres';

interface GroupStore {
  store: KyselyWorkflowStore;
  db: Kysely<any>;
  /** The store's tables (schema-qualified on Postgres). */
  table(name: 'history' | 'steps'): RawBuilder<unknown>;
  /** Another group-commit store on the same tables, through a Kysely instance that logs every statement. */
  logged(log: (event: LogEvent) => void): KyselyWorkflowStore;
  cleanup(): Promise<void>;
}

/** A migrated database for a group-commit store, with a way to clean up. */
async function groupStore(dialect: Dialect, clock: ManualClock, options: Partial<KyselyWorkflowStoreConfig> = {}): Promise<GroupStore> {
  const extra: (() => Promise<void>)[] = [];
  const closeExtra = async () => {
    while (extra.length) await extra.pop()!();
  };
  if (dialect === 'sqlite') {
    const database = await createSqliteDatabase();
    await migrateToLatest(database.db);
    return {
      store: new KyselyWorkflowStore({ db: database.db, clock, groupCommit: true, ...options }),
      db: database.db,
      table: (name) => sql.id(`sagaline_${name}`),
      logged(log) {
        const db = new Kysely<any>({ dialect: new SqliteDialect({ database: openSqlite(database.file) }), log });
        extra.push(() => db.destroy());
        return new KyselyWorkflowStore({ db, clock, groupCommit: true, ...options });
      },
      cleanup: async () => {
        await closeExtra();
        await database.cleanup();
      },
    };
  }
  const database = await createPostgresSchema();
  await migrateToLatest(database.db, { schema: database.schema });
  return {
    store: new KyselyWorkflowStore({ db: database.db, schema: database.schema, clock, groupCommit: true, ...options }),
    db: database.db,
    table: (name) => sql.id(database.schema, `sagaline_${name}`),
    logged(log) {
      const db = new Kysely<any>({ dialect: new PostgresDialect({ pool: new pg.Pool({ connectionString: database.url, max: 2 }) }), log });
      extra.push(() => db.destroy());
      // Only the operations' statements are logged: no background ANALYZE bookkeeping (tested on its own).
      return new KyselyWorkflowStore({ db, schema: database.schema, clock, groupCommit: true, analyze: false, ...options });
    },
    cleanup: async () => {
      await closeExtra();
      await database.cleanup();
    },
  };
}

for (const dialect of ['sqlite', 'postgres'] as const) {
  runWorkflowStoreContract(`${dialect} with group commit`, contractFactory((clock) => groupStore(dialect, clock)));
}

function workflow(id: string, steps = ['a']): CreateWorkflowInput {
  return {
    workflow: {
      id,
      tenantId: 'tenant-a',
      type: 'provision',
      serviceSlug: null,
      status: 'pending',
      definitionVersion: 'v1',
      input: { n: id },
      idempotencyKey: null,
      createdAt: new Date(T0),
    },
    steps: steps.map((name, position) => ({ name, position, dependsOn: [], maxAttempts: 3, dueAt: new Date(T0) })),
    history: [{ kind: 'workflow', stepName: null, from: null, to: 'pending', actor: null, reason: null, action: 'start', detail: null }],
  };
}

/** A two-step workflow with an idempotency key. */
function keyed(id: string, key: string): CreateWorkflowInput {
  const w = workflow(id, ['a', 'b']);
  return { ...w, workflow: { ...w.workflow, idempotencyKey: key } };
}

function note(action: string, detail: unknown = null): NewHistoryEntry {
  return { kind: 'note', stepName: null, from: null, to: null, actor: null, reason: null, action, detail };
}

function claim(limit: number, prefix = 'lease'): ClaimRequest {
  return {
    workerId: 'w1',
    leaseMs: 60_000,
    limit,
    tokens: Array.from({ length: limit }, (_, i) => ({ leaseToken: `${prefix}-${i}`, callbackTokenHash: `${prefix}-hash-${i}` })),
  };
}

function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

/** Adds one to the counter kept in the workflow's `output`, and records the value seen in a note. */
function increment(tag: string) {
  return (tx: Parameters<Parameters<WorkflowStore['transact']>[1]>[0]): number => {
    const seen = ((tx.workflow.output as { n?: number } | null)?.n ?? 0) + 1;
    tx.updateWorkflow({ output: { n: seen } });
    tx.appendHistory([note('inc', { tag, seen })]);
    return seen;
  };
}

/** Everything a workflow holds, for before/after comparisons. */
async function snapshot(store: WorkflowStore, id: string): Promise<unknown> {
  return { workflow: await store.getWorkflow(id), steps: await store.getSteps(id), history: await store.getHistory(id) };
}

describe.each([
  ['sqlite', false],
  ['postgres', false],
  ['postgres', true],
] as const)('group commit on %s, optimistic transactions: %s', (dialect, optimistic) => {
  /** `store.transact`, optimistic or not as this suite runs. */
  const transact = <T>(store: WorkflowStore, id: string, fn: (tx: WorkflowTransaction) => T | Promise<T>) => store.transact(id, fn, { optimistic });

  const opened: (() => Promise<void>)[] = [];
  afterEach(async () => {
    while (opened.length) await opened.pop()!();
  });

  async function fresh(options: Partial<KyselyWorkflowStoreConfig> = {}) {
    const clock = createManualClock(T0);
    const made = await groupStore(dialect, clock, options);
    opened.push(made.cleanup);
    return { ...made, clock };
  }

  it('gives the results of serial application to many concurrent transactions on few workflows', async () => {
    const { store } = await fresh();
    const ids = Array.from({ length: 12 }, (_, i) => `w${String(i).padStart(2, '0')}`);
    for (const id of ids) await store.createWorkflow(workflow(id));
    // 240 calls at once: 20 per workflow, interleaved; a batch takes each workflow once.
    const calls = Array.from({ length: 240 }, (_, i) => ({ id: ids[i % ids.length]!, tag: `c${i}` }));
    const results = await Promise.all(calls.map((c) => transact(store, c.id, increment(c.tag))));
    for (const id of ids) {
      const mine = calls.flatMap((c, i) => (c.id === id ? [{ tag: c.tag, seen: results[i] }] : []));
      // Calls on one workflow ran in arrival order, each seeing the one before.
      expect(mine.map((m) => m.seen)).toEqual(mine.map((_, k) => k + 1));
      expect((await store.getWorkflow(id))?.output).toEqual({ n: 20 });
      const history = await store.getHistory(id);
      expect(history.map((h) => h.seq)).toEqual(Array.from({ length: 21 }, (_, k) => k + 1));
      expect(history.slice(1).map((h) => h.detail)).toEqual(mine);
    }
  });

  it('commits concurrent transactions on different workflows in one transaction of few statements', async () => {
    const { store, logged } = await fresh();
    for (let i = 0; i < 8; i++) await store.createWorkflow(workflow(`w${i}`, ['a', 'b']));
    await store.claimSteps(claim(16));
    const statements: string[] = [];
    const observed = logged((event) =>
      statements.push(event.query.sql.trim().replace(STATEMENT_MARKER, '').trim().split(/\s+/).slice(0, 2).join(' ').toLowerCase()),
    );
    await observed.check();
    const steps = await Promise.all(Array.from({ length: 8 }, (_, i) => store.getSteps(`w${i}`)));
    statements.length = 0;
    await Promise.all(
      steps.map(([a, b], i) =>
        transact(observed, `w${i}`, (tx) => {
          const done = { status: 'completed', output: { i }, leaseToken: null, leaseOwner: null, leaseExpiresAt: null } as const;
          tx.updateStep('a', done, { expectLeaseToken: a!.leaseToken });
          if (i % 2 === 0) tx.updateStep('b', { pollCount: i }, { expectLeaseToken: b!.leaseToken });
          tx.updateWorkflow({ currentStep: 'a' });
          tx.appendHistory([note(`done ${i}`)]);
        }),
      ),
    );
    if (dialect === 'postgres' && optimistic) {
      // This store wrote none of these workflows: one statement reads them all, one compare-and-set statement writes.
      expect(statements).toEqual(['select w.*,', 'with wf']);
    } else if (dialect === 'postgres') {
      // Lock every row, read every step, one statement of writes.
      expect(statements).toEqual(['start transaction', 'select w.*,', 'select *', 'with "p0"', 'commit']);
    } else {
      // The workflows, two groups of steps, the history.
      expect(statements).toEqual(['begin immediate', 'select *', 'select *', 'with v("k_id",', 'with v("k_wf",', 'with v("k_wf",', 'insert into', 'commit']);
    }
    for (let i = 0; i < 8; i++) {
      const [a, b] = await store.getSteps(`w${i}`);
      expect(a).toMatchObject({ status: 'completed', output: { i }, leaseToken: null });
      expect(b).toMatchObject({ status: 'running', pollCount: i % 2 === 0 ? i : 0 });
      expect((await store.getHistory(`w${i}`)).at(-1)?.action).toBe(`done ${i}`);
      expect((await store.getWorkflow(`w${i}`))?.currentStep).toBe('a');
    }
  });

  it('fails only the caller whose callback throws, an unknown workflow or a stale fence', async () => {
    const { store } = await fresh();
    for (const id of ['ok1', 'boom', 'stale', 'ok2']) await store.createWorkflow(workflow(id));
    await store.claimSteps(claim(4));
    const before = { boom: await snapshot(store, 'boom'), stale: await snapshot(store, 'stale') };
    const boom = new Error('boom');
    const gate = deferred();
    const outcomes = await Promise.allSettled([
      transact(store, 'ok1', async (tx) => {
        // Still running when the others have finished: they wait for the batch's commit.
        await gate.promise;
        return increment('ok1')(tx);
      }),
      transact(store, 'boom', (tx) => {
        increment('boom')(tx);
        gate.resolve();
        throw boom;
      }),
      transact(store, 'stale', (tx) => {
        increment('stale')(tx);
        tx.updateStep('a', { status: 'completed' }, { expectLeaseToken: 'not-the-lease' });
      }),
      transact(store, 'missing', () => 'never called'),
      transact(store, 'ok2', increment('ok2')),
    ]);
    expect(outcomes[0]).toEqual({ status: 'fulfilled', value: 1 });
    expect(outcomes[1]).toEqual({ status: 'rejected', reason: boom });
    expect(outcomes[2]).toMatchObject({ status: 'rejected', reason: { code: 'stale_lease', workflowId: 'stale' } });
    expect(outcomes[3]).toMatchObject({ status: 'rejected', reason: { code: 'not_found', workflowId: 'missing' } });
    expect(outcomes[4]).toEqual({ status: 'fulfilled', value: 1 });
    expect(await snapshot(store, 'boom')).toEqual(before.boom);
    expect(await snapshot(store, 'stale')).toEqual(before.stale);
    expect((await store.getWorkflow('ok1'))?.output).toEqual({ n: 1 });
    expect((await store.getWorkflow('ok2'))?.output).toEqual({ n: 1 });
  });

  it('runs a second transaction on the same workflow in a later batch, after the first committed', async () => {
    const { store } = await fresh({ groupCommit: { maxBatch: 2, maxConcurrentBatches: 1 } });
    for (const id of ['a', 'b', 'c']) await store.createWorkflow(workflow(id));
    const order: string[] = [];
    const track = (label: string, id: string) =>
      transact(store, id, (tx) => {
        order.push(`${label}:${String((tx.workflow.output as { n?: number } | null)?.n ?? 0)}`);
        increment(label)(tx);
      });
    // Batch 1 takes a1 and b (maxBatch 2, a2 waits for a1); batch 2 takes a2 and c.
    await Promise.all([track('a1', 'a'), track('a2', 'a'), track('b', 'b'), track('c', 'c')]);
    expect(order).toEqual(['a1:0', 'b:0', 'a2:1', 'c:0']);
    expect((await store.getWorkflow('a'))?.output).toEqual({ n: 2 });
  });

  it('commits batches on different workflows at once, a workflow in one batch at a time', async () => {
    const { store } = await fresh({ groupCommit: { maxBatch: 2, maxConcurrentBatches: 2 } });
    for (const id of ['a', 'b', 'c', 'd']) await store.createWorkflow(workflow(id));
    const gate = deferred();
    const entered: string[] = [];
    const order: string[] = [];
    const track = (label: string, id: string, wait: boolean) =>
      transact(store, id, async (tx) => {
        entered.push(label);
        if (wait) await gate.promise;
        order.push(`${label}:${String((tx.workflow.output as { n?: number } | null)?.n ?? 0)}`);
        return increment(label)(tx);
      });
    // Batch 1 (a1, b) waits in its callbacks; batch 2 (a2 is held back: a is busy) takes c and d meanwhile.
    const first = [track('a1', 'a', true), track('b', 'b', false)];
    const later = [track('a2', 'a', false), track('c', 'c', false), track('d', 'd', false)];
    if (dialect === 'postgres') {
      // The second batch runs (and commits) while the first is still open; SQLite's one connection makes it wait.
      await until(() => order.includes('c:0') && order.includes('d:0'), 'the second batch');
      await Promise.all(later.slice(1));
    }
    expect(entered).not.toContain('a2');
    gate.resolve();
    await Promise.all([...first, ...later]);
    expect(order.indexOf('a2:1')).toBeGreaterThan(order.indexOf('a1:0'));
    expect((await store.getWorkflow('a'))?.output).toEqual({ n: 2 });
    for (const id of ['b', 'c', 'd']) expect((await store.getWorkflow(id))?.output).toEqual({ n: 1 });
  });

  it('writes nothing of a batch that fails to commit, fails every caller, and goes on', async () => {
    const { store, db, table } = await fresh();
    const ids = ['w1', 'w2', 'w3', 'w4'];
    for (const id of ids) await store.createWorkflow(workflow(id));
    await Promise.all(ids.map((id) => transact(store, id, increment(`${id}-first`))));
    // A note with action 'explode' fails the transaction: at commit on Postgres (a deferred
    // constraint trigger), at its insert on SQLite.
    if (dialect === 'postgres') {
      await sql`create or replace function explode() returns trigger language plpgsql as $$
        begin if new.action = 'explode' then raise exception 'exploded at commit'; end if; return new; end $$`.execute(db);
      await sql`create constraint trigger explode after insert on ${table('history')}
        deferrable initially deferred for each row execute function explode()`.execute(db);
    } else {
      await sql`create trigger explode before insert on ${table('history')}
        when new.action = 'explode' begin select raise(abort, 'exploded'); end`.execute(db);
    }
    const before = await Promise.all(ids.map((id) => snapshot(store, id)));
    const outcomes = await Promise.allSettled(
      ids.map((id) =>
        transact(store, id, (tx) => {
          const seen = increment(`${id}-second`)(tx);
          if (id === 'w3') tx.appendHistory([note('explode')]);
          return seen;
        }),
      ),
    );
    for (const outcome of outcomes) {
      expect(outcome).toMatchObject({ status: 'rejected', reason: { code: 'store', message: expect.stringMatching(/exploded/) } });
    }
    expect(await Promise.all(ids.map((id) => snapshot(store, id)))).toEqual(before);
    // The store carries on with the next batch.
    expect(await Promise.all(ids.map((id) => transact(store, id, increment(`${id}-third`))))).toEqual([2, 2, 2, 2]);
  });
});

describe('group commit of creates on SQLite', () => {
  const opened: (() => Promise<void>)[] = [];
  afterEach(async () => {
    while (opened.length) await opened.pop()!();
  });

  /**
   * A logged group-commit store (`store`), and `other`: the first store on a
   * second connection to the same file (another process, as far as SQLite can tell).
   */
  async function fresh() {
    const made = await groupStore('sqlite', createManualClock(T0));
    opened.push(made.cleanup);
    const statements: string[] = [];
    const store = made.logged((event) => statements.push(event.query.sql.trim().split(/\s+/).slice(0, 2).join(' ').toLowerCase()));
    await store.check();
    return { ...made, store, other: made.store, statements };
  }

  it('creates concurrent workflows and writes concurrent results in one transaction, with one commit', async () => {
    const { store, statements } = await fresh();
    await store.createWorkflow(workflow('w0'));
    statements.length = 0;
    const [results] = await Promise.all([
      Promise.all(['c1', 'c2', 'c3'].map((id) => store.createWorkflow(workflow(id, ['a', 'b'])))),
      store.transact('w0', increment('with the creates')),
    ]);
    expect(statements.filter((text) => text === 'begin immediate' || text === 'commit')).toEqual(['begin immediate', 'commit']);
    expect(results.map((r) => [r.created, r.workflow.id])).toEqual([
      [true, 'c1'],
      [true, 'c2'],
      [true, 'c3'],
    ]);
    for (const id of ['c1', 'c2', 'c3']) {
      expect((await store.getSteps(id)).map((s) => [s.workflowId, s.name, s.status])).toEqual([
        [id, 'a', 'pending'],
        [id, 'b', 'pending'],
      ]);
      expect((await store.getHistory(id)).map((h) => [h.seq, h.action])).toEqual([[1, 'start']]);
    }
    expect((await store.getWorkflow('w0'))?.output).toEqual({ n: 1 });
  });

  it('writes a result alone in its batch as without group commit, from the state the create left', async () => {
    const { store, statements } = await fresh();
    await store.createWorkflow(workflow('w1', ['a', 'b']));
    statements.length = 0;
    await store.transact('w1', (tx) => tx.updateStep('a', { pollCount: 1 }), { optimistic: true });
    expect(statements).toEqual(['begin immediate', 'update "sagaline_workflows"', 'update "sagaline_steps"', 'commit']);
    // With company, the batch checks the versions of what it remembers, and reads nothing else.
    await store.createWorkflow(workflow('w2'));
    statements.length = 0;
    await Promise.all(['w1', 'w2'].map((id) => store.transact(id, (tx) => tx.updateStep('a', { pollCount: 2 }), { optimistic: true })));
    expect(statements).toEqual(['begin immediate', 'select id,', 'with v("k_id",', 'with v("k_wf",', 'commit']);
    for (const id of ['w1', 'w2']) expect((await store.getSteps(id))[0]?.pollCount).toBe(2);
  });

  /** Adds one to step `a`'s poll count, returning the count it saw. */
  const bump = (tx: WorkflowTransaction): number => {
    const seen = tx.steps[0]!.pollCount;
    tx.updateStep('a', { pollCount: seen + 1 });
    return seen;
  };

  it('starts a batch from the states it remembers once their versions check out, and reads only what another process changed', async () => {
    const { store: mine, other: theirs, statements } = await fresh();
    for (const id of ['w1', 'w2', 'w3']) await mine.createWorkflow(workflow(id, ['a', 'b']));
    await theirs.transact('w2', (tx) => tx.updateStep('a', { pollCount: 5 }), { optimistic: true });
    statements.length = 0;
    expect(await Promise.all(['w1', 'w2', 'w3'].map((id) => mine.transact(id, bump, { optimistic: true })))).toEqual([0, 5, 0]);
    // One version check for all three; the workflow and steps of w2 alone are read.
    expect(statements.slice(0, 4)).toEqual(['begin immediate', 'select id,', 'select *', 'select *']);
    expect(statements.filter((text) => text.startsWith('select'))).toHaveLength(3);
    expect(await Promise.all(['w1', 'w2', 'w3'].map(async (id) => (await theirs.getSteps(id))[0]?.pollCount))).toEqual([1, 6, 1]);
    // What the batch wrote is remembered, the fresh read of w2 included: the next batch reads versions only.
    statements.length = 0;
    expect(await Promise.all(['w1', 'w2', 'w3'].map((id) => mine.transact(id, bump, { optimistic: true })))).toEqual([1, 6, 1]);
    expect(statements.filter((text) => text.startsWith('select'))).toEqual(['select id,']);
    // A write by the other process after that is seen again.
    await theirs.transact('w3', (tx) => tx.updateStep('a', { pollCount: 40 }));
    expect(await Promise.all(['w1', 'w3'].map((id) => mine.transact(id, bump, { optimistic: true })))).toEqual([2, 40]);
  });

  it('remembers nothing of a batch that fails to commit', async () => {
    const { store: mine, other: theirs, db, table } = await fresh();
    for (const id of ['w1', 'w2']) await mine.createWorkflow(workflow(id, ['a']));
    await sql`create trigger explode before insert on ${table('history')}
      when new.action = 'explode' begin select raise(abort, 'exploded'); end`.execute(db);
    const outcomes = await Promise.allSettled([
      mine.transact('w1', bump, { optimistic: true }),
      mine.transact('w2', (tx) => {
        bump(tx);
        tx.appendHistory([note('explode')]);
      }, { optimistic: true }),
    ]);
    expect(outcomes.map((o) => o.status)).toEqual(['rejected', 'rejected']);
    expect(await Promise.all(['w1', 'w2'].map(async (id) => (await theirs.getSteps(id))[0]?.pollCount))).toEqual([0, 0]);
    // Had the rolled-back writes been remembered, these would start from 1.
    expect(await Promise.all(['w1', 'w2'].map((id) => mine.transact(id, bump, { optimistic: true })))).toEqual([0, 0]);
  });

  it('writes no create of a batch that fails to commit, and fails each of them', async () => {
    const { store, db, table } = await fresh();
    await store.createWorkflow(workflow('w0'));
    await sql`create trigger explode before insert on ${table('history')}
      when new.action = 'explode' begin select raise(abort, 'exploded'); end`.execute(db);
    // A transaction of the batch fails at its history insert: SQLite's abort rolls back the whole batch.
    const outcomes = await Promise.allSettled([
      store.createWorkflow(workflow('c1')),
      store.createWorkflow(workflow('c2')),
      store.transact('w0', (tx) => tx.appendHistory([note('explode')])),
    ]);
    expect(outcomes.map((o) => o.status)).toEqual(['rejected', 'rejected', 'rejected']);
    for (const id of ['c1', 'c2']) expect(await store.getWorkflow(id)).toBeNull();
    expect((await store.createWorkflow(workflow('c1'))).created).toBe(true);
  });
});

describe.each(['sqlite', 'postgres'] as const)('group commit of creates on %s', (dialect) => {
  const opened: (() => Promise<void>)[] = [];
  afterEach(async () => {
    while (opened.length) await opened.pop()!();
  });

  async function fresh() {
    const made = await groupStore(dialect, createManualClock(T0));
    opened.push(made.cleanup);
    return made;
  }

  /** Makes every insert into `table` of a row whose workflow id is 'bad' fail. */
  async function explodeOn(db: Kysely<any>, table: RawBuilder<unknown>): Promise<void> {
    if (dialect === 'sqlite') {
      await sql`create trigger explode before insert on ${table} when new.workflow_id = 'bad' begin select raise(abort, 'exploded'); end`.execute(db);
      return;
    }
    await sql`create or replace function explode_bad_workflow() returns trigger language plpgsql as $$
      begin if new.workflow_id = 'bad' then raise exception 'exploded'; end if; return new; end $$`.execute(db);
    await sql`create trigger explode before insert on ${table} for each row execute function explode_bad_workflow()`.execute(db);
  }

  it('settles idempotency keys taken earlier or earlier in the same batch, and fails only a duplicate id', async () => {
    const { store } = await fresh();
    await store.createWorkflow(keyed('old', 'k-old'));
    const outcomes = await Promise.allSettled([
      store.createWorkflow(keyed('n1', 'k-new')),
      store.createWorkflow(keyed('n2', 'k-new')),
      store.createWorkflow(keyed('n3', 'k-old')),
      store.createWorkflow(keyed('old', 'k-dup')),
      store.createWorkflow(keyed('n4', 'k-other')),
    ]);
    expect(outcomes.map((o) => (o.status === 'fulfilled' ? [o.value.created, o.value.workflow.id] : (o.reason as { code?: string }).code))).toEqual([
      [true, 'n1'],
      [false, 'n1'],
      [false, 'old'],
      'conflict',
      [true, 'n4'],
    ]);
    for (const id of ['n2', 'n3']) {
      expect(await store.getWorkflow(id)).toBeNull();
      expect(await store.getSteps(id)).toEqual([]);
      expect(await store.getHistory(id)).toEqual([]);
    }
    // The duplicate left the first 'old' as it was.
    expect(await store.getWorkflow('old')).toMatchObject({ idempotencyKey: 'k-old' });
    expect(await store.getHistory('old')).toHaveLength(1);
    for (const id of ['n1', 'n4']) expect((await store.getSteps(id)).map((s) => s.name)).toEqual(['a', 'b']);
  });

  it('undoes all of a create whose step insert fails in a batch, and only it', async () => {
    const { store, db, table } = await fresh();
    await explodeOn(db, table('steps'));
    const outcomes = await Promise.allSettled(['ok1', 'bad', 'ok2'].map((id) => store.createWorkflow(workflow(id))));
    expect(outcomes.map((o) => o.status)).toEqual(['fulfilled', 'rejected', 'fulfilled']);
    expect(await store.getWorkflow('bad')).toBeNull();
    expect(await store.getHistory('bad')).toEqual([]);
    for (const id of ['ok1', 'ok2']) expect(await store.getSteps(id)).toHaveLength(1);
  });

  it('takes at most 16 calls in a batch by default on Postgres, 64 on SQLite', async () => {
    const made = await fresh();
    const batches: number[] = [];
    const store = made.logged((event) => {
      const text = event.query.sql.replace(STATEMENT_MARKER, '').trim();
      // Postgres: a batch's creates are one statement whose first parameter is the array literal of their ids
      // (`{"d00","d01",…}`; these ids hold no comma). SQLite: one transaction per batch.
      if (dialect === 'postgres' && text.startsWith('with w as')) batches.push((event.query.parameters[0] as string).slice(1, -1).split(',').length);
      if (dialect === 'sqlite' && text === 'commit') batches.push(-1);
    });
    await store.check();
    batches.length = 0;
    const ids = Array.from({ length: 40 }, (_, i) => `d${String(i).padStart(2, '0')}`);
    const results = await Promise.all(ids.map((id) => store.createWorkflow(workflow(id))));
    expect(results.map((r) => r.created)).toEqual(ids.map(() => true));
    // Postgres: a batch of 16 starts at once, a second beside it (more than half a batch waits), then the last 8
    // (the log reports each statement when it ends, in any order).
    expect(batches.sort((a, b) => a - b)).toEqual(dialect === 'postgres' ? [8, 16, 16] : [-1]);
    for (const id of ids) expect(await made.store.getSteps(id)).toHaveLength(1);
  });
});

describe('group commit of creates on Postgres', () => {
  const opened: (() => Promise<void>)[] = [];
  afterEach(async () => {
    while (opened.length) await opened.pop()!();
  });

  /** Creates of every shape a create statement has: steps (none, one, several, one claimed) and history (own time, store time, none). */
  function shapes(prefix: string): CreateWorkflowInput[] {
    const plain = workflow(`${prefix}-plain`, ['a', 'b', 'c']);
    const claimed = workflow(`${prefix}-claimed`, ['first', 'second']);
    claimed.steps[1] = { ...claimed.steps[1]!, dependsOn: ['first'], dueAt: null };
    claimed.steps[0] = {
      ...claimed.steps[0]!,
      claim: { workerId: 'worker-1', leaseToken: `${prefix}-lease`, leaseExpiresAt: new Date(T0 + 30_000), callbackTokenHash: `${prefix}-hash` },
    };
    claimed.history = [
      { ...note('start', { own: true }), at: new Date(T0 - 5_000) },
      { kind: 'step', stepName: 'first', from: 'pending', to: 'running', actor: 'worker-1', reason: null, action: null, detail: null },
    ];
    const bare = { ...workflow(`${prefix}-bare`, []), history: [] };
    const keyedOne = keyed(`${prefix}-keyed`, `${prefix}-key`);
    return [plain, claimed, bare, keyedOne];
  }

  /** What a workflow holds, with its id taken out (to compare workflows created under different ids). */
  async function contents(store: WorkflowStore, id: string): Promise<unknown> {
    const all = JSON.stringify(await snapshot(store, id));
    return JSON.parse(all.split(id).join('<id>').replace(/"(a|b)-(key|lease|hash)"/g, '"<$2>"'));
  }

  it('writes the creates of a batch in one statement, each as a create alone writes it', async () => {
    const clock = createManualClock(T0);
    const made = await groupStore('postgres', clock);
    opened.push(made.cleanup);
    const statements: string[] = [];
    const batched = made.logged((event) => statements.push(event.query.sql.replace(STATEMENT_MARKER, '').trim().split(/\s+/).slice(0, 3).join(' ')));
    const alone = new KyselyWorkflowStore({ db: made.db, schema: (made.store as unknown as { tables: { schema: string } }).tables.schema, clock });
    await batched.check();
    statements.length = 0;
    const inputs = shapes('a');
    const results = await Promise.all(inputs.map((input) => batched.createWorkflow(input)));
    expect(statements).toEqual(['with w as']);
    expect(results.map((r) => [r.created, r.workflow.id])).toEqual(inputs.map((i) => [true, i.workflow.id]));
    for (const input of shapes('b')) expect((await alone.createWorkflow(input)).created).toBe(true);
    for (const [i, input] of inputs.entries()) {
      const twin = shapes('b')[i]!.workflow.id;
      expect(await contents(made.store, input.workflow.id)).toEqual(await contents(made.store, twin));
    }
    // What the create returned is what a read returns.
    for (const result of results) expect(result.workflow).toEqual(await made.store.getWorkflow(result.workflow.id));
    // The claimed step is leased as created, and the next write starts from the state the create left.
    expect((await made.store.getSteps('a-claimed')).map((s) => [s.name, s.status, s.leaseToken])).toEqual([
      ['first', 'running', 'a-lease'],
      ['second', 'pending', null],
    ]);
    statements.length = 0;
    await batched.transact('a-claimed', (tx) => tx.updateStep('first', { status: 'completed', leaseToken: null }, { expectLeaseToken: 'a-lease' }), {
      optimistic: true,
    });
    expect(statements).toEqual(['with wf as']);
  });

  it('writes nothing of a create in a batch whose idempotency key is taken, earlier or by an earlier create of the batch', async () => {
    const made = await groupStore('postgres', createManualClock(T0));
    opened.push(made.cleanup);
    const statements: string[] = [];
    const store = made.logged((event) => statements.push(event.query.sql.replace(STATEMENT_MARKER, '').trim().split(/\s+/).slice(0, 3).join(' ')));
    await store.createWorkflow(keyed('old', 'k-old'));
    statements.length = 0;
    const results = await Promise.all([keyed('n1', 'k-new'), keyed('n2', 'k-new'), keyed('n3', 'k-old'), keyed('n4', 'k-other')].map((i) => store.createWorkflow(i)));
    expect(results.map((r) => [r.created, r.workflow.id])).toEqual([
      [true, 'n1'],
      [false, 'n1'],
      [false, 'old'],
      [true, 'n4'],
    ]);
    // One statement for the batch; the two creates that found their key taken then read the workflow that has it.
    expect(statements).toEqual(['with w as', 'select * from', 'select * from']);
    for (const id of ['n2', 'n3']) {
      expect(await store.getWorkflow(id)).toBeNull();
      expect(await store.getSteps(id)).toEqual([]);
      expect(await store.getHistory(id)).toEqual([]);
    }
    for (const id of ['n1', 'n4']) expect((await store.getSteps(id)).map((s) => s.name)).toEqual(['a', 'b']);
  });

  it('writes no create of a batch whose statement fails, then each alone: only the one at fault fails', async () => {
    const made = await groupStore('postgres', createManualClock(T0));
    opened.push(made.cleanup);
    const statements: string[] = [];
    const store = made.logged((event) => statements.push(event.query.sql.replace(STATEMENT_MARKER, '').trim().split(/\s+/).slice(0, 3).join(' ')));
    await sql`create or replace function explode_bad_history() returns trigger language plpgsql as $$
      begin if new.workflow_id = 'bad' then raise exception 'exploded'; end if; return new; end $$`.execute(made.db);
    await sql`create trigger explode before insert on ${made.table('history')} for each row execute function explode_bad_history()`.execute(made.db);
    await store.check();
    statements.length = 0;
    const outcomes = await Promise.allSettled(['ok1', 'bad', 'ok2'].map((id) => store.createWorkflow(workflow(id))));
    expect(outcomes.map((o) => o.status)).toEqual(['fulfilled', 'rejected', 'fulfilled']);
    expect((outcomes[1] as PromiseRejectedResult).reason).toMatchObject({ code: 'store', message: expect.stringMatching(/exploded/) });
    // The batch statement, then one statement per create (besides the duplicate-id check of the one that failed).
    expect(statements.filter((text) => text.startsWith('with'))).toEqual(['with w as', 'with ins as', 'with ins as', 'with ins as']);
    expect(await store.getWorkflow('bad')).toBeNull();
    expect(await store.getSteps('bad')).toEqual([]);
    for (const id of ['ok1', 'ok2']) {
      expect(await store.getSteps(id)).toHaveLength(1);
      expect(await store.getHistory(id)).toHaveLength(1);
    }
  });
});

describe('group commit on Postgres when the connection dies', () => {
  const opened: (() => Promise<void>)[] = [];
  afterEach(async () => {
    while (opened.length) await opened.pop()!();
  });

  /** A database and a pool whose checked-out clients survive their connection being killed. */
  async function fresh(poolSize = 4) {
    const database = await createPostgresDatabase();
    opened.push(() => database.cleanup());
    await migrateToLatest(database.db);
    const pool = new pg.Pool({ connectionString: database.url, max: poolSize, application_name: 'group_commit_test' });
    pool.on('error', () => undefined);
    // pg-pool listens for errors only on idle clients: one killed in a transaction would crash the run.
    pool.on('connect', (client) => client.on('error', () => undefined));
    const db = new Kysely<any>({ dialect: new PostgresDialect({ pool }) });
    opened.push(() => db.destroy());
    return { admin: database.db, db };
  }

  it('fails every caller of a batch whose connection is killed before its commit, and writes nothing', async () => {
    const { admin, db } = await fresh();
    const store = new KyselyWorkflowStore({ db, clock: createManualClock(T0), groupCommit: true });
    const ids = ['w1', 'w2', 'w3'];
    for (const id of ids) await store.createWorkflow(workflow(id));
    const before = await Promise.all(ids.map((id) => snapshot(store, id)));
    const inside = deferred();
    const gate = deferred();
    const calls = ids.map((id) =>
      store.transact(id, async (tx) => {
        const seen = increment(id)(tx);
        if (id === 'w2') {
          inside.resolve();
          await gate.promise;
        }
        return seen;
      }),
    );
    await inside.promise;
    // The batch holds its locks, idle in transaction: kill its connection.
    const { rows } = await sql<{ killed: boolean }>`
      select pg_terminate_backend(pid) as killed from pg_stat_activity
      where datname = current_database() and application_name = 'group_commit_test' and state like 'idle in transaction%'`.execute(admin);
    expect(rows).toEqual([{ killed: true }]);
    gate.resolve();
    const outcomes = await Promise.allSettled(calls);
    for (const outcome of outcomes) expect(outcome).toMatchObject({ status: 'rejected', reason: { code: 'store' } });
    expect(await Promise.all(ids.map((id) => snapshot(store, id)))).toEqual(before);
    expect(await Promise.all(ids.map((id) => store.transact(id, increment(id))))).toEqual([1, 1, 1]);
  });

  it.each([false, true])('loses nothing that was acknowledged when connections are killed between and during batches (optimistic: %s)', async (optimistic) => {
    const { admin, db } = await fresh(3);
    const store = new KyselyWorkflowStore({ db, clock: createManualClock(T0), groupCommit: { maxBatch: 8 } });
    const ids = Array.from({ length: 16 }, (_, i) => `w${String(i).padStart(2, '0')}`);
    for (const id of ids) await store.createWorkflow(workflow(id));
    const acknowledged = new Set<string>();
    const failed = new Set<string>();
    let running = true;
    const killer = (async () => {
      let kills = 0;
      let acknowledgedAtKill = -1;
      while (running) {
        await new Promise((r) => setTimeout(r, 7));
        // Kill again only once a call was acknowledged since the last kill: where a batch takes longer than
        // the interval (a slow machine), killing on every tick would fail every batch and test nothing.
        if (acknowledged.size === acknowledgedAtKill) continue;
        const { rows } = await sql<{ n: number }>`
          select count(pg_terminate_backend(pid))::int as n from pg_stat_activity
          where datname = current_database() and application_name = 'group_commit_test' and state <> 'idle'`.execute(admin);
        if (rows[0]!.n > 0) acknowledgedAtKill = acknowledged.size;
        kills += rows[0]!.n;
      }
      return kills;
    })();
    // 24 clients, each a loop of transactions on its workflow (two clients per workflow for 8 of them).
    await Promise.all(
      Array.from({ length: 24 }, async (_, client) => {
        const id = ids[client % ids.length]!;
        for (let k = 0; k < 25; k++) {
          const tag = `${client}.${k}`;
          try {
            await store.transact(id, increment(tag), { optimistic });
            acknowledged.add(tag);
          } catch (err) {
            expect(err).toMatchObject({ code: 'store' });
            failed.add(tag);
          }
        }
      }),
    );
    running = false;
    const kills = await killer;
    expect(kills).toBeGreaterThan(0);
    expect(failed.size).toBeGreaterThan(0);
    expect(acknowledged.size).toBeGreaterThan(0);
    // Read back through a pool the killer never touched: the store's own pool may still hand out a connection killed last.
    const reader = new KyselyWorkflowStore({ db: admin, clock: createManualClock(T0) });
    for (const id of ids) {
      const history = await reader.getHistory(id);
      const notes = history.filter((h) => h.action === 'inc').map((h) => h.detail as { tag: string; seen: number });
      // Each stored transaction is whole: the counter, the history numbering and the notes agree.
      expect(history.map((h) => h.seq)).toEqual(history.map((_, k) => k + 1));
      expect(notes.map((n) => n.seen)).toEqual(notes.map((_, k) => k + 1));
      const output: unknown = (await reader.getWorkflow(id))?.output;
      expect(output).toEqual(notes.length === 0 ? null : { n: notes.length });
      for (const n of notes) expect(failed.has(n.tag), `${n.tag} failed but was stored`).toBe(false);
      const stored = new Set(notes.map((n) => n.tag));
      for (const tag of acknowledged) {
        const client = Number(tag.split('.')[0]);
        if (ids[client % ids.length] === id) expect(stored.has(tag), `${tag} was acknowledged but is missing`).toBe(true);
      }
    }
  });
});

describe.each(['sqlite', 'postgres'] as const)('an engine on a group-commit %s store', (dialect) => {
  const opened: (() => Promise<void>)[] = [];
  afterEach(async () => {
    while (opened.length) await opened.pop()!();
  });

  it('runs many concurrent workflows to completion, each result durable before its event and its dependents', async () => {
    const { store, cleanup } = await groupStore(dialect, createManualClock(T0));
    opened.push(cleanup);
    const names = ['s1', 's2', 's3', 's4', 's5'];
    const runs: string[] = [];
    const problems: string[] = [];
    const wf = defineWorkflow({
      name: 'chain',
      input: z.object({ n: z.number() }),
      steps: Object.fromEntries(
        names.map((name, i) => [
          name,
          step({
            ...(i > 0 ? { dependsOn: [names[i - 1]!] } : {}),
            run: async (ctx) => {
              runs.push(`${ctx.workflowId}:${name}`);
              // The step it depends on is already stored as completed.
              if (i > 0 && ctx.deps[names[i - 1]!] !== i - 1) problems.push(`${ctx.workflowId}:${name} saw ${JSON.stringify(ctx.deps)}`);
              return i;
            },
          }),
        ]),
      ),
    });
    const engine = createEngine({ store, workflows: [wf], concurrency: 16, idlePollMs: 5, clock: createManualClock(T0) });
    const checks: Promise<void>[] = [];
    engine.events.on('step:completed', (e) => {
      // Read through the store as the event fires: the completion must already be committed.
      checks.push(
        store.getSteps(e.workflowId).then((steps) => {
          if (steps.find((x) => x.name === e.stepName)?.status !== 'completed') problems.push(`${e.workflowId}:${e.stepName} emitted before stored`);
        }),
      );
    });
    const completed = new Set<string>();
    engine.events.on('workflow:completed', (e) => completed.add(e.workflowId));
    engine.startWorker();
    opened.push(() => engine.stop());
    const ids = await Promise.all(Array.from({ length: 24 }, (_, n) => engine.start('chain', { tenantId: 't', input: { n } }).then((d) => d.id)));
    await expect.poll(() => completed.size, { timeout: 30_000, interval: 10 }).toBe(ids.length);
    await Promise.all(checks);
    expect(problems).toEqual([]);
    expect(runs).toHaveLength(ids.length * names.length);
    for (const id of ids) {
      const detail = await engine.get(id);
      expect(detail.status).toBe('completed');
      expect(detail.steps.map((x) => [x.status, x.attempts])).toEqual(names.map(() => ['completed', 1]));
      expect(runs.filter((r) => r.startsWith(`${id}:`))).toEqual(names.map((name) => `${id}:${name}`));
    }
  });
});

describe('group commit options', () => {
  it('rejects a host transaction and a bad maxBatch', async () => {
    const database = await createSqliteDatabase();
    try {
      await migrateToLatest(database.db);
      await database.db.transaction().execute(async (trx) => {
        expect(() => new KyselyWorkflowStore({ db: trx, groupCommit: true })).toThrow(/Kysely instance, not a Transaction/);
      });
      expect(() => new KyselyWorkflowStore({ db: database.db, groupCommit: { maxBatch: 0 } })).toThrow(/maxBatch/);
      expect(() => new KyselyWorkflowStore({ db: database.db, groupCommit: false })).not.toThrow();
    } finally {
      await database.cleanup();
    }
  });
});
