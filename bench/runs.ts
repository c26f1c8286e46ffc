/**
 * The sagaline runs: one engine in this process on a memory, SQLite or
 * Postgres store (the SQL ones with or without group commit), a warm-up pass
 * and then the measured pass, both on one store and pool.
 */
import { createEngine, type WorkflowStore } from '../src/index.js';
import { onCleanup } from './cleanup.js';
import { cpuBetween, readCpu, type CpuReading, type CpuUse } from './cpu.js';
import { benchLogger } from './logger.js';
import type { BenchOptions } from './options.js';
import type { BenchPostgres } from './postgres.js';
import type { BenchBaselines, ReferenceRun, SagalineRun, StoreKind, TransactionFigures } from './results.js';
import { diffCounts, type StatementCounts } from './statement-counter.js';
import { databaseOf, kindLabel, kindSlug, usesGroupCommit } from './store-kinds.js';
import { createTarget } from './targets.js';
import { BENCH_WORKFLOW, benchStartOptions, benchWorkflow, CompletionTracker, runClosedLoop, STEPS_PER_WORKFLOW, type ClosedLoopResult } from './workload.js';

export interface RunContext {
  options: BenchOptions;
  tempDir: string;
  postgres: BenchPostgres | null;
  baselines: BenchBaselines;
}

/** Engine settings of a run. */
export interface EngineSettings {
  concurrency: number;
  idlePollMs: number;
  poolSize: number | null;
  /** The Kysely store's `groupCommit`. */
  groupCommit: boolean;
  /** The Kysely store's `notifications` (multi-process runs: `LISTEN/NOTIFY` wake-ups). Absent in results written before it existed. */
  notify?: boolean;
}

/** The engine's default idle poll: a single process wakes its own worker when it starts or finishes work. */
export const IN_PROCESS_IDLE_POLL_MS = 1000;

/** Warm-up workflows are numbered from here, so that they never collide with measured ones. */
export const WARMUP_FIRST_NUMBER = 10_000_000;

/**
 * Runs the engine, unmeasured, at each client count before the first measured
 * run: on a memory store, then on each SQL store kind of the run, on a
 * database (or file) of its own. The first runs would otherwise also measure
 * the code being compiled: at 1 client, after 200 warm-up workflows, the
 * memory store measured 12,900 and 14,200 steps/s in two runs, against 30,500
 * and 18,100 after 2,000; on Postgres, the Node process took 4.5 ms of CPU per
 * workflow over its first 500 workflows, 2.0 over the next 500, and 1.5–1.7
 * from the third 500 on.
 */
export async function warmUpCode(ctx: RunContext): Promise<void> {
  const { options } = ctx;
  if (options.engineWarmupWorkflows <= 0) return;
  const kinds = ['memory' as const, ...options.stores.filter((kind) => kind !== 'memory' && (databaseOf(kind) !== 'postgres' || ctx.postgres))];
  for (const kind of kinds) {
    const target = await createTarget(kind, `warmup_${kindSlug(kind)}`, { tempDir: ctx.tempDir, postgres: ctx.postgres, poolSize: options.poolSize });
    const open = await target.open();
    try {
      for (const clients of options.clients) {
        await driveEngine(open.store, settingsOf(kind, options), options.engineWarmupWorkflows, clients, WARMUP_FIRST_NUMBER, options.runTimeoutSeconds * 1000);
      }
    } finally {
      await open.close();
    }
  }
}

/** The engine settings of a run on `kind` in this process. */
function settingsOf(kind: StoreKind, options: BenchOptions): EngineSettings {
  return {
    concurrency: options.concurrency,
    idlePollMs: IN_PROCESS_IDLE_POLL_MS,
    poolSize: databaseOf(kind) === 'postgres' ? options.poolSize : null,
    groupCommit: usesGroupCommit(kind),
  };
}

