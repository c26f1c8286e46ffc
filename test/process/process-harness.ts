/**
 * The parent's side of the multi-process tests: spawning engine processes
 * (`test/support/engine-process.ts`), a database they share with an `effects`
 * table, and the checks that count effects against the stored history.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type Database from 'better-sqlite3';
import { sql, type Kysely } from 'kysely';
import { afterEach, describe, expect, it } from 'vitest';
import type { StepRecord, WorkflowStore } from '../../src/storage/workflow-store.js';
import { migrateToLatest } from '../../src/stores/kysely/kysely-migrations.js';
import { KyselyWorkflowStore } from '../../src/stores/kysely/kysely-workflow-store.js';
import { createPostgresDatabase, createSqliteDatabase, openSqlite } from '../support/databases.js';
import type { ChildMessage, DatabaseTarget, EngineProcessConfig, KillMarker, ParentMessage } from '../support/engine-process.js';
import { readStored, violations, type Compensable, type StoredWorkflow } from '../reliability/support/invariants.js';
import { reliabilityStores } from '../reliability/support/iterations.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const ENGINE_PROCESS_SCRIPT = join(root, 'test', 'support', 'engine-process.ts');

/** Steps with a `compensate` handler, per workflow type of the engine process. */
export const processCompensable: Compensable = (type) =>
  type === 'pw_rollback5' ? new Set(['r1', 'r2', 'r3', 'r4', 'r5']) : new Set<string>();

/**
 * The SQL stores a multi-process suite runs on: both, or those of them that
 * `SAGALINE_RELIABILITY_STORES` names (a suite with none left is skipped).
 */
export function processStores(): ('sqlite' | 'postgres')[] {
  return reliabilityStores()
    .map((f) => f.name)
    .filter((n): n is 'sqlite' | 'postgres' => n === 'sqlite' || n === 'postgres');
}

/**
 * `describe.each` over {@link processStores} (or only `only` of them). When
 * `SAGALINE_RELIABILITY_STORES` leaves none, one skipped suite whose title
 * says so (vitest refuses an empty `describe.each`).
 */
export function describeOnProcessStores(
  title: string,
  body: (store: 'sqlite' | 'postgres') => void,
  only?: readonly ('sqlite' | 'postgres')[],
): void {
  const stores = processStores().filter((s) => !only || only.includes(s));
  if (stores.length === 0) {
    // Reported as skipped, with the reason in its title; it has nothing to run.
    it.skip(`${title.replace('%s', (only ?? ['sqlite', 'postgres']).join('/'))} (skipped: SAGALINE_RELIABILITY_STORES excludes it)`, () => undefined);
    return;
  }
  describe.each(stores)(title, body);
}

// ---------------------------------------------------------------- waiting

