import { Kysely, PostgresDialect, sql } from 'kysely';
import pg from 'pg';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { createManualClock } from '../../src/core/clock.js';
import type { ClaimRequest, CreateWorkflowInput } from '../../src/storage/workflow-store.js';
import { migrateToLatest } from '../../src/stores/kysely/kysely-migrations.js';
import { KyselyWorkflowStore } from '../../src/stores/kysely/kysely-workflow-store.js';
import { runWorkflowStoreContract } from '../../src/testing/store-contract.js';
import { createPostgresDatabase, openPostgres, type PostgresTestDatabase } from '../support/databases.js';
import { contractFactory, storeFactory } from '../support/store-factories.js';

runWorkflowStoreContract('postgres', contractFactory(storeFactory('postgres').create));

function workflow(id: string, dueAt: Date | null, steps = ['a']): CreateWorkflowInput {
  return {
    workflow: {
      id,
      tenantId: 'tenant-a',
      type: 'provision',
      serviceSlug: null,
      status: 'pending',
      definitionVersion: 'v1',
      input: { plan: 'basic' },
      idempotencyKey: null,
      createdAt: dueAt ?? new Date(),
    },
    steps: steps.map((name, position) => ({ name, position, dependsOn: [], maxAttempts: 3, dueAt })),
    history: [],
  };
}

let serial = 0;
function claim(workerId: string, limit: number, leaseMs = 60_000): ClaimRequest {
  return {
    workerId,
    leaseMs,
    limit,
    tokens: Array.from({ length: limit }, () => {
      const n = ++serial;
      return { leaseToken: `lease-${n}`, callbackTokenHash: `hash-${n}` };
    }),
  };
}

function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

/** Polls the database until `check` holds, for at most ten seconds. */
async function until(check: () => Promise<boolean>, what: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    if (await check()) return;
    await new Promise<void>((r) => setImmediate(r));
  }
  throw new Error(`timed out waiting for ${what}`);
}