export async function runInProcess(ctx: RunContext, kind: StoreKind, clients: number): Promise<SagalineRun> {
  const { options } = ctx;
  const target = await createTarget(kind, `bench_${kindSlug(kind)}_${clients}c`, { tempDir: ctx.tempDir, postgres: ctx.postgres, poolSize: options.poolSize });
  const settings = settingsOf(kind, options);
  // The warm-up runs on the store (and pool) the measured pass uses, so that the pass starts with its
  // connections open and its statements prepared, as in a long-lived host: on a new pool, the first
  // workflows at 32 clients waited 0.3-0.45 s while its connections opened and prepared their statements.
  // Postgres' counters can be read only with no session open, so transactions are counted over the
  // warm-up and the measured pass together, read before the pool's first query and after it closed.
  const open = await target.open();
  const before = await target.readCounters(open);
  let loop: ClosedLoopResult;
  let statementsBefore: StatementCounts | null;
  let statementsAfter: StatementCounts | null;
  let cpu: CpuUse;
  try {
    if (options.warmupWorkflows > 0) {
      await driveEngine(open.store, settings, options.warmupWorkflows, clients, WARMUP_FIRST_NUMBER, options.runTimeoutSeconds * 1000);
    }
    statementsBefore = open.statements();
    const cpuBefore = cpuReading(ctx);
    loop = await driveEngine(open.store, settings, options.workflows, clients, 0, options.runTimeoutSeconds * 1000);
    // Before the pool closes: a server process that has exited may no longer show its CPU time.
    cpu = cpuSince(ctx, cpuBefore, 0);
    statementsAfter = open.statements();
  } finally {
    await open.close();
  }
  const after = await target.readCounters(open);
  await target.verify(options.workflows + options.warmupWorkflows);
  return assembleRun({
    cpu,
    label: kindLabel(kind),
    store: kind,
    processes: 1,
    loop,
    transactions: target.transactions(before, after, options.workflows + options.warmupWorkflows, STEPS_PER_WORKFLOW),
    statements: statementsBefore && statementsAfter ? diffCounts(statementsAfter, statementsBefore) : null,
    settings,
    baselines: ctx.baselines,
  });
}

/** Runs the closed loop against an engine with a running worker on `store`. */
async function driveEngine(
  store: WorkflowStore,
  settings: EngineSettings,
  workflows: number,
  clients: number,
  firstNumber: number,
  timeoutMs: number,
): Promise<ClosedLoopResult> {
  const engine = createEngine({
    store,
    workflows: [benchWorkflow],
    concurrency: settings.concurrency,
    idlePollMs: settings.idlePollMs,
    shutdownTimeoutMs: 5_000,
    logger: benchLogger,
  });
  const tracker = new CompletionTracker();
  engine.events.on('workflow:completed', (e) => tracker.completed(e.workflowId));
  engine.events.on('workflow:failed', (e) => tracker.failed(e.workflowId, `${e.error.code}: ${e.error.message}`));
  const stop = onCleanup('engine', async () => {
    tracker.abort(new Error('interrupted'));
    await engine.stop();
  });
  engine.startWorker();
  try {
    return await runClosedLoop({
      workflows,
      clients,
      tracker,
      timeoutMs,
      firstNumber,
      start: async (n) => (await engine.start(BENCH_WORKFLOW, benchStartOptions(n))).id,
    });
  } finally {
    await stop();
  }
}

/**
 * The raw baseline a store's steps/s are compared with (Postgres with 8
 * connections, or SQLite, with or without group commit): the mean of the
 * rates measured before and after the runs, or the first one until the second
 * exists.
 */
export function baselineFor(kind: StoreKind, baselines: BenchBaselines): { name: string; commitsPerSec: number } | null {
  const database = databaseOf(kind);
  const key = database === 'postgres' ? 'postgres8' : database === 'sqlite' ? 'sqlite' : null;
  if (key === null) return null;
  const first = baselines[key]?.commitsPerSec;
  if (first === undefined) return null;
  const last = baselines.atEnd?.[key]?.commitsPerSec;
  const name = database === 'postgres' ? 'postgres UPDATE, 8 connections' : 'sqlite UPDATE (WAL, synchronous=FULL)';
  return { name, commitsPerSec: last === undefined ? first : (first + last) / 2 };
}