/** Polls `check` every `intervalMs` until it returns a truthy value; fails after `limitMs` with `what`. */
export async function waitFor<T>(check: () => Promise<T> | T, what: string, limitMs: number, intervalMs = 50): Promise<NonNullable<T>> {
  const deadline = Date.now() + limitMs;
  for (;;) {
    const value = await check();
    if (value) return value as NonNullable<T>;
    if (Date.now() > deadline) throw new Error(`timed out after ${limitMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

export function delay(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

// ---------------------------------------------------------------- processes

type LogLine = Extract<ChildMessage, { type: 'log' }>;
type ForwardedEvent = Extract<ChildMessage, { type: 'event' }>;
type Held = Extract<ChildMessage, { type: 'held' }>;

const live = new Set<EngineProcess>();

/** An engine process and what it reported. */
export class EngineProcess {
  readonly logs: LogLine[] = [];
  readonly events: ForwardedEvent[] = [];
  readonly held: Held[] = [];
  readonly fatal: string[] = [];
  stderr = '';
  exit: { code: number | null; signal: NodeJS.Signals | null } | null = null;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private readonly waiters = new Set<(m: ChildMessage) => void>();
  private nextRequest = 1;

  private constructor(
    readonly child: ChildProcess,
    readonly config: EngineProcessConfig,
  ) {
    child.stderr?.on('data', (chunk: Buffer) => {
      this.stderr = (this.stderr + chunk.toString('utf8')).slice(-20_000);
    });
    child.stdout?.on('data', () => undefined);
    child.on('message', (raw: unknown) => {
      const m = raw as ChildMessage;
      if (m.type === 'log') this.logs.push(m);
      else if (m.type === 'event') this.events.push(m);
      else if (m.type === 'held') this.held.push(m);
      else if (m.type === 'fatal') this.fatal.push(m.message);
      for (const w of [...this.waiters]) w(m);
    });
    this.exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        this.exit = { code, signal };
        live.delete(this);
        resolve(this.exit);
      });
    });
  }

  /** Forks an engine process and waits until it has checked its database. */
  static async spawn(config: EngineProcessConfig, readyTimeoutMs = 30_000): Promise<EngineProcess> {
    const child = fork(ENGINE_PROCESS_SCRIPT, [JSON.stringify(config)], {
      cwd: root,
      execArgv: ['--import', 'tsx'],
      stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
    });
    const proc = new EngineProcess(child, config);
    live.add(proc);
    await proc.next((m) => m.type === 'ready', 'ready', readyTimeoutMs);
    return proc;
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  get workerId(): string {
    return this.config.workerId;
  }

  get alive(): boolean {
    return this.exit === null;
  }

  /** Resolves with the first message matching `match`; rejects when the process exits first or after `limitMs`. */
  next<T extends ChildMessage>(match: (m: ChildMessage) => boolean, what: string, limitMs: number): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => done(new Error(`${this.workerId}: no ${what} within ${limitMs} ms\n${this.describe()}`)), limitMs);
      const waiter = (m: ChildMessage) => {
        if (match(m)) done(null, m as T);
      };
      const onExit = () => done(new Error(`${this.workerId} exited (${JSON.stringify(this.exit)}) before ${what}\n${this.describe()}`));
      const done = (err: Error | null, m?: T) => {
        clearTimeout(timer);
        this.waiters.delete(waiter);
        this.child.removeListener('exit', onExit);
        if (err) reject(err);
        else resolve(m!);
      };
      this.waiters.add(waiter);
      this.child.once('exit', onExit);
    });
  }

  send(message: ParentMessage): void {
    if (this.child.connected) this.child.send(message);
  }

  /** Starts `count` workflows of `workflow` (concurrently, at `atMs` of the real clock if given). */
  async start(
    workflow: string,
    options: { count?: number; tenantId?: string; idempotencyKey?: string; input?: unknown; atMs?: number },
    limitMs = 60_000,
  ): Promise<{ ids: string[]; errors: string[] }> {
    const requestId = this.nextRequest++;
    const reply = this.next<Extract<ChildMessage, { type: 'started' }>>((m) => m.type === 'started' && m.requestId === requestId, `start #${requestId}`, limitMs);
    this.send({
      type: 'start',
      requestId,
      workflow,
      count: options.count ?? 1,
      tenantId: options.tenantId ?? 'tenant_a',
      input: options.input ?? {},
      ...(options.idempotencyKey !== undefined ? { idempotencyKey: options.idempotencyKey } : {}),
      ...(options.atMs !== undefined ? { atMs: options.atMs } : {}),
    });
    const { ids, errors } = await reply;
    return { ids, errors };
  }

  /** Starts the worker loop. */
  async work(): Promise<void> {
    const reply = this.next((m) => m.type === 'working', 'working', 10_000);
    this.send({ type: 'work' });
    await reply;
  }

  release(workflowId: string, stepName: string): void {
    this.send({ type: 'release', workflowId, stepName });
  }

  /** Graceful stop: `engine.stop()`, then exit 0, within `limitMs`. */
  async stop(limitMs = 20_000): Promise<void> {
    if (!this.alive) return;
    this.send({ type: 'stop' });
    const timer = delay(limitMs).then(() => 'timeout' as const);
    const outcome = await Promise.race([this.exited, timer]);
    if (outcome === 'timeout') {
      this.kill('SIGKILL');
      throw new Error(`${this.workerId} did not stop within ${limitMs} ms\n${this.describe()}`);
    }
    if (outcome.code !== 0) throw new Error(`${this.workerId} stopped with ${JSON.stringify(outcome)}\n${this.describe()}`);
  }

  kill(signal: NodeJS.Signals = 'SIGKILL'): void {
    if (this.alive) this.child.kill(signal);
  }

  /** Waits for the process to exit; fails after `limitMs`. */
  async waitForExit(limitMs: number): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    const outcome = await Promise.race([this.exited, delay(limitMs).then(() => null)]);
    if (!outcome) throw new Error(`${this.workerId} did not exit within ${limitMs} ms\n${this.describe()}`);
    return outcome;
  }

  /** True when the process is stopped (SIGSTOP), from `/proc/<pid>/stat`. */
  isStopped(): boolean {
    try {
      const stat = readFileSync(`/proc/${this.pid}/stat`, 'utf8');
      const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
      return state === 'T' || state === 't';
    } catch {
      return false;
    }
  }

  /** Warnings and errors the engine logged. */
  problems(): LogLine[] {
    return this.logs.filter((l) => l.level === 'warn' || l.level === 'error');
  }

  describe(): string {
    const logs = this.logs
      .slice(-15)
      .map((l) => `  [${l.level}] ${l.message} ${l.context ? JSON.stringify(l.context) : ''}`)
      .join('\n');
    return `--- ${this.workerId} (pid ${this.pid}) exit=${JSON.stringify(this.exit)} fatal=${JSON.stringify(this.fatal)}\n${logs}\n--- stderr:\n${this.stderr.slice(-3000)}`;
  }
}

