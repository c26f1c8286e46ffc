/**
 * Wake-ups across processes on Postgres: writes that create a workflow or
 * leave a step claimable are followed by a `NOTIFY` once they have committed
 * (in the host's transaction, for a store over one); `subscribe` listens on a
 * client the host owns, or on connections the store opens through the
 * host's `connect` (and opens again when one is lost); an engine whose worker
 * sleeps a long poll interval picks up work started elsewhere because of it.
 */
import { randomBytes } from 'node:crypto';
import { Kysely, PostgresDialect, sql } from 'kysely';
import pg from 'pg';
import { afterEach, describe, expect, expectTypeOf, it, vi } from 'vitest';
import { z } from 'zod';
import { createManualClock } from '../../src/core/clock.js';
import type { Logger } from '../../src/core/logger.js';
import { defineWorkflow, step, type WorkflowDefinition } from '../../src/core/define-workflow.js';
import { createEngine } from '../../src/engine/workflow-engine.js';
import type { ClaimRequest, CreateWorkflowInput, NewHistoryEntry } from '../../src/storage/workflow-store.js';
import { migrateToLatest } from '../../src/stores/kysely/kysely-migrations.js';
import { notificationChannel, type PgListenClient, type PgListenConnection } from '../../src/stores/kysely/kysely-notifications.js';
import { KyselyWorkflowStore } from '../../src/stores/kysely/kysely-workflow-store.js';
import type { KyselyNotificationOptions } from '../../src/stores/kysely/kysely-workflow-store-config.js';
import { createPostgresDatabase, createPostgresSchema, createSqliteDatabase, openPostgres } from '../support/databases.js';

const T0 = Date.UTC(2026, 0, 1, 0, 0, 0, 125);

function workflow(id: string, steps = ['a'], dueAt: Date | null = new Date(T0)): CreateWorkflowInput {
  return {
    workflow: {
      id,
      tenantId: 'tenant-a',
      type: 'provision',
      serviceSlug: null,
      status: 'pending',
      definitionVersion: 'v1',
      input: {},
      idempotencyKey: null,
      createdAt: new Date(T0),
    },
    steps: steps.map((name, position) => ({ name, position, dependsOn: [], maxAttempts: 3, dueAt: position === 0 ? dueAt : null })),
    history: [],
  };
}

function note(action: string): NewHistoryEntry {
  return { kind: 'note', stepName: null, from: null, to: null, actor: null, reason: null, action, detail: null };
}

function claim(leaseToken: string): ClaimRequest {
  return { workerId: 'w', leaseMs: 60_000, limit: 1, tokens: [{ leaseToken, callbackTokenHash: `${leaseToken}-hash` }] };
}

describe('PgListenClient', () => {
  it('is what a pg.Client offers', () => {
    expectTypeOf<pg.Client>().toExtend<PgListenClient>();
    expectTypeOf<pg.Client>().toExtend<PgListenConnection>();
  });

  it('names the channel after the prefix and schema, within the identifier limit', () => {
    expect(notificationChannel('sagaline_', undefined)).toBe('sagaline_wake');
    expect(notificationChannel('app_', 'tenant_7')).toBe('app_wake_tenant_7');
    const odd = notificationChannel('app_', 'Some "schema"');
    expect(odd).toMatch(/^app_wake_[0-9a-f]{16}$/);
    expect(notificationChannel('app_', 'x'.repeat(63))).toHaveLength('app_wake_'.length + 16);
    expect(notificationChannel('app_', 'Some "schema"')).toBe(odd);
    expect(notificationChannel('app_', 'Some "schemb"')).not.toBe(odd);
  });
});