/** Sets each run's ratio to its baseline (call once the end baselines are measured); the reference runs' is Postgres'. */
export function applyBaselines(runs: (SagalineRun | ReferenceRun)[], baselines: BenchBaselines): void {
  for (const run of runs) {
    const baseline = baselineFor('store' in run ? run.store : 'postgres', baselines);
    run.baseline = baseline ? { ...baseline, stepsPerSecRatio: run.stepsPerSec / baseline.commitsPerSec } : null;
  }
}

export type { CpuUse } from './cpu.js';

/** CPU times now: this process, the run's Postgres server if it runs, and the machine. */
export function cpuReading(ctx: RunContext): CpuReading {
  return readCpu(ctx.postgres?.pid ?? null);
}

/**
 * CPU used since `before`, plus `otherNodeMs` from other Node processes of the
 * run. Read it while the run's connections are still open: the CPU time of a
 * server process that has exited is not visible until Postgres reaps it.
 */
export function cpuSince(ctx: RunContext, before: CpuReading, otherNodeMs: number): CpuUse {
  const used = cpuBetween(before, cpuReading(ctx));
  return { ...used, nodeMs: used.nodeMs + otherNodeMs };
}

export function assembleRun(input: {
  label: string;
  cpu: CpuUse;
  store: StoreKind;
  processes: number;
  loop: ClosedLoopResult;
  transactions: TransactionFigures | null;
  statements: StatementCounts | null;
  settings: EngineSettings;
  baselines: BenchBaselines;
}): SagalineRun {
  const { loop, statements } = input;
  const baseline = baselineFor(input.store, input.baselines);
  const perWorkflow = (n: number): number => n / loop.workflows;
  return {
    label: input.label,
    store: input.store,
    processes: input.processes,
    clients: loop.clients,
    workflows: loop.workflows,
    seconds: loop.seconds,
    workflowsPerSec: loop.workflowsPerSec,
    stepsPerSec: loop.stepsPerSec,
    latency: loop.latency,
    transactions: input.transactions,
    statements: statements
      ? {
          total: statements.total,
          perWorkflow: perWorkflow(statements.total),
          perStep: statements.total / (loop.workflows * STEPS_PER_WORKFLOW),
          byKindPerWorkflow: Object.fromEntries(
            Object.entries(statements.byKind)
              .sort((a, b) => b[1] - a[1])
              .map(([kind, n]) => [kind, perWorkflow(n)]),
          ),
          msPerWorkflow: perWorkflow(statements.totalMs),
          msByKindPerWorkflow: Object.fromEntries(
            Object.entries(statements.msByKind)
              .sort((a, b) => b[1] - a[1])
              .map(([kind, ms]) => [kind, perWorkflow(ms)]),
          ),
        }
      : null,
    baseline: baseline ? { ...baseline, stepsPerSecRatio: loop.stepsPerSec / baseline.commitsPerSec } : null,
    cpu: cpuPerWorkflow(databaseOf(input.store) === 'postgres' ? input.cpu : { ...input.cpu, postgresMs: null }, loop.workflows),
    settings: input.settings,
  };
}

/** CPU time per workflow of `workflows` completed in a run (the server's null when it was not measured). */
export function cpuPerWorkflow(cpu: CpuUse, workflows: number): SagalineRun['cpu'] {
  return {
    nodeMsPerWorkflow: cpu.nodeMs / workflows,
    postgresMsPerWorkflow: cpu.postgresMs === null ? null : cpu.postgresMs / workflows,
    machineIdle: cpu.machineIdle,
  };
}