/** SIGKILLs every engine process still running (for `afterEach`). */
export async function killAllProcesses(): Promise<void> {
  const procs = [...live];
  for (const p of procs) p.kill('SIGKILL');
  await Promise.all(procs.map((p) => p.waitForExit(10_000).catch(() => undefined)));
}

// ---------------------------------------------------------------- database

/** One side effect, as a handler recorded it. */
export interface EffectRecord {
  id: number;
  workflowId: string;
  stepName: string;
  attempt: number;
  kind: 'run' | 'compensate' | 'poll';
  idempotencyKey: string;
  worker: string;
  pollCount: number | null;
  at: Date;
}

/** A database shared by engine processes, migrated, with an `effects` table. */
export interface ProcessDatabase {
  dialect: 'postgres' | 'sqlite';
  /** The engine database, as an engine process config takes it. */
  target: DatabaseTarget;
  effectsTarget: EngineProcessConfig['effects'];
  /** The parent's own handle on the engine database. */
  db: Kysely<any>;
  /** A store on `db`, for reading state. */
  store: KyselyWorkflowStore;
  /** A temp dir for marker files. */
  dir: string;
  effects(): Promise<EffectRecord[]>;
  /** Workflows by status (all, or those in `ids`). */
  statusCounts(ids?: readonly string[]): Promise<Record<string, number>>;
  cleanup(): Promise<void>;
}

const PG_EFFECTS = `create table effects (
  id bigserial primary key,
  workflow_id text not null,
  step_name text not null,
  attempt integer not null,
  kind text not null,
  idempotency_key text not null,
  worker text not null,
  poll_count integer,
  at timestamptz not null default clock_timestamp()
)`;

const SQLITE_EFFECTS = `create table effects (
  id integer primary key autoincrement,
  workflow_id text not null,
  step_name text not null,
  attempt integer not null,
  kind text not null,
  idempotency_key text not null,
  worker text not null,
  poll_count integer,
  at integer not null
)`;

