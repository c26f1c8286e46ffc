/**
 * One engine process for the multi-process tests (`test/process/`,
 * `test/reliability/process/`): a `WorkflowEngine` on a SQLite file or a
 * Postgres database shared with other processes, driven by its parent over IPC.
 *
 * Usage: `fork(thisFile, [JSON.stringify(config)], { execArgv: ['--import', 'tsx'] })`
 * (see `test/process/process-harness.ts`). It sends `ready`, then obeys
 * `start` (start workflows), `work` (start the worker loop), `release` (let a
 * held handler return) and `stop` (graceful stop, then exit 0).
 *
 * Every handler invocation appends one row to an `effects` table through its
 * own connection, outside the engine: a `run` row when a step's `run` starts,
 * `compensate` for a compensation, `poll` for a poll. The rows are the side
 * effects the tests count: two rows for one attempt is a double execution.
 * On SQLite the effects live in a separate file, because a synchronous write
 * to the engine's own file could wait on the write lock that this process's
 * engine connection holds in the middle of a transaction.
 *
 * Faults are configured per process:
 * - `kill`: at a named point, append a marker line to `markerFile`, then
 *   SIGKILL this process (the points are listed in {@link KillPoint});
 * - `hold`: a step's handler, after its effect row, blocks forever, waits for
 *   a `release` message, or SIGSTOPs this process (a zombie in the making:
 *   after SIGCONT it returns at once, before its heartbeat notices anything);
 * - `skewMs`: this process's JavaScript clock (`Date.now` and the engine's
 *   `clock`) runs that far off; with `skewStoreClock` the store gets the
 *   skewed clock too (a store that trusts the app clock).
 */
import { appendFileSync } from 'node:fs';
import Database from 'better-sqlite3';
import { Kysely, PostgresDialect, SqliteDialect } from 'kysely';
import pg from 'pg';
import { z } from 'zod';
import { systemClock, type Clock } from '../../src/core/clock.js';
import { defineWorkflow, step, type CompensateContext, type PollContext, type StepContext } from '../../src/core/define-workflow.js';
import type { Logger } from '../../src/core/logger.js';
import { createEngine } from '../../src/engine/workflow-engine.js';
import { NonRetryableError } from '../../src/errors.js';
import type { WorkflowEventName } from '../../src/events/workflow-events.js';
import { KyselyWorkflowStore } from '../../src/stores/kysely/kysely-workflow-store.js';
import type { KyselyNotificationOptions } from '../../src/stores/kysely/kysely-workflow-store-config.js';
import { openSqlite } from './sqlite-connection.js';

/** Where SIGKILL strikes. */
export type KillPoint =
  /** `step:started` of the target step: claimed and committed, the body has not run. */
  | 'after-claim'
  /** Inside `run`, right after its effect row: the side effect happened, the result is not stored. */
  | 'after-effect'
  /** `step:completed` of the target step: emitted after the result's commit. */
  | 'after-store'
  /** Inside `compensate`, right after its effect row: undone, but not recorded. */
  | 'compensation-effect'
  /** `step:compensated` of the target step: the compensation is recorded. */
  | 'compensation-stored';

/** What a held handler does once its effect row is written. */
export type HoldMode = 'forever' | 'until-release' | 'stop-self';

export type DatabaseTarget =
  | { dialect: 'postgres'; url: string; poolSize?: number; applicationName?: string }
  | { dialect: 'sqlite'; file: string };

export interface EngineProcessConfig {
  workerId: string;
  database: DatabaseTarget;
  effects: { dialect: 'postgres'; url: string } | { dialect: 'sqlite'; file: string };
  concurrency?: number;
  leaseMs?: number;
  idlePollMs?: number;
  shutdownTimeoutMs?: number;
  skewMs?: number;
  skewStoreClock?: boolean;
  kill?: { point: KillPoint; step: string; markerFile: string };
  hold?: { step: string; mode: HoldMode; attempt?: number };
  /** Engine events to forward to the parent. */
  forwardEvents?: WorkflowEventName[];
  /**
   * Postgres `notifications`: `send` (`{}`: notify others, hear nothing) or
   * `listen` (also listen, on a client the store opens with `connect`).
   */
  notifications?: 'send' | 'listen';
  /** The store's `groupCommit`. */
  groupCommit?: boolean;
}

/** A kill marker, one JSON line in `markerFile`. */
export interface KillMarker {
  point: KillPoint;
  workerId: string;
  pid: number;
  workflowId: string;
  stepName: string;
  attempt: number;
}

export type ParentMessage =
  | { type: 'start'; requestId: number; workflow: string; count: number; tenantId: string; idempotencyKey?: string; input: unknown; atMs?: number }
  | { type: 'work' }
  | { type: 'release'; workflowId: string; stepName: string }
  | { type: 'stop' };

