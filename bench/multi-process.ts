/**
 * The multi-process Postgres run: P engine processes (`bench/pg-worker.ts`)
 * share one database; this process starts the workflows (through an engine
 * without a worker) and measures, learning of completions over IPC. The
 * workers learn of new workflows from the stores' `LISTEN/NOTIFY` wake-ups
 * (`--wakeups notify`, the default: every store sends, each worker listens on
 * a client of its own) with a poll every `--poll-ms` as the fallback, or by
 * polling alone (`--wakeups poll`); they wake themselves when they finish a
 * step. With the `postgres-group` kind, every process's store has
 * `groupCommit: true` (each batches its own `transact` calls).
 */
import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { createEngine } from '../src/index.js';
import { KyselyWorkflowStore } from '../src/kysely.js';
import { onCleanup } from './cleanup.js';
import { benchLogger } from './logger.js';
import { openPostgres } from './postgres.js';
import { assembleRun, cpuReading, cpuSince, WARMUP_FIRST_NUMBER, type CpuUse, type EngineSettings, type RunContext } from './runs.js';
import type { SagalineRun } from './results.js';
import { diffCounts, StatementCounter, sumCounts, type StatementCounts } from './statement-counter.js';
import { kindLabel, kindSlug, usesGroupCommit } from './store-kinds.js';
import { createTarget } from './targets.js';
import { BENCH_WORKFLOW, benchStartOptions, benchWorkflow, CompletionTracker, runClosedLoop, STEPS_PER_WORKFLOW, type ClosedLoopResult } from './workload.js';
import type { ParentMessage, WorkerMessage } from './worker-protocol.js';

const SPAWN_TIMEOUT_MS = 60_000;
const REPLY_TIMEOUT_MS = 30_000;

/** One forked engine process and the messages it sends. */
class WorkerProcess {
  private readonly child: ChildProcess;
  private readonly waiting = new Map<WorkerMessage['type'], { resolve: (m: WorkerMessage) => void; reject: (e: Error) => void }>();
  private exitError: Error | null = null;
  /** Gets completions and failures while a pass runs. */
  tracker: CompletionTracker | null = null;
  readonly kill: () => Promise<void>;

  constructor(readonly index: number) {
    // Built (`npm run bench`): the worker is the built file next to this one; from the sources, it runs under tsx.
    const built = !import.meta.url.endsWith('.ts');
    const script = fileURLToPath(new URL(built ? './pg-worker.js' : './pg-worker.ts', import.meta.url));
    const execArgv = built || process.execArgv.some((a) => a.includes('tsx')) ? process.execArgv : [...process.execArgv, '--import', 'tsx'];
    this.child = fork(script, [], { execArgv, stdio: ['ignore', 'inherit', 'inherit', 'ipc'], serialization: 'json' });
    this.child.on('message', (raw: unknown) => this.onMessage(raw as WorkerMessage));
    const exited = new Promise<void>((resolve) => this.child.once('exit', () => resolve()));
    this.child.once('exit', (code, signal) => {
      this.exitError = new Error(`engine process ${index} exited (code ${String(code)}, signal ${String(signal)})`);
      for (const w of this.waiting.values()) w.reject(this.exitError);
      this.waiting.clear();
      this.tracker?.abort(this.exitError);
    });
    this.kill = onCleanup(`engine process ${index}`, async () => {
      if (this.child.exitCode !== null || this.child.signalCode !== null) return;
      this.child.kill('SIGTERM');
      const timer = setTimeout(() => this.child.kill('SIGKILL'), 5_000);
      await exited;
      clearTimeout(timer);
    });
  }

  send(message: ParentMessage): void {
    if (this.exitError) throw this.exitError;
    this.child.send(message);
  }