function toEffect(r: Record<string, unknown>): EffectRecord {
  const at = r['at'];
  return {
    id: Number(r['id']),
    workflowId: String(r['workflow_id']),
    stepName: String(r['step_name']),
    attempt: Number(r['attempt']),
    kind: r['kind'] as EffectRecord['kind'],
    idempotencyKey: String(r['idempotency_key']),
    worker: String(r['worker']),
    pollCount: r['poll_count'] === null || r['poll_count'] === undefined ? null : Number(r['poll_count']),
    at: at instanceof Date ? at : new Date(Number(at)),
  };
}

/**
 * For a suite whose tests each run engine processes on a database of their
 * own: registers an `afterEach` that kills the processes still running and
 * drops the test's database, and returns the function a test opens it with.
 */
export function processDatabasePerTest(): (dialect: 'postgres' | 'sqlite') => Promise<ProcessDatabase> {
  let database: ProcessDatabase | undefined;
  afterEach(async () => {
    await killAllProcesses();
    await database?.cleanup();
    database = undefined;
  });
  return async (dialect) => (database = await createProcessDatabase(dialect));
}

export async function createProcessDatabase(dialect: 'postgres' | 'sqlite'): Promise<ProcessDatabase> {
  const dir = mkdtempSync(join(tmpdir(), 'sagaline-proc-'));
  const statusCounts = async (db: Kysely<any>, ids?: readonly string[]) => {
    if (ids && ids.length === 0) return {};
    const where = ids ? sql`where id in (${sql.join(ids)})` : sql``;
    const rows = (await sql<{ status: string; n: number | string }>`select status, count(*) as n from sagaline_workflows ${where} group by status`.execute(db)).rows;
    return Object.fromEntries(rows.map((r) => [r.status, Number(r.n)]));
  };
  if (dialect === 'postgres') {
    const database = await createPostgresDatabase({ poolSize: 8 });
    try {
      await migrateToLatest(database.db);
      await sql.raw(PG_EFFECTS).execute(database.db);
    } catch (err) {
      await database.cleanup();
      throw err;
    }
    const db = database.db;
    return {
      dialect,
      target: { dialect: 'postgres', url: database.url },
      effectsTarget: { dialect: 'postgres', url: database.url },
      db,
      store: new KyselyWorkflowStore({ db }),
      dir,
      async effects() {
        return (await sql<Record<string, unknown>>`select * from effects order by id`.execute(db)).rows.map(toEffect);
      },
      statusCounts: (ids) => statusCounts(db, ids),
      async cleanup() {
        await database.cleanup();
        rmSync(dir, { recursive: true, force: true });
      },
    };
  }
  const database = await createSqliteDatabase();
  const effectsFile = join(dirname(database.file), 'effects.db');
  let effectsDb: Database.Database | undefined;
  try {
    await migrateToLatest(database.db);
    effectsDb = openSqlite(effectsFile);
    effectsDb.exec(SQLITE_EFFECTS);
  } catch (err) {
    effectsDb?.close();
    await database.cleanup();
    throw err;
  }
  const reader = effectsDb;
  const db = database.db;
  return {
    dialect,
    target: { dialect: 'sqlite', file: database.file },
    effectsTarget: { dialect: 'sqlite', file: effectsFile },
    db,
    store: new KyselyWorkflowStore({ db }),
    dir,
    async effects() {
      return (reader.prepare('select * from effects order by id').all() as Record<string, unknown>[]).map(toEffect);
    },
    statusCounts: (ids) => statusCounts(db, ids),
    async cleanup() {
      reader.close();
      await database.cleanup();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Kill markers written by engine processes to `file`. */
export function readMarkers(file: string): KillMarker[] {
  if (!existsSync(file)) return [];
  return readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => JSON.parse(l) as KillMarker);
}

/** Every workflow in `ids`, read straight from the store, `concurrency` at a time. */
export async function readAllStored(store: WorkflowStore, ids: readonly string[], concurrency = 8): Promise<StoredWorkflow[]> {
  const out: StoredWorkflow[] = new Array(ids.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(concurrency, ids.length) }, async () => {
      while (next < ids.length) {
        const i = next++;
        out[i] = await readStored(store, ids[i]!);
      }
    }),
  );
  return out;
}