export type ChildMessage =
  | { type: 'ready'; pid: number }
  | { type: 'started'; requestId: number; ids: string[]; errors: string[] }
  | { type: 'working' }
  | { type: 'held'; workflowId: string; stepName: string; attempt: number }
  | { type: 'log'; level: 'debug' | 'info' | 'warn' | 'error'; message: string; context?: Record<string, unknown> }
  | { type: 'event'; name: WorkflowEventName; payload: Record<string, unknown> }
  | { type: 'stopped' }
  | { type: 'fatal'; message: string };

/** The input every workflow here takes: per-step sleeps, a random in-step delay, and the step that fails. */
const input = z.object({
  sleepMs: z.record(z.string(), z.number().int().min(0)).default({}),
  jitterMs: z.number().int().min(0).default(0),
  failAt: z.string().optional(),
});
type Input = z.output<typeof input>;

const config = JSON.parse(process.argv[2] ?? 'null') as EngineProcessConfig | null;
if (!config || typeof config.workerId !== 'string') {
  console.error('usage: engine-process.ts <json config>');
  process.exit(2);
}
const workerId = config.workerId;

function send(message: ChildMessage): void {
  if (process.connected) process.send?.(message);
}

// ---------------------------------------------------------------- clock

const realNow = Date.now.bind(Date);
const skewMs = config.skewMs ?? 0;
const clock: Clock = skewMs === 0 ? systemClock : { now: () => realNow() + skewMs, setTimeout: systemClock.setTimeout };
if (skewMs !== 0) Date.now = () => realNow() + skewMs;

// ---------------------------------------------------------------- effects

interface EffectRow {
  workflowId: string;
  stepName: string;
  attempt: number;
  kind: 'run' | 'compensate' | 'poll';
  idempotencyKey: string;
  pollCount?: number | null;
}

interface EffectsWriter {
  insert(row: EffectRow): Promise<void>;
  close(): Promise<void>;
}

function openEffects(target: EngineProcessConfig['effects']): EffectsWriter {
  if (target.dialect === 'postgres') {
    const pool = new pg.Pool({ connectionString: target.url, max: (config!.concurrency ?? 10) + 2, application_name: 'sagaline_effects' });
    pool.on('error', () => undefined);
    return {
      async insert(r) {
        await pool.query(
          'insert into effects (workflow_id, step_name, attempt, kind, idempotency_key, worker, poll_count) values ($1, $2, $3, $4, $5, $6, $7)',
          [r.workflowId, r.stepName, r.attempt, r.kind, r.idempotencyKey, workerId, r.pollCount ?? null],
        );
      },
      close: () => pool.end(),
    };
  }
  const db = new Database(target.file, { timeout: 10_000 });
  db.pragma('busy_timeout = 10000');
  const insert = db.prepare(
    'insert into effects (workflow_id, step_name, attempt, kind, idempotency_key, worker, poll_count, at) values (?, ?, ?, ?, ?, ?, ?, ?)',
  );
  return {
    async insert(r) {
      insert.run(r.workflowId, r.stepName, r.attempt, r.kind, r.idempotencyKey, workerId, r.pollCount ?? null, realNow());
    },
    async close() {
      db.close();
    },
  };
}

const effects = openEffects(config.effects);

// ---------------------------------------------------------------- faults

function killHere(point: KillPoint, workflowId: string, stepName: string, attempt: number): void {
  const marker: KillMarker = { point, workerId, pid: process.pid, workflowId, stepName, attempt };
  appendFileSync(config!.kill!.markerFile, `${JSON.stringify(marker)}\n`);
  process.kill(process.pid, 'SIGKILL');
}

function killPoint(point: KillPoint, workflowId: string, stepName: string, attempt: number): void {
  const kill = config!.kill;
  if (kill && kill.point === point && kill.step === stepName) killHere(point, workflowId, stepName, attempt);
}

const releases = new Map<string, () => void>();
const released = new Set<string>();

async function holdPoint(workflowId: string, stepName: string, attempt: number, signal: AbortSignal): Promise<void> {
  const hold = config!.hold;
  if (!hold || hold.step !== stepName || (hold.attempt !== undefined && hold.attempt !== attempt)) return;
  send({ type: 'held', workflowId, stepName, attempt });
  if (hold.mode === 'stop-self') {
    // Resumes here on SIGCONT and returns before any timer (the heartbeat) runs.
    process.kill(process.pid, 'SIGSTOP');
    return;
  }
  if (hold.mode === 'forever') {
    await new Promise<never>(() => undefined);
    return;
  }
  const key = `${workflowId}\u0000${stepName}`;
  if (released.has(key)) return;
  await new Promise<void>((resolve) => {
    releases.set(key, resolve);
    signal.addEventListener('abort', () => resolve(), { once: true });
  });
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  if (ms <= 0) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener(
      'abort',
      () => {
        clearTimeout(timer);
        resolve();
      },
      { once: true },
    );
  });
}