describe('KyselyWorkflowStore without notifications', () => {
  it('has no subscribe on SQLite or without the option, and refuses notifications on SQLite', async () => {
    const database = await createSqliteDatabase();
    try {
      const store = new KyselyWorkflowStore({ db: database.db });
      expect(store.subscribe).toBeUndefined();
      expect('subscribe' in store).toBe(false);
      const listen = { query: async () => undefined, on: () => undefined, removeListener: () => undefined };
      expect(() => new KyselyWorkflowStore({ db: database.db, notifications: { listen } })).toThrow(/needs Postgres/);
      expect(new KyselyWorkflowStore({ db: database.db, notifications: false }).subscribe).toBeUndefined();
    } finally {
      await database.cleanup();
    }
  });

  it('refuses both listen and connect, and a connect that is not a function', async () => {
    const database = await createPostgresSchema();
    try {
      const listen = { query: async () => undefined, on: () => undefined, removeListener: () => undefined };
      const connect = async () => new pg.Client();
      expect(() => new KyselyWorkflowStore({ db: database.db, schema: database.schema, notifications: { listen, connect } })).toThrow(
        /listen or notifications.connect, not both/,
      );
      const notConnect = { connect: 'postgres://' } as unknown as { connect: () => Promise<pg.Client> };
      expect(() => new KyselyWorkflowStore({ db: database.db, schema: database.schema, notifications: notConnect })).toThrow(
        /notifications.connect must be a function/,
      );
      expect(new KyselyWorkflowStore({ db: database.db, schema: database.schema, notifications: { connect } }).subscribe).toBeTypeOf('function');
    } finally {
      await database.cleanup();
    }
  });
});