describe('KyselyWorkflowStore on Postgres', () => {
  const opened: (() => Promise<void>)[] = [];
  afterEach(async () => {
    while (opened.length) await opened.pop()!();
  });

  async function fresh(): Promise<PostgresTestDatabase> {
    const database = await createPostgresDatabase();
    opened.push(() => database.cleanup());
    await migrateToLatest(database.db);
    return database;
  }

  /** A second, independent pool on the same database: another process, as far as locks go. */
  function otherProcess(url: string) {
    const db = openPostgres(url, 4);
    // Closed before the database is dropped (cleanups run last-in, first-out).
    opened.push(() => db.destroy());
    return db;
  }

  it('tells the time from its readings of the database clock never ahead of it, though a reading waited', async () => {
    const { db } = await fresh();
    // Only Date is faked: the local clock moves when the test says, the database's as it does.
    vi.useFakeTimers({ toFake: ['Date'] });
    try {
      // Each reply is taken a second after its statement was sent by the local clock, as when the
      // statement queued for a pooled connection and then read the database clock at once.
      const slow = db.withPlugin({
        transformQuery: (args) => args.node,
        transformResult: async (args) => {
          vi.setSystemTime(Date.now() + 1_000);
          return args.result;
        },
      });
      const store = new KyselyWorkflowStore({ db: slow });
      const read = (await store.now()).getTime();
      // Within the trusted period: from the local clock and the offset, without a round trip.
      const estimate = (await store.now()).getTime();
      const { rows } = await sql<{ now: Date }>`select clock_timestamp() as now`.execute(db);
      // Taking the middle of the round trip would put the estimate half a second ahead.
      expect(estimate).toBeLessThanOrEqual(rows[0]!.now.getTime());
      expect(estimate).toBeGreaterThanOrEqual(read);
    } finally {
      vi.useRealTimers();
    }
  });

  it('detects the dialect and compares times with the database clock when no clock is given', async () => {
    const { db } = await fresh();
    const store = new KyselyWorkflowStore({ db });
    expect(store.dialect).toBe('postgres');
    const { rows } = await sql<{ now: Date }>`select now() as now`.execute(db);
    const dbNow = rows[0]!.now.getTime();
    expect(Math.abs((await store.now()).getTime() - dbNow)).toBeLessThan(5_000);

    // Due times a minute either side of the database's time: only the past one is claimable,
    // whatever the application's clock says.
    await store.createWorkflow(workflow('past', new Date(dbNow - 60_000)));
    await store.createWorkflow(workflow('future', new Date(dbNow + 60_000)));
    const claimed = await store.claimSteps(claim('w1', 10, 30_000));
    expect(claimed.map((c) => c.workflow.id)).toEqual(['past']);
    const step = claimed[0]!.steps[0]!;
    expect(step.leaseExpiresAt!.getTime() - claimed[0]!.now.getTime()).toBe(30_000);
    expect(Math.abs(claimed[0]!.now.getTime() - dbNow)).toBeLessThan(5_000);
  });

  it('skips a workflow locked by a transaction in another process without waiting', async () => {
    const { db, url } = await fresh();
    const clock = createManualClock(Date.UTC(2026, 0, 1));
    const mine = new KyselyWorkflowStore({ db, clock });
    const theirs = new KyselyWorkflowStore({ db: otherProcess(url), clock });
    await mine.createWorkflow(workflow('locked', new Date(clock.now())));
    await mine.createWorkflow(workflow('free', new Date(clock.now())));

    const entered = deferred();
    const gate = deferred();
    const held = mine.transact('locked', async (tx) => {
      entered.resolve();
      await gate.promise;
      tx.updateWorkflow({ currentStep: 'a' });
    });
    await entered.promise;
    // The other process's claim returns at once with only the free workflow's step.
    const claimed = await theirs.claimSteps(claim('w2', 10));
    expect(claimed.map((c) => c.workflow.id)).toEqual(['free']);
    gate.resolve();
    await held;
    expect((await theirs.claimSteps(claim('w2', 10))).map((c) => c.workflow.id)).toEqual(['locked']);
  });

  it('serializes transactions on one workflow across processes', async () => {
    const { db, url } = await fresh();
    const clock = createManualClock(Date.UTC(2026, 0, 1));
    const mine = new KyselyWorkflowStore({ db, clock });
    const theirs = new KyselyWorkflowStore({ db: otherProcess(url), clock });
    await mine.createWorkflow(workflow('w1', null));

    const entered = deferred();
    const gate = deferred();
    const events: string[] = [];
    const first = mine.transact('w1', async (tx) => {
      entered.resolve();
      await gate.promise;
      tx.updateWorkflow({ currentStep: 'first' });
      events.push('first');
    });
    await entered.promise;
    const second = theirs.transact('w1', (tx) => {
      events.push(`second saw ${String(tx.workflow.currentStep)}`);
      tx.updateWorkflow({ currentStep: 'second' });
    });
    // The second transaction is blocked on the row lock: wait until Postgres reports it waiting.
    await until(async () => {
      const { rows } = await sql<{ n: number }>`
        select count(*)::int as n from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'`.execute(db);
      return rows[0]!.n > 0;
    }, 'the second transaction to wait for the lock');
    expect(events).toEqual([]);
    gate.resolve();
    await Promise.all([first, second]);
    expect(events).toEqual(['first', 'second saw first']);
    expect((await mine.getWorkflow('w1'))?.currentStep).toBe('second');
  });

  it('hands every step to exactly one of many concurrent claimers in different processes', async () => {
    const { db, url } = await fresh();
    const clock = createManualClock(Date.UTC(2026, 0, 1));
    const seedStore = new KyselyWorkflowStore({ db, clock });
    const expected = new Set<string>();
    for (let i = 0; i < 60; i++) {
      const id = `w${String(i).padStart(3, '0')}`;
      await seedStore.createWorkflow(workflow(id, new Date(clock.now() - i), ['a', 'b', 'c']));
      for (const name of ['a', 'b', 'c']) expected.add(`${id}/${name}`);
    }
    const stores = [0, 1, 2, 3].map(() => new KyselyWorkflowStore({ db: otherProcess(url), clock }));
    const seen = new Map<string, string>();
    const claimUntilEmpty = async (store: KyselyWorkflowStore, worker: string) => {
      for (;;) {
        const batch = await store.claimSteps(claim(worker, 7));
        if (batch.length === 0) return;
        for (const c of batch) {
          const key = `${c.workflow.id}/${c.stepName}`;
          expect(seen.get(key), key).toBeUndefined();
          seen.set(key, worker);
        }
      }
    };
    await Promise.all(stores.map((store, i) => claimUntilEmpty(store, `worker-${i}`)));
    // Under contention an empty claim does not mean nothing is left: a claimer skips rows another one
    // holds, and one whose candidates' workflows keep changing under it gives up after a few rounds,
    // leaving those steps pending for a later claim. One claimer alone then takes what is left.
    const left = await sql<{ n: number }>`select count(*)::int as n from sagaline_steps where status = 'pending' and lease_token is null`.execute(db);
    expect(left.rows[0]!.n).toBe(expected.size - seen.size);
    await claimUntilEmpty(stores[0]!, 'worker-0');
    expect(new Set(seen.keys())).toEqual(expected);
    const { rows } = await sql<{ status: string; n: number }>`
      select status, count(*)::int as n from sagaline_steps group by status`.execute(db);
    expect(rows).toEqual([{ status: 'running', n: 180 }]);
    const history = await sql<{ n: number }>`select count(*)::int as n from sagaline_history where kind = 'step'`.execute(db);
    expect(history.rows[0]!.n).toBe(180);
  });

  it('returns with each claim the workflow as it stood when the claim took it, while other processes write to it', async () => {
    const { db, url } = await fresh();
    const clock = createManualClock(Date.UTC(2026, 0, 1));
    const seed = new KyselyWorkflowStore({ db, clock });
    const ids = Array.from({ length: 6 }, (_, i) => `w${i}`);
    for (const id of ids) {
      const input = workflow(id, new Date(clock.now()), ['a', 'b']);
      // Only a is ever due; b is what the writers change.
      input.steps[1]!.dueAt = null;
      await seed.createWorkflow(input);
    }
    const writers = [0, 1, 2].map(() => new KyselyWorkflowStore({ db: otherProcess(url), clock }));
    const claimers = [0, 1].map(() => new KyselyWorkflowStore({ db: otherProcess(url), clock }));
    const outputOf = (step: { output: unknown } | undefined) => (step?.output as { n?: number } | null)?.n ?? 0;
    const seen: { id: string; attempt: number; n: number }[] = [];
    let stop = false;
    const writing = writers.map(async (store, i) => {
      for (let k = i; !stop; k++) {
        await store.transact(ids[k % ids.length]!, (tx) => {
          const n = outputOf(tx.steps.find((s) => s.name === 'b')) + 1;
          tx.updateStep('b', { output: { n } });
          tx.appendHistory([{ kind: 'note', stepName: 'b', from: null, to: null, actor: null, reason: null, action: 'bump', detail: { n } }]);
        });
      }
    });
    // A lease of 0 ms: every claim finds a's lease expired and takes it again.
    const claiming = claimers.map(async (store, i) => {
      for (let round = 0; round < 150; round++) {
        for (const c of await store.claimSteps(claim(`claimer-${i}`, 3, 0))) {
          const a = c.steps.find((s) => s.name === 'a')!;
          seen.push({ id: c.workflow.id, attempt: a.attempts, n: outputOf(c.steps.find((s) => s.name === 'b')) });
        }
      }
    });
    await Promise.all(claiming);
    stop = true;
    await Promise.all(writing);

    // History entries are numbered under the workflow's row lock, so in the order their writes committed:
    // the bumps before a claim's entry are those the claim must have seen.
    const { rows } = await sql<{ workflow_id: string; kind: string; action: string | null; detail: { attempt?: number } | null }>`
      select workflow_id, kind, action, detail from sagaline_history order by workflow_id, seq`.execute(db);
    const expected = new Map<string, number>();
    const bumps = new Map<string, number>();
    for (const r of rows) {
      if (r.action === 'bump') bumps.set(r.workflow_id, (bumps.get(r.workflow_id) ?? 0) + 1);
      const attempt = r.kind === 'step' ? 1 : r.action === 'lease_reclaimed' ? r.detail?.attempt : undefined;
      if (attempt !== undefined) expected.set(`${r.workflow_id}/${attempt}`, bumps.get(r.workflow_id) ?? 0);
    }
    expect(seen.length).toBeGreaterThan(50);
    expect(Math.min(...[...bumps.values()])).toBeGreaterThan(0);
    for (const s of seen) expect(s.n, `${s.id}, claim of attempt ${s.attempt}`).toBe(expected.get(`${s.id}/${s.attempt}`));
  });

  /** A pool on the database whose statements are collected in `statements`. */
  function logged(url: string): { db: Kysely<any>; statements: string[] } {
    const statements: string[] = [];
    const db = new Kysely<any>({
      dialect: new PostgresDialect({ pool: new pg.Pool({ connectionString: url, max: 2 }) }),
      log: (event) => {
        if (event.level === 'query') statements.push(event.query.sql.replace(/\s+/g, ' ').trim());
      },
    });
    opened.push(() => db.destroy());
    return { db, statements };
  }

  it('claims in a read-committed transaction when the server default is a stricter isolation', async () => {
    const { db, url } = await fresh();
    const clock = createManualClock(Date.UTC(2026, 0, 1));
    await new KyselyWorkflowStore({ db, clock }).createWorkflow(workflow('w1', new Date(clock.now()), ['a', 'b']));
    const { rows } = await sql<{ name: string }>`select current_database() as name`.execute(db);
    await sql.raw(`alter database ${rows[0]!.name} set default_transaction_isolation = 'serializable'`).execute(db);
    const { db: mine, statements } = logged(url);
    const store = new KyselyWorkflowStore({ db: mine, clock });
    await store.check();
    expect((await sql<{ level: string }>`select current_setting('transaction_isolation') as level`.execute(mine)).rows[0]!.level).toBe('serializable');
    statements.length = 0;
    // The first claim finds out: its statement alone claims nothing, and the claim runs again in a transaction.
    expect((await store.claimSteps(claim('w', 1))).map((c) => c.stepName)).toEqual(['a']);
    expect(statements.map((s) => s.slice(0, 40))).toEqual([
      expect.stringContaining('with due as'),
      'start transaction isolation level read c',
      expect.stringContaining('with due as'),
      'commit',
    ]);
    statements.length = 0;
    expect((await store.claimSteps(claim('w', 1))).map((c) => c.stepName)).toEqual(['b']);
    expect(statements.map((s) => s.slice(0, 40))).toEqual([
      'start transaction isolation level read c',
      expect.stringContaining('with due as'),
      'commit',
    ]);
  });

  it('runs inside a host transaction and rolls back with it', async () => {
    const { db } = await fresh();
    const clock = createManualClock(Date.UTC(2026, 0, 1));
    await expect(
      db.transaction().execute(async (trx) => {
        const store = new KyselyWorkflowStore({ db: trx, clock });
        await store.createWorkflow(workflow('w1', new Date(clock.now())));
        expect((await store.claimSteps(claim('w', 1))).map((c) => c.stepName)).toEqual(['a']);
        await store.transact('w1', (tx) => tx.updateWorkflow({ currentStep: 'a' }));
        expect((await store.getWorkflow('w1'))?.currentStep).toBe('a');
        throw new Error('host rolls back');
      }),
    ).rejects.toThrow('host rolls back');
    expect(await new KyselyWorkflowStore({ db, clock }).getWorkflow('w1')).toBeNull();
  });

  it('wraps a database failure in a store error that keeps the cause', async () => {
    const { db } = await fresh();
    const store = new KyselyWorkflowStore({ db });
    await store.check();
    await sql`drop table sagaline_history`.execute(db);
    const err: unknown = await store.getHistory('w1').catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'store', name: 'StoreError', message: expect.stringMatching(/^getHistory failed: /) });
    expect((err as Error).cause).toMatchObject({ code: '42P01' });
  });

  it('reports as its clock slack how far the database clock may be ahead of its estimate, at most a round trip', async () => {
    const { db } = await fresh();
    expect(new KyselyWorkflowStore({ db, clock: createManualClock(0) }).clockSlackMs()).toBe(0);
    const store = new KyselyWorkflowStore({ db });
    expect(store.clockSlackMs()).toBe(0);
    const sent = Date.now();
    const read = await store.now();
    const roundTrip = Date.now() - sent;
    const slack = store.clockSlackMs();
    expect(slack).toBeGreaterThanOrEqual(0);
    expect(slack).toBeLessThanOrEqual(roundTrip);
    // The estimate that follows is the reading carried forward; the database clock is within the slack above it.
    const estimate = (await store.now()).getTime();
    const database = (await sql<{ now: Date }>`select clock_timestamp() as now`.execute(db)).rows[0]!.now.getTime();
    expect(estimate).toBeGreaterThanOrEqual(read.getTime());
    expect(estimate).toBeLessThanOrEqual(database);
  });

  it('stores JSON columns as jsonb and times as timestamptz', async () => {
    const { db } = await fresh();
    const { rows } = await sql<{ column_name: string; data_type: string }>`
      select column_name, data_type from information_schema.columns
      where table_name = 'sagaline_steps' and column_name in ('output', 'due_at', 'depends_on')
      order by column_name`.execute(db);
    expect(rows).toEqual([
      { column_name: 'depends_on', data_type: 'jsonb' },
      { column_name: 'due_at', data_type: 'timestamp with time zone' },
      { column_name: 'output', data_type: 'jsonb' },
    ]);
  });
});