/** Effects grouped by workflow id. */
export function effectsByWorkflow(effects: readonly EffectRecord[]): Map<string, EffectRecord[]> {
  const map = new Map<string, EffectRecord[]>();
  for (const e of effects) {
    let list = map.get(e.workflowId);
    if (!list) map.set(e.workflowId, (list = []));
    list.push(e);
  }
  return map;
}

/**
 * The workflows `ids` with their recorded effects, each already checked
 * against the status model and the effect rules of {@link runEffectViolations}:
 * what a multi-process case then checks is only its own outcome.
 */
export async function checkedWorkflows(
  db: Pick<ProcessDatabase, 'store' | 'effects'>,
  ids: readonly string[],
): Promise<{ stored: StoredWorkflow; effects: EffectRecord[] }[]> {
  const stored = await readAllStored(db.store, ids);
  const byWorkflow = effectsByWorkflow(await db.effects());
  return stored.map((s) => {
    const effects = byWorkflow.get(s.workflow.id) ?? [];
    expect(violations(s, processCompensable), s.workflow.id).toEqual([]);
    expect(runEffectViolations(s, effects), s.workflow.id).toEqual([]);
    return { stored: s, effects };
  });
}

// ---------------------------------------------------------------- effect checks

/** Expects one effect row for each of `steps` steps in all (of all the workflows), and none twice. */
export function expectOneEffectPerStep(effects: readonly EffectRecord[], steps: number): void {
  const perStep = new Map<string, number>();
  for (const e of effects) perStep.set(`${e.workflowId}/${e.stepName}`, (perStep.get(`${e.workflowId}/${e.stepName}`) ?? 0) + 1);
  expect([...perStep.values()].filter((n) => n !== 1)).toEqual([]);
  expect(perStep.size).toBe(steps);
}

/** Attempts a step was claimed for, from its history: `pending -> running` rows and lease reclaims. */
export function attemptsStarted(stored: StoredWorkflow, stepName: string): number {
  return stored.history.filter(
    (h) => h.stepName === stepName && ((h.kind === 'step' && h.from === 'pending' && h.to === 'running') || (h.kind === 'note' && h.action === 'lease_reclaimed')),
  ).length;
}

/** The attempt whose result a completed step stored (every `run` here returns `{ attempt }`). */
export function completedAttempt(step: StepRecord): number | null {
  const output = step.output as { attempt?: unknown } | null;
  return output && typeof output.attempt === 'number' ? output.attempt : null;
}

const HAS_COMPLETED: readonly string[] = ['completed', 'compensating', 'compensated', 'compensation_failed'];

/**
 * What the `run` effects of one workflow say against its stored state:
 * - no attempt of a step ran twice (one effect row per attempt), and every row
 *   carries the step's idempotency key `<workflowId>:<stepName>`;
 * - no effect has an attempt the history never started;
 * - a completed step stored the result of an attempt that ran exactly once,
 *   and no attempt after it ran: a stored result is never run again.
 */
export function runEffectViolations(stored: StoredWorkflow, effects: readonly EffectRecord[]): string[] {
  const out: string[] = [];
  const id = stored.workflow.id;
  for (const s of stored.steps) {
    const at = `${id}/${s.name}`;
    const runs = effects.filter((e) => e.kind === 'run' && e.stepName === s.name);
    const seen = new Map<number, number>();
    for (const e of runs) seen.set(e.attempt, (seen.get(e.attempt) ?? 0) + 1);
    for (const [attempt, n] of seen) if (n > 1) out.push(`${at}: attempt ${attempt} ran ${n} times`);
    for (const e of runs) {
      if (e.idempotencyKey !== `${id}:${s.name}`) out.push(`${at}: effect #${e.id} has idempotency key ${e.idempotencyKey}`);
    }
    const started = attemptsStarted(stored, s.name);
    for (const attempt of seen.keys()) if (attempt < 1 || attempt > started) out.push(`${at}: attempt ${attempt} ran, but the history started ${started}`);
    if (HAS_COMPLETED.includes(s.status)) {
      // A poll step stores its poll's output; its run attempt is the step's attempt count.
      const done = completedAttempt(s) ?? (s.status === 'completed' ? s.attempts : null);
      if (done === null) {
        out.push(`${at}: completed without the output of an attempt`);
        continue;
      }
      if ((seen.get(done) ?? 0) !== 1) out.push(`${at}: completed with attempt ${done}, which ran ${seen.get(done) ?? 0} times`);
      const later = runs.filter((e) => e.attempt > done);
      if (later.length > 0) out.push(`${at}: ran again after attempt ${done} was stored (attempts ${later.map((e) => e.attempt).join(', ')})`);
    }
  }
  return out;
}