describe('notifications on Postgres', () => {
  const opened: (() => Promise<void>)[] = [];
  afterEach(async () => {
    while (opened.length) await opened.pop()!();
  });

  /** A schema with its tables; `process()` opens another pool on it, as another process would. */
  async function fresh() {
    const database = await createPostgresSchema();
    opened.push(() => database.cleanup());
    await migrateToLatest(database.db, { schema: database.schema });
    return {
      ...database,
      process(): Kysely<any> {
        const db = openPostgres(database.url, 3);
        opened.push(() => db.destroy());
        return db;
      },
      async listener(): Promise<pg.Client> {
        const client = new pg.Client({ connectionString: database.url });
        await client.connect();
        opened.push(() => client.end());
        return client;
      },
    };
  }

  /** Counts wake-ups; `settled()` returns once every notification committed so far has been delivered. */
  async function counting(store: KyselyWorkflowStore, client: pg.Client) {
    let calls = 0;
    const unsubscribe = await store.subscribe!(() => calls++);
    return {
      unsubscribe,
      count: () => calls,
      // The server sends pending notifications before answering a query on the listening session.
      async settled(): Promise<number> {
        await client.query('select 1');
        return calls;
      },
    };
  }

  /** A fresh schema with a store listening on it, as another process would, and its wake-ups counted. */
  async function listened() {
    const env = await fresh();
    const clock = createManualClock(T0);
    const client = await env.listener();
    const listening = new KyselyWorkflowStore({ db: env.process(), schema: env.schema, clock, notifications: { listen: client } });
    return { env, clock, listening, wakes: await counting(listening, client) };
  }

  it('wakes a subscriber in another process when a workflow is created or a step is made claimable', async () => {
    const env = await fresh();
    const clock = createManualClock(T0);
    const client = await env.listener();
    const listening = new KyselyWorkflowStore({ db: env.process(), schema: env.schema, clock, notifications: { listen: client } });
    const writer = new KyselyWorkflowStore({ db: env.db, schema: env.schema, clock, notifications: {} });
    expect(writer.subscribe).toBeUndefined();
    const wakes = await counting(listening, client);
    expect((await client.query<{ c: string }>('select pg_listening_channels() as c')).rows).toEqual([
      { c: notificationChannel('sagaline_', env.schema) },
    ]);

    await writer.createWorkflow(workflow('w1', ['a', 'b']));
    await expect.poll(() => wakes.count()).toBe(1);
    // An idempotent repeat inserts nothing and says nothing.
    await writer.createWorkflow({ ...workflow('w2'), workflow: { ...workflow('w2').workflow, idempotencyKey: 'k' } });
    await expect.poll(() => wakes.count()).toBe(2);
    await writer.createWorkflow({ ...workflow('w3'), workflow: { ...workflow('w3').workflow, idempotencyKey: 'k' } });
    expect(await wakes.settled()).toBe(2);

    // Claims, a note, a throwing callback, a step due later: no new work for anyone.
    await writer.claimSteps(claim('lease-1'));
    await writer.transact('w1', (tx) => tx.appendHistory([note('nothing due')]));
    await writer
      .transact('w1', (tx) => {
        tx.updateStep('b', { dueAt: tx.now });
        throw new Error('rolled back');
      })
      .catch(() => undefined);
    await writer.transact('w1', (tx) => tx.updateStep('b', { dueAt: new Date(tx.now.getTime() + 60_000) }));
    // Made due and leased in the same transaction (a chained claim): nobody else's work.
    await writer.transact('w1', (tx) => tx.updateStep('b', { dueAt: tx.now, leaseToken: 'mine', leaseExpiresAt: new Date(tx.now.getTime() + 30_000) }));
    expect(await wakes.settled()).toBe(2);

    // A step made due with its lease free, and a lease given up on a due step.
    await writer.transact('w2', (tx) => tx.updateStep('a', { dueAt: tx.now }));
    await expect.poll(() => wakes.count()).toBe(3);
    await writer.transact('w1', (tx) => tx.updateStep('b', { leaseToken: null, leaseExpiresAt: null, leaseOwner: null }));
    await expect.poll(() => wakes.count()).toBe(4);

    // Unsubscribed: UNLISTEN, and no more calls.
    await wakes.unsubscribe();
    expect((await client.query('select pg_listening_channels() as c')).rows).toEqual([]);
    await writer.createWorkflow(workflow('w4'));
    expect(await wakes.settled()).toBe(4);
  });

  it('sends nothing for a create that leaves no work for others: its due steps claimed by its creator, or none due', async () => {
    const env = await fresh();
    const clock = createManualClock(T0);
    const client = await env.listener();
    const listening = new KyselyWorkflowStore({ db: env.process(), schema: env.schema, clock, notifications: { listen: client } });
    const writer = new KyselyWorkflowStore({ db: env.db, schema: env.schema, clock, notifications: {} });
    const grouped = new KyselyWorkflowStore({ db: env.process(), schema: env.schema, clock, notifications: {}, groupCommit: true });
    const wakes = await counting(listening, client);
    // As an engine whose worker runs a new workflow's first step itself creates it.
    const claimed = (id: string): CreateWorkflowInput => {
      const input = workflow(id, ['a', 'b']);
      const claim = { workerId: 'creator', leaseToken: `lease-${id}`, leaseExpiresAt: new Date(T0 + 30_000), callbackTokenHash: `hash-${id}` };
      return { ...input, steps: [{ ...input.steps[0]!, claim }, input.steps[1]!] };
    };

    await writer.createWorkflow(claimed('c1'));
    await writer.createWorkflow(workflow('n1', ['a'], null));
    await Promise.all(['c2', 'c3', 'c4'].map((id) => grouped.createWorkflow(claimed(id))));
    expect(await wakes.settled()).toBe(0);

    // Creates of which one leaves its first step unclaimed: one notification, alone or in a batch.
    await Promise.all([grouped.createWorkflow(claimed('c5')), grouped.createWorkflow(workflow('u1')), grouped.createWorkflow(claimed('c6'))]);
    await expect.poll(() => wakes.count()).toBe(1);
    await writer.createWorkflow(workflow('u2'));
    await expect.poll(() => wakes.count()).toBe(2);
    expect(await wakes.settled()).toBe(2);
    for (const id of ['c1', 'n1', 'c2', 'c3', 'c4', 'c5', 'c6', 'u1', 'u2']) expect((await writer.getWorkflow(id))?.id).toBe(id);
    expect((await writer.getSteps('c5')).map((s) => s.status)).toEqual(['running', 'pending']);
    await wakes.unsubscribe();
  });

  it('sends one notification per group-commit batch that makes work due', async () => {
    const env = await fresh();
    const clock = createManualClock(T0);
    const client = await env.listener();
    const listening = new KyselyWorkflowStore({ db: env.process(), schema: env.schema, clock, notifications: { listen: client } });
    const writer = new KyselyWorkflowStore({ db: env.db, schema: env.schema, clock, notifications: {}, groupCommit: true });
    for (const id of ['w1', 'w2', 'w3']) await writer.createWorkflow(workflow(id, ['a'], null));
    const wakes = await counting(listening, client);
    // A batch in which nothing is made due.
    await Promise.all(['w1', 'w2', 'w3'].map((id) => writer.transact(id, (tx) => tx.appendHistory([note('quiet')]))));
    expect(await wakes.settled()).toBe(0);
    // A batch in which two of three make a step due.
    await Promise.all(['w1', 'w2', 'w3'].map((id) => writer.transact(id, (tx) => (id === 'w3' ? undefined : tx.updateStep('a', { dueAt: tx.now })))));
    await expect.poll(() => wakes.count()).toBe(1);
    expect(await wakes.settled()).toBe(1);
    await wakes.unsubscribe();
  });

  it('does not wake stores of other tables, and survives a throwing listener', async () => {
    const env = await fresh();
    const other = await fresh();
    const clock = createManualClock(T0);
    const client = await env.listener();
    const listening = new KyselyWorkflowStore({ db: env.process(), schema: env.schema, clock, notifications: { listen: client } });
    const elsewhere = new KyselyWorkflowStore({ db: other.db, schema: other.schema, clock, notifications: {} });
    const here = new KyselyWorkflowStore({ db: env.db, schema: env.schema, clock, notifications: {} });
    const unsubscribeThrowing = await listening.subscribe!(() => {
      throw new Error('listener failed');
    });
    const wakes = await counting(listening, client);
    await elsewhere.createWorkflow(workflow('x1'));
    expect(await wakes.settled()).toBe(0);
    await here.createWorkflow(workflow('h1'));
    await expect.poll(() => wakes.count()).toBe(1);
    // Two subscriptions share one LISTEN, kept until the last one leaves.
    await unsubscribeThrowing();
    expect((await client.query('select pg_listening_channels() as c')).rows).toHaveLength(1);
    await wakes.unsubscribe();
    expect((await client.query('select pg_listening_channels() as c')).rows).toHaveLength(0);
  });

  /**
   * A `connect` for the store: each call opens a client on the schema's database, all of them kept for the
   * test to inspect. With `holdFirstListen`, the first client's `LISTEN` waits for that promise before it
   * goes to the server.
   */
  function connector(url: string, failFirst = 0, holdFirstListen?: Promise<void>) {
    const clients: pg.Client[] = [];
    const pids: number[] = [];
    let calls = 0;
    const connect = async (): Promise<pg.Client> => {
      calls++;
      if (calls <= failFirst) throw new Error(`connection refused (attempt ${calls})`);
      const client = new pg.Client({ connectionString: url });
      client.on('error', () => undefined);
      await client.connect();
      if (holdFirstListen && clients.length === 0) {
        const query = client.query.bind(client) as (...args: unknown[]) => Promise<unknown>;
        (client as unknown as { query: (...args: unknown[]) => unknown }).query = async (...args: unknown[]) => {
          if (typeof args[0] === 'string' && args[0].startsWith('LISTEN')) await holdFirstListen;
          return query(...args);
        };
      }
      pids.push((await client.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]!.pid);
      clients.push(client);
      opened.push(() => client.end().catch(() => undefined));
      return client;
    };
    return { connect, clients, pids, calls: () => calls };
  }

  async function backendAlive(db: Kysely<any>, pid: number): Promise<boolean> {
    const { rows } = await sql<{ n: number }>`select count(*)::int as n from pg_stat_activity where pid = ${pid}`.execute(db);
    return rows[0]!.n === 1;
  }

  it('with connect: listens on its own connection, opens another when it is lost, and ends it after the last subscriber', async () => {
    const env = await fresh();
    const clock = createManualClock(T0);
    const { connect, clients, pids, calls } = connector(env.url);
    const listening = new KyselyWorkflowStore({ db: env.process(), schema: env.schema, clock, notifications: { connect } });
    const writer = new KyselyWorkflowStore({ db: env.db, schema: env.schema, clock, notifications: {} });
    expect(calls()).toBe(0);
    let wakes = 0;
    const errors: Error[] = [];
    let resumes = 0;
    const unsubscribe = await listening.subscribe!(() => wakes++, { onError: (e) => errors.push(e), onResume: () => resumes++ });
    expect(calls()).toBe(1);
    expect(errors).toEqual([]);
    const first = clients[0]!;
    expect((await first.query<{ c: string }>('select pg_listening_channels() as c')).rows).toEqual([{ c: notificationChannel('sagaline_', env.schema) }]);
    await writer.createWorkflow(workflow('w1'));
    await expect.poll(() => wakes).toBe(1);

    // The server ends the listening session: the subscriber hears of it and is woken (work made due meanwhile
    // went unheard), and the store opens another connection, listens on it, and wakes the subscriber again.
    await sql`select pg_terminate_backend(${pids[0]!})`.execute(env.db);
    await expect.poll(() => errors.length, { timeout: 5_000 }).toBe(1);
    expect(errors[0]!.message).toMatch(/terminat|ended/);
    await expect.poll(() => clients.length, { timeout: 5_000 }).toBe(2);
    expect(calls()).toBe(2);
    const second = clients[1]!;
    await expect
      .poll(async () => (await second.query<{ c: string }>('select pg_listening_channels() as c')).rows, { timeout: 5_000 })
      .toEqual([{ c: notificationChannel('sagaline_', env.schema) }]);
    await expect.poll(() => wakes).toBe(3);
    expect(resumes).toBe(1);
    expect(errors).toHaveLength(1);
    await writer.createWorkflow(workflow('w2'));
    await expect.poll(() => wakes).toBe(4);

    // The last subscriber leaves: the store ends its connection.
    const pid = pids[1]!;
    await unsubscribe();
    await expect.poll(() => backendAlive(env.db, pid), { timeout: 5_000 }).toBe(false);
    await writer.createWorkflow(workflow('w3'));
    await new Promise((r) => setTimeout(r, 50));
    expect(wakes).toBe(4);
    expect(calls()).toBe(2);
    expect(errors).toHaveLength(1);
    expect(resumes).toBe(1);
  });

  it('with connect: a first connection that fails is retried in the background, and the subscriber woken once it listens', async () => {
    const env = await fresh();
    const clock = createManualClock(T0);
    const { connect, clients, calls } = connector(env.url, 2);
    const listening = new KyselyWorkflowStore({ db: env.process(), schema: env.schema, clock, notifications: { connect } });
    const writer = new KyselyWorkflowStore({ db: env.db, schema: env.schema, clock, notifications: {} });
    let wakes = 0;
    const errors: string[] = [];
    let resumes = 0;
    const unsubscribe = await listening.subscribe!(() => wakes++, { onError: (e) => errors.push(e.message), onResume: () => resumes++ });
    expect(calls()).toBe(1);
    expect(clients).toHaveLength(0);
    expect(errors).toEqual(['connection refused (attempt 1)']);
    expect(resumes).toBe(0);
    // Retried after 100 ms, then 200 ms: the third attempt connects and listens, and wakes the subscriber.
    await expect.poll(() => wakes, { timeout: 5_000 }).toBe(1);
    expect(calls()).toBe(3);
    expect(errors).toEqual(['connection refused (attempt 1)', 'connection refused (attempt 2)']);
    expect(resumes).toBe(1);
    await writer.createWorkflow(workflow('w1'));
    await expect.poll(() => wakes).toBe(2);
    await unsubscribe();
  });

  it('with connect: a connection lost while its LISTEN is on the way is reported once', async () => {
    const env = await fresh();
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    const { connect, clients, pids } = connector(env.url, 0, held);
    const listening = new KyselyWorkflowStore({ db: env.process(), schema: env.schema, notifications: { connect } });
    const seen: string[] = [];
    let wakes = 0;
    const subscribed = listening.subscribe!(() => wakes++, { onError: () => seen.push('error'), onResume: () => seen.push('resume') });
    // The server ends the first session while the store's LISTEN waits to go out; then the LISTEN fails on it.
    await expect.poll(() => pids.length, { timeout: 5_000 }).toBe(1);
    const ended = new Promise((resolve) => clients[0]!.once('end', resolve));
    await sql`select pg_terminate_backend(${pids[0]!})`.execute(env.db);
    await ended;
    release();
    const unsubscribe = await subscribed;
    // One loss, told once; the store listens on a new connection and says so.
    await expect.poll(() => seen, { timeout: 5_000 }).toEqual(['error', 'resume']);
    expect(clients).toHaveLength(2);
    expect(wakes).toBeGreaterThanOrEqual(1);
    await unsubscribe();
  });

  it('with connect: tells of the return only the subscribers it told of the loss', async () => {
    const env = await fresh();
    const { connect, calls } = connector(env.url, 1);
    const listening = new KyselyWorkflowStore({ db: env.process(), schema: env.schema, notifications: { connect } });
    const seen = { a: [] as string[], b: [] as string[] };
    const told = (name: 'a' | 'b') => ({ onError: (e: Error) => seen[name].push(`error: ${e.message}`), onResume: () => seen[name].push('resume') });
    // A's first connection fails; B subscribes before the retry, and its own attempt connects and listens.
    const unsubscribeA = await listening.subscribe!(() => undefined, told('a'));
    const unsubscribeB = await listening.subscribe!(() => undefined, told('b'));
    expect(calls()).toBe(2);
    // The retry finds the store listening, and tells A that wake-ups work again; B never lost them.
    await expect.poll(() => seen.a, { timeout: 5_000 }).toEqual(['error: connection refused (attempt 1)', 'resume']);
    expect(seen.b).toEqual([]);
    await unsubscribeA();
    await unsubscribeB();
  });

  /**
   * Two engines on separate pools, as two processes: A only starts workflows; B's worker polls once a
   * minute, with `notifications` as given. Returns the engines and the ids B reported completed.
   */
  function twoProcesses(
    env: Awaited<ReturnType<typeof fresh>>,
    wf: WorkflowDefinition<any, any>,
    notificationsB: KyselyNotificationOptions,
    loggerB?: Logger,
  ) {
    const storeA = new KyselyWorkflowStore({ db: env.db, schema: env.schema, notifications: {} });
    const storeB = new KyselyWorkflowStore({ db: env.process(), schema: env.schema, notifications: notificationsB });
    const engineA = createEngine({ store: storeA, workflows: [wf], idlePollMs: 60_000 });
    const engineB = createEngine({ store: storeB, workflows: [wf], idlePollMs: 60_000, ...(loggerB ? { logger: loggerB } : {}) });
    const completed: string[] = [];
    engineB.events.on('workflow:completed', (e) => completed.push(e.workflowId));
    engineB.startWorker();
    opened.push(() => engineB.stop());
    return { engineA, engineB, completed };
  }

  it('lets an engine with a one-minute poll interval pick up a workflow started by another engine at once', async () => {
    const env = await fresh();
    const ran: string[] = [];
    const wf = defineWorkflow({
      name: 'woken',
      input: z.object({ n: z.number() }),
      steps: {
        first: step({ run: (ctx) => (ran.push(`first:${ctx.input.n}`), 1) }),
        second: step({ dependsOn: ['first'], run: (ctx) => (ran.push(`second:${ctx.input.n}`), 2) }),
      },
    });
    const client = await env.listener();
    const { engineA, completed } = twoProcesses(env, wf, { listen: client });
    const channel = notificationChannel('sagaline_', env.schema);
    // B's worker has listened, claimed nothing and gone to sleep for a minute.
    await expect.poll(async () => (await client.query('select pg_listening_channels() as c')).rows, { timeout: 5_000 }).toEqual([{ c: channel }]);
    const { rows } = await sql<{ n: number }>`select count(*)::int as n from ${sql.id(env.schema, 'sagaline_workflows')}`.execute(env.db);
    expect(rows[0]!.n).toBe(0);

    const startedAt = Date.now();
    const { id } = await engineA.start('woken', { tenantId: 't', input: { n: 7 } });
    await expect.poll(() => completed, { timeout: 5_000, interval: 5 }).toEqual([id]);
    expect(Date.now() - startedAt).toBeLessThan(5_000);
    expect(ran).toEqual(['first:7', 'second:7']);
    expect((await engineA.get(id)).status).toBe('completed');
  });

  it('keeps waking an engine whose store opens its own LISTEN connection after that connection is lost', async () => {
    const env = await fresh();
    const wf = defineWorkflow({ name: 'relisten', input: z.object({ n: z.number() }), steps: { only: step({ run: (ctx) => ({ n: ctx.input.n }) }) } });
    const { connect, clients, pids } = connector(env.url);
    const logged: string[] = [];
    const logger: Logger = {
      debug: () => undefined,
      info: (message) => logged.push(`info: ${message}`),
      warn: (message, context) => logged.push(`warn: ${message}: ${String(context?.['error'])}`),
      error: (message) => logged.push(`error: ${message}`),
    };
    const { engineA, engineB, completed } = twoProcesses(env, wf, { connect }, logger);
    const channel = notificationChannel('sagaline_', env.schema);
    const listening = async (i: number) => (clients[i] ? (await clients[i].query('select pg_listening_channels() as c')).rows : []);
    await expect.poll(() => listening(0), { timeout: 5_000 }).toEqual([{ c: channel }]);
    const first = await engineA.start('relisten', { tenantId: 't', input: { n: 1 } });
    await expect.poll(() => completed, { timeout: 5_000, interval: 5 }).toEqual([first.id]);

    // The listening session is ended by the server; the store listens again on a new connection, and the
    // engine logs both.
    expect(logged).toEqual([]);
    await sql`select pg_terminate_backend(${pids[0]!})`.execute(env.db);
    await expect.poll(() => listening(1), { timeout: 5_000 }).toEqual([{ c: channel }]);
    await expect.poll(() => logged.length).toBe(2);
    expect(logged[0]).toMatch(/^warn: store wake-ups interrupted; polling until they resume: .*(terminat|ended)/);
    expect(logged[1]).toBe('info: store wake-ups resumed');
    const second = await engineA.start('relisten', { tenantId: 't', input: { n: 2 } });
    await expect.poll(() => completed, { timeout: 5_000, interval: 5 }).toEqual([first.id, second.id]);
    expect((await engineA.get(second.id)).status).toBe('completed');

    // Stopping the worker ends the store's connection.
    await engineB.stop();
    await expect.poll(() => backendAlive(env.db, pids[1]!), { timeout: 5_000 }).toBe(false);
  });

  it('sends each notification after its write has committed, in a statement of its own: created, made due under a lock, and optimistically', async () => {
    const { env, clock, wakes } = await listened();
    const statements: string[] = [];
    const pool = new pg.Pool({ connectionString: env.url, max: 3 });
    const db = new Kysely<any>({
      dialect: new PostgresDialect({ pool }),
      log: (event) => {
        statements.push(event.query.sql);
      },
    });
    opened.push(() => db.destroy());
    // (No background ANALYZE: only the statements of the writes.)
    const writer = new KyselyWorkflowStore({ db, schema: env.schema, clock, notifications: {}, analyze: false });
    // The checks of first use, before the statements are looked at.
    await writer.getWorkflow('none');
    const notifying = (text: string) => text.includes('pg_notify');
    /** Runs `write`, waits for the notifications on their way, and returns the statements it sent, in the order they ended. */
    const sent = async (write: () => Promise<unknown>): Promise<string[]> => {
      const from = statements.length;
      await write();
      await writer.close();
      return statements.slice(from);
    };

    // A create that leaves its first step due: its statement, then the notification.
    let texts = await sent(() => writer.createWorkflow(workflow('w1', ['a', 'b'])));
    expect(texts.map(notifying)).toEqual([false, true]);
    expect(texts[1]).toMatch(/select pg_notify\(\$1::text, ''\)/);
    await expect.poll(() => wakes.count()).toBe(1);

    // A claim wakes nobody.
    texts = await sent(() => writer.claimSteps(claim('lease-1')));
    expect(texts.some(notifying)).toBe(false);

    // A step made due under the workflow's lock: the notification follows the commit.
    texts = await sent(() => writer.transact('w1', (tx) => tx.updateStep('b', { dueAt: tx.now })));
    expect(texts.filter(notifying)).toHaveLength(1);
    expect(notifying(texts.at(-1)!)).toBe(true);
    // After the transaction's commit.
    expect(texts.at(-2)).toMatch(/^\s*commit/i);
    await expect.poll(() => wakes.count()).toBe(2);

    // A lease given up by a compare-and-set write.
    texts = await sent(() => writer.transact('w1', (tx) => tx.updateStep('a', { leaseToken: null, leaseExpiresAt: null, leaseOwner: null }), { optimistic: true }));
    expect(texts.map(notifying)).toEqual([...texts.slice(0, -1).map(() => false), true]);
    await expect.poll(() => wakes.count()).toBe(3);
    expect(await wakes.settled()).toBe(3);
    expect((await writer.getSteps('w1')).map((s) => [s.name, s.leaseToken])).toEqual([
      ['a', null],
      ['b', null],
    ]);
    await wakes.unsubscribe();
  });

  it('settles a write that wakes others once its notification is sent: the Kysely instance may be destroyed as soon as it resolves', async () => {
    const { env, clock, wakes } = await listened();
    const errors: Error[] = [];
    /** Runs `write` on a store over a Kysely instance of its own, which is destroyed as soon as the write resolves. */
    const asScript = async (write: (store: KyselyWorkflowStore) => Promise<unknown>) => {
      const db = openPostgres(env.url, 2);
      const store = new KyselyWorkflowStore({ db, schema: env.schema, clock, analyze: false, notifications: { onError: (e) => errors.push(e) } });
      await write(store);
      await db.destroy();
    };
    // As a script that starts a workflow and exits, five times; then a step made due by a compare-and-set write.
    for (let i = 0; i < 5; i++) {
      await asScript((store) => store.createWorkflow(workflow(`s${i}`)));
      // Sent and committed before the create resolved: the listening session has it at its next answer.
      expect(await wakes.settled()).toBe(i + 1);
    }
    await asScript((store) => store.transact('s0', (tx) => tx.updateStep('a', { dueAt: tx.now }), { optimistic: true }));
    expect(await wakes.settled()).toBe(6);
    expect(errors).toEqual([]);
    await wakes.unsubscribe();
  });

  it('over a host transaction, sends the notification in it: delivered when the host commits, never when it rolls back', async () => {
    const { env, clock, listening, wakes } = await listened();
    await env.db.transaction().execute(async (trx) => {
      const store = new KyselyWorkflowStore({ db: trx, schema: env.schema, clock, notifications: {} });
      await store.createWorkflow(workflow('t1'));
      await store.close();
      // Not before the host commits.
      expect(await wakes.settled()).toBe(0);
    });
    await expect.poll(() => wakes.count()).toBe(1);
    await env.db
      .transaction()
      .execute(async (trx) => {
        const store = new KyselyWorkflowStore({ db: trx, schema: env.schema, clock, notifications: {} });
        await store.createWorkflow(workflow('t2'));
        throw new Error('the host rolls back');
      })
      .catch(() => undefined);
    expect(await wakes.settled()).toBe(1);
    expect(await listening.getWorkflow('t2')).toBeNull();
    expect((await listening.getWorkflow('t1'))?.id).toBe('t1');
    await wakes.unsubscribe();
  });

  it('reports a notification that cannot be sent to notifications.onError (by default a console warning), and the write stands', async () => {
    // A role that may write the tables but not call pg_notify, in a database of its own.
    const env = await fresh();
    const database = await createPostgresDatabase({ poolSize: 2 });
    const role = `sagaline_nonotify_${randomBytes(4).toString('hex')}`;
    // (Run before env's cleanup: the last pushed runs first.)
    opened.push(async () => {
      await database.cleanup();
      await sql.raw(`drop role if exists ${role}`).execute(env.db);
    });
    await migrateToLatest(database.db);
    await sql.raw(`create role ${role} login`).execute(database.db);
    await sql.raw(`grant select, insert, update, delete on all tables in schema public to ${role}`).execute(database.db);
    await sql.raw(`revoke execute on function pg_notify(text, text) from public`).execute(database.db);
    const url = new URL(database.url);
    url.username = role;
    const db = openPostgres(url.toString(), 2);
    opened.push(() => db.destroy());

    const errors: Error[] = [];
    const store = new KyselyWorkflowStore({ db, analyze: false, notifications: { onError: (error) => errors.push(error) } });
    expect((await store.createWorkflow(workflow('r1'))).workflow.id).toBe('r1');
    await store.close();
    expect(errors.map((e) => e.message)).toEqual([expect.stringMatching(/permission denied for function pg_notify/)]);
    expect((await store.getSteps('r1')).map((s) => s.dueAt)).toEqual([new Date(T0)]);
    // A later write that wakes is written, and its notification tried again.
    await store.transact('r1', (tx) => tx.updateStep('a', { dueAt: new Date(T0 + 1) }), { optimistic: true });
    await store.close();
    expect(errors).toHaveLength(2);
    expect((await store.getSteps('r1'))[0]!.dueAt).toEqual(new Date(T0 + 1));

    const warned = vi.spyOn(console, 'warn').mockImplementation(() => undefined);
    try {
      const quiet = new KyselyWorkflowStore({ db, analyze: false, notifications: {} });
      await quiet.createWorkflow(workflow('r2'));
      await quiet.close();
      expect(warned.mock.calls.map((c) => String(c[0]))).toEqual([
        expect.stringMatching(/^sagaline: a store notification could not be sent .*permission denied for function pg_notify/),
      ]);
    } finally {
      warned.mockRestore();
    }
    expect(() => new KyselyWorkflowStore({ db, notifications: { onError: 'log' as unknown as () => void } })).toThrow(
      'notifications.onError must be a function',
    );
  });
});