// ---------------------------------------------------------------- workflows

async function runBody(ctx: StepContext<Input>): Promise<{ attempt: number; worker: string }> {
  await effects.insert({ workflowId: ctx.workflowId, stepName: ctx.stepName, attempt: ctx.attempt, kind: 'run', idempotencyKey: ctx.idempotencyKey });
  killPoint('after-effect', ctx.workflowId, ctx.stepName, ctx.attempt);
  await holdPoint(ctx.workflowId, ctx.stepName, ctx.attempt, ctx.signal);
  if (ctx.input.failAt === ctx.stepName) throw new NonRetryableError(`step ${ctx.stepName} fails by design`, { code: 'designed_failure' });
  const ms = (ctx.input.sleepMs[ctx.stepName] ?? 0) + (ctx.input.jitterMs > 0 ? Math.floor(Math.random() * ctx.input.jitterMs) : 0);
  await sleep(ms, ctx.signal);
  return { attempt: ctx.attempt, worker: workerId };
}

async function compensateBody(ctx: CompensateContext<Input>): Promise<void> {
  await effects.insert({ workflowId: ctx.workflowId, stepName: ctx.stepName, attempt: ctx.attempt, kind: 'compensate', idempotencyKey: ctx.idempotencyKey });
  killPoint('compensation-effect', ctx.workflowId, ctx.stepName, ctx.attempt);
}

async function pollBody(ctx: PollContext<Input>): Promise<{ done: true; output: { polls: number } } | { done: false }> {
  await effects.insert({
    workflowId: ctx.workflowId,
    stepName: ctx.stepName,
    attempt: ctx.attempt,
    kind: 'poll',
    idempotencyKey: ctx.idempotencyKey,
    pollCount: ctx.pollCount,
  });
  return ctx.pollCount >= 3 ? { done: true, output: { polls: ctx.pollCount + 1 } } : { done: false };
}

const retry = { maximumAttempts: 10, initialIntervalMs: 100, jitter: 0 };

/** Five steps in a line. */
const linear5 = defineWorkflow({
  name: 'pw_linear5',
  input,
  steps: {
    s1: step({ run: runBody, retry }),
    s2: step({ run: runBody, retry }),
    s3: step({ run: runBody, retry }),
    s4: step({ run: runBody, retry }),
    s5: step({ run: runBody, retry }),
  },
});

/** Five compensable steps; the step named by `input.failAt` fails for good and the workflow rolls back. */
const rollback5 = defineWorkflow({
  name: 'pw_rollback5',
  input,
  onFailure: 'rollback',
  steps: {
    r1: step({ run: runBody, compensate: compensateBody, retry }),
    r2: step({ run: runBody, compensate: compensateBody, retry }),
    r3: step({ run: runBody, compensate: compensateBody, retry }),
    r4: step({ run: runBody, compensate: compensateBody, retry }),
    r5: step({ run: runBody, compensate: compensateBody, retry }),
  },
});

/** A long step (heartbeats), a poll loop (four polls, 300 ms apart), and a last step. */
const pollWorkflow = defineWorkflow({
  name: 'pw_poll',
  input,
  steps: {
    hold: step({ run: runBody, retry }),
    wait: step({ run: runBody, poll: pollBody, pollIntervalMs: 300, pollTimeoutMs: 120_000, retry }),
    last: step({ run: runBody, retry }),
  },
});

/** The definitions every engine process registers. */
const workflows = [linear5, rollback5, pollWorkflow];

// ---------------------------------------------------------------- engine

function openDatabase(target: DatabaseTarget): { db: Kysely<any>; close: () => Promise<void> } {
  if (target.dialect === 'postgres') {
    const pool = new pg.Pool({
      connectionString: target.url,
      max: target.poolSize ?? 10,
      ...(target.applicationName ? { application_name: target.applicationName } : {}),
    });
    // A connection the server closed (pg_terminate_backend) is dropped from the pool; the engine retries.
    pool.on('error', (err) => send({ type: 'log', level: 'warn', message: 'idle connection error', context: { error: err.message } }));
    // pg-pool listens for errors only on idle clients: a checked-out client (between two statements of a
    // transaction) whose socket dies emits 'error' with no listener, which would crash the process. Its
    // pending and next queries fail instead, and the engine handles those.
    pool.on('connect', (client) => {
      client.on('error', (err) => send({ type: 'log', level: 'warn', message: 'connection error', context: { error: err.message } }));
    });
    const db = new Kysely<any>({ dialect: new PostgresDialect({ pool }) });
    return { db, close: () => db.destroy() };
  }
  const db = new Kysely<any>({ dialect: new SqliteDialect({ database: openSqlite(target.file) }) });
  return { db, close: () => db.destroy() };
}