/**
 * What the `compensate` effects of one rolled-back workflow say:
 * - compensations ran in reverse completion order, one step after the other
 *   (a step's runs are contiguous), and none before the last forward run;
 * - no attempt ran twice; a recorded compensation never ran again (no attempt
 *   after the recorded one), and the recorded attempt ran exactly once.
 */
export function compensationEffectViolations(stored: StoredWorkflow, effects: readonly EffectRecord[], compensable: Compensable): string[] {
  const out: string[] = [];
  const id = stored.workflow.id;
  const comps = effects.filter((e) => e.kind === 'compensate').sort((a, b) => a.id - b.id);
  const runs = effects.filter((e) => e.kind === 'run');
  const firstComp = comps[0];
  if (firstComp) {
    const lateRuns = runs.filter((e) => e.id > firstComp.id);
    if (lateRuns.length > 0) out.push(`${id}: went forward during the rollback (${lateRuns.map((e) => `${e.stepName}#${e.attempt}`).join(', ')})`);
  }
  const order: string[] = [];
  for (const e of comps) if (order[order.length - 1] !== e.stepName) order.push(e.stepName);
  if (new Set(order).size !== order.length) out.push(`${id}: compensations interleaved: ${order.join(' ')}`);
  const undoable = compensable(stored.workflow.type);
  const expected = stored.steps
    .filter((s) => s.completionSeq !== null && undoable.has(s.name))
    .sort((a, b) => (b.completionSeq ?? 0) - (a.completionSeq ?? 0))
    .map((s) => s.name);
  const expectedPrefix = expected.slice(0, order.length);
  if (order.join(' ') !== expectedPrefix.join(' ')) out.push(`${id}: compensations ran as ${order.join(' ')}, reverse completion order is ${expected.join(' ')}`);
  if (stored.workflow.status === 'rolled_back' && order.join(' ') !== expected.join(' ')) {
    out.push(`${id}: rolled back after compensating ${order.join(' ')}, expected ${expected.join(' ')}`);
  }
  for (const s of stored.steps) {
    const mine = comps.filter((e) => e.stepName === s.name);
    const seen = new Map<number, number>();
    for (const e of mine) seen.set(e.attempt, (seen.get(e.attempt) ?? 0) + 1);
    for (const [attempt, n] of seen) if (n > 1) out.push(`${id}/${s.name}: compensation attempt ${attempt} ran ${n} times`);
    for (const e of mine) {
      if (e.idempotencyKey !== `${id}:${s.name}:compensate`) out.push(`${id}/${s.name}: compensation effect #${e.id} has key ${e.idempotencyKey}`);
    }
    if (s.status === 'compensated') {
      if ((seen.get(s.attempts) ?? 0) !== 1) out.push(`${id}/${s.name}: compensated by attempt ${s.attempts}, which ran ${seen.get(s.attempts) ?? 0} times`);
      const later = mine.filter((e) => e.attempt > s.attempts);
      if (later.length > 0) out.push(`${id}/${s.name}: compensated again after attempt ${s.attempts} was recorded`);
    }
    const recorded = stored.history.filter((h) => h.kind === 'step' && h.stepName === s.name && h.to === 'compensated').length;
    if (recorded > 1) out.push(`${id}/${s.name}: compensation recorded ${recorded} times`);
  }
  return out;
}