  /** The next message of this type. */
  next<T extends WorkerMessage['type']>(type: T, timeoutMs: number): Promise<Extract<WorkerMessage, { type: T }>> {
    if (this.exitError) return Promise.reject(this.exitError);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(type);
        reject(new Error(`engine process ${this.index} did not send "${type}" within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiting.set(type, {
        resolve: (m) => {
          clearTimeout(timer);
          resolve(m as Extract<WorkerMessage, { type: T }>);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
    });
  }

  private onMessage(message: WorkerMessage): void {
    if (message.type === 'completed') {
      this.tracker?.completed(message.workflowId);
      return;
    }
    if (message.type === 'failed') {
      this.tracker?.failed(message.workflowId, message.reason);
      return;
    }
    if (message.type === 'error') {
      const error = new Error(`engine process ${this.index}: ${message.message}`);
      for (const w of this.waiting.values()) w.reject(error);
      this.waiting.clear();
      this.tracker?.abort(error);
      return;
    }
    const waiter = this.waiting.get(message.type);
    if (waiter) {
      this.waiting.delete(message.type);
      waiter.resolve(message);
    }
  }
}

export async function runMultiProcess(ctx: RunContext, kind: 'postgres' | 'postgres-group', processes: number, clients: number): Promise<SagalineRun> {
  const { options } = ctx;
  const target = await createTarget(kind, `bench_${kindSlug(kind)}_${processes}p_${clients}c`, {
    tempDir: ctx.tempDir,
    postgres: ctx.postgres,
    poolSize: options.poolSize,
  });
  const url = target.url!;
  const groupCommit = usesGroupCommit(kind);
  const notify = options.wakeups === 'notify';
  const settings: EngineSettings = { concurrency: options.concurrency, idlePollMs: options.pollMs, poolSize: options.poolSize, groupCommit, notify };
  const workers = Array.from({ length: processes }, (_, i) => new WorkerProcess(i + 1));
  try {
    await Promise.all(workers.map((w) => w.next('spawned', SPAWN_TIMEOUT_MS)));

    /**
     * One pass: workers start, this process starts `warmup` workflows and then
     * `count` more and waits for them, workers stop. Statements and CPU time
     * are counted over the `count` workflows.
     */
    const pass = async (
      warmup: number,
      count: number,
      firstNumber: number,
    ): Promise<{ loop: ClosedLoopResult; statements: StatementCounts; cpu: CpuUse }> => {
      const tracker = new CompletionTracker();
      const ready = workers.map((w) => w.next('ready', REPLY_TIMEOUT_MS));
      for (const w of workers) {
        w.tracker = tracker;
        w.send({ type: 'start', url, poolSize: options.poolSize, concurrency: options.concurrency, idlePollMs: options.pollMs, groupCommit, notify });
      }
      await Promise.all(ready);
      const counter = new StatementCounter();
      const { db, close } = openPostgres(url, options.poolSize, counter.log);
      // This engine only starts workflows: it never runs a worker, so its store sends wake-ups without listening.
      const store = new KyselyWorkflowStore({ db, groupCommit, ...(notify ? { notifications: {} } : {}) });
      const starter = createEngine({ store, workflows: [benchWorkflow], logger: benchLogger });
      const loopOf = (workflows: number, first: number) =>
        runClosedLoop({
          workflows,
          clients,
          tracker,
          timeoutMs: options.runTimeoutSeconds * 1000,
          firstNumber: first,
          start: async (n) => (await starter.start(BENCH_WORKFLOW, benchStartOptions(n))).id,
        });
      let loop: ClosedLoopResult;
      let ownCpu: CpuUse;
      let ownStatements: StatementCounts;
      try {
        if (warmup > 0) await loopOf(warmup, WARMUP_FIRST_NUMBER);
        const marked = workers.map((w) => w.next('marked', REPLY_TIMEOUT_MS));
        for (const w of workers) w.send({ type: 'mark' });
        await Promise.all(marked);
        const statementsBefore = counter.snapshot();
        const cpuBefore = cpuReading(ctx);
        loop = await loopOf(count, firstNumber);
        ownCpu = cpuSince(ctx, cpuBefore, 0);
        ownStatements = diffCounts(counter.snapshot(), statementsBefore);
      } finally {
        await close();
      }
      const stopped = workers.map((w) => w.next('stopped', REPLY_TIMEOUT_MS));
      for (const w of workers) w.send({ type: 'stop' });
      const replies = await Promise.all(stopped);
      // The workers' CPU runs from their mark to their stop, a little more than the measured loop.
      const cpu = { ...ownCpu, nodeMs: ownCpu.nodeMs + replies.reduce((sum, r) => sum + r.cpuMs, 0) };
      for (const w of workers) w.tracker = null;
      return { loop, statements: sumCounts([ownStatements, ...replies.map((r) => r.statements)]), cpu };
    };

    // The engine processes are new: before the run, a pass on pools of their own compiles their
    // code (in one process, the warm-up before the first run does; a worker process measured
    // without it spent over a quarter of its CPU time in the JIT compiler).
    if (options.engineWarmupWorkflows > 0) await pass(0, options.engineWarmupWorkflows, WARMUP_FIRST_NUMBER);
    // As in one process: the run's warm-up and its measured workflows share the pools, so that the
    // measured ones find their connections open; Postgres' counters cover both, read with no session open.
    const before = await target.readCounters(null);
    const measured = await pass(options.warmupWorkflows, options.workflows, 0);
    const after = await target.readCounters(null);
    await target.verify(options.engineWarmupWorkflows + options.warmupWorkflows + options.workflows);
    return assembleRun({
      label: `${kindLabel(kind)}, ${processes} processes`,
      cpu: measured.cpu,
      store: kind,
      processes,
      loop: measured.loop,
      transactions: target.transactions(before, after, options.warmupWorkflows + options.workflows, STEPS_PER_WORKFLOW),
      statements: measured.statements,
      settings,
      baselines: ctx.baselines,
    });
  } finally {
    await Promise.all(workers.map((w) => w.kill()));
  }
}