const logger: Logger = {
  debug: () => undefined,
  info: (message, context) => send({ type: 'log', level: 'info', message, ...(context ? { context } : {}) }),
  warn: (message, context) => send({ type: 'log', level: 'warn', message, ...(context ? { context } : {}) }),
  error: (message, context) => send({ type: 'log', level: 'error', message, ...(context ? { context } : {}) }),
};

/** The store's `notifications` option for `config.notifications`. */
function notificationOptions(target: DatabaseTarget): KyselyNotificationOptions | undefined {
  if (!config!.notifications) return undefined;
  if (target.dialect !== 'postgres') throw new Error('notifications need Postgres');
  const onError = (error: Error) => send({ type: 'log', level: 'warn', message: 'notification not sent', context: { error: error.message } });
  if (config!.notifications === 'send') return { onError };
  return {
    onError,
    connect: async () => {
      const client = new pg.Client({ connectionString: target.url, application_name: `${workerId}_listen` });
      // The store hears of a lost connection itself.
      client.on('error', () => undefined);
      await client.connect();
      return client;
    },
  };
}

const database = openDatabase(config.database);
const notifications = notificationOptions(config.database);
const store = new KyselyWorkflowStore({
  db: database.db,
  ...(config.skewStoreClock ? { clock } : {}),
  ...(notifications ? { notifications } : {}),
  ...(config.groupCommit ? { groupCommit: true } : {}),
});
const engine = createEngine({
  store,
  workflows,
  clock,
  logger,
  workerId,
  ...(config.concurrency !== undefined ? { concurrency: config.concurrency } : {}),
  ...(config.leaseMs !== undefined ? { leaseMs: config.leaseMs } : {}),
  ...(config.idlePollMs !== undefined ? { idlePollMs: config.idlePollMs } : {}),
  shutdownTimeoutMs: config.shutdownTimeoutMs ?? 5_000,
});

const kill = config.kill;
if (kill) {
  const on = (point: KillPoint, event: 'step:started' | 'step:completed' | 'step:compensated') =>
    engine.events.on(event, (e) => {
      if (kill.point === point && e.stepName === kill.step) killHere(point, e.workflowId, e.stepName, e.attempt);
    });
  on('after-claim', 'step:started');
  on('after-store', 'step:completed');
  on('compensation-stored', 'step:compensated');
}
for (const name of config.forwardEvents ?? []) {
  engine.events.on(name, (payload: object) => send({ type: 'event', name, payload: JSON.parse(JSON.stringify(payload)) as Record<string, unknown> }));
}

// ---------------------------------------------------------------- commands

async function startWorkflows(m: Extract<ParentMessage, { type: 'start' }>): Promise<void> {
  if (m.atMs !== undefined) {
    const wait = m.atMs - realNow();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
  }
  const results = await Promise.allSettled(
    Array.from({ length: m.count }, () =>
      engine.start(m.workflow, {
        tenantId: m.tenantId,
        input: m.input,
        ...(m.idempotencyKey !== undefined ? { idempotencyKey: m.idempotencyKey } : {}),
      }),
    ),
  );
  const ids: string[] = [];
  const errors: string[] = [];
  for (const r of results) {
    if (r.status === 'fulfilled') ids.push(r.value.id);
    else errors.push(r.reason instanceof Error ? r.reason.message : String(r.reason));
  }
  send({ type: 'started', requestId: m.requestId, ids, errors });
}

async function stop(): Promise<void> {
  await engine.stop();
  await database.close();
  await effects.close();
  await new Promise<void>((resolve) => {
    if (!process.connected || !process.send) resolve();
    else process.send({ type: 'stopped' } satisfies ChildMessage, () => resolve());
  });
}

process.on('message', (raw: unknown) => {
  const m = raw as ParentMessage;
  const fail = (err: unknown) => send({ type: 'fatal', message: err instanceof Error ? (err.stack ?? err.message) : String(err) });
  switch (m.type) {
    case 'start':
      startWorkflows(m).catch(fail);
      break;
    case 'work':
      engine.startWorker();
      send({ type: 'working' });
      break;
    case 'release': {
      const key = `${m.workflowId}\u0000${m.stepName}`;
      released.add(key);
      releases.get(key)?.();
      break;
    }
    case 'stop':
      stop().then(() => process.exit(0), fail);
      break;
  }
});

process.on('unhandledRejection', (err) => {
  send({ type: 'fatal', message: `unhandled rejection: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}` });
});
// The parent went away (a crashed test run): never outlive it.
process.on('disconnect', () => process.exit(0));

await store.check();
send({ type: 'ready', pid: process.pid });
