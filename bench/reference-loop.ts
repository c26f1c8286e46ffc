/**
 * The reference runs: a minimal hand-written loop on the same Postgres server,
 * with no engine, as the performance goal's yardstick. It runs the workload
 * sagaline runs (5 trivial steps, closed-loop clients, a pool of the same
 * size) and keeps only what makes a step durable: each workflow is 7 upserts
 * into one table (its start, each step's result, its end), in order, each
 * waiting for the one before.
 *
 * - `each`: every upsert is its own statement and commit.
 * - `batched`: the upserts waiting at a moment, one per workflow, go out as
 *   one statement and one commit, batched by the Kysely store's own group
 *   commit queue with its Postgres defaults (at most 16, up to 4 at once, a
 *   batch beside running ones only once 8 wait).
 *
 * - `statements`: not the loop's upserts but sagaline's own statements for a
 *   workflow (its create and its compare-and-set writes, on the store's
 *   tables), recorded from one workflow the engine runs on the run's
 *   database and sent again for every workflow by the same bare loop, one
 *   after another, each its own commit. Between the loop and the engine, it
 *   shows what the store's SQL alone reaches, without the engine's and the
 *   store's work in Node.
 *
 * On the machine the goal was set on, such a loop reached 81% of the raw
 * 8-connection commit rate in steps/s at 32 clients and a median of 2.3 ms
 * at 1 client, and 330% batched; measured in the same run, these rows show
 * what the same loop reaches on the machine at hand.
 */
import pg from 'pg';
import { newWorkflowId } from '../src/engine/ids.js';
import { createEngine } from '../src/index.js';
import { KyselyWorkflowStore, migrateToLatest } from '../src/kysely.js';
import { DEFAULT_MAX_BATCH_POSTGRES, DEFAULT_MAX_CONCURRENT_BATCHES, GroupCommitQueue, type BatchEntry } from '../src/stores/kysely/kysely-group-commit.js';
import { recordingKysely } from '../test/support/recording-pool.js';
import { onCleanup } from './cleanup.js';
import { benchLogger } from './logger.js';
import type { ReferenceMode, ReferenceRun } from './results.js';
import { cpuPerWorkflow, cpuSince, cpuReading, WARMUP_FIRST_NUMBER, type CpuUse, type RunContext } from './runs.js';
import { postgresTransactions } from './targets.js';
import { BENCH_WORKFLOW, benchStartOptions, benchWorkflow, CompletionTracker, runClosedLoop, STEPS_PER_WORKFLOW } from './workload.js';

const TABLE = 'bench_reference';

export const REFERENCE_LABELS: Record<ReferenceMode, string> = {
  each: 'minimal loop, one upsert per transition',
  batched: 'minimal loop, many workflows per commit',
  statements: "sagaline's statements, no engine",
};

type Write = [workflow: number, step: number, status: string, output: string | null];

const UPSERT_SET = `on conflict (workflow_id, step) do update
  set status = excluded.status, output = coalesce(excluded.output, ${TABLE}.output), updated_at = now()`;
const ONE = {
  name: 'bench_reference_one',
  text: `insert into ${TABLE} (workflow_id, step, status, output) values ($1, $2, $3, $4) ${UPSERT_SET}`,
};
const MANY = {
  name: 'bench_reference_many',
  text: `insert into ${TABLE} (workflow_id, step, status, output)
  select * from unnest($1::bigint[], $2::integer[], $3::text[], $4::jsonb[]) ${UPSERT_SET}`,
};

/** The steps' results: small objects, as the bench workflow's steps return. */
const STEPS: ((n: number) => unknown)[] = [
  (n) => ({ step: 1, n }),
  () => ({ step: 2, ok: true }),
  () => ({ step: 3, ok: true }),
  () => ({ step: 4, ok: true }),
  () => ({ step: 5, ok: true }),
];

/** A write waiting for its batch (keyed by workflow: a batch upserts each row at most once). */
interface QueuedWrite extends BatchEntry {
  write: Write;
}

/** Writes the loop's workflows in `each` or `batched` mode on one pool, counting the statements sent. */
class Writer {
  statements = 0;
  private readonly queue: GroupCommitQueue<QueuedWrite> | null;

  constructor(
    private readonly pool: pg.Pool,
    mode: ReferenceMode,
  ) {
    this.queue = mode === 'batched' ? new GroupCommitQueue(DEFAULT_MAX_BATCH_POSTGRES, (batch) => this.upsertMany(batch), DEFAULT_MAX_CONCURRENT_BATCHES) : null;
  }

  /** One workflow: its start, each step's result in order, its end. */
  async run(n: number): Promise<void> {
    await this.write([n, 0, 'running', JSON.stringify({ n })]);
    for (let i = 0; i < STEPS.length; i++) await this.write([n, i + 1, 'completed', JSON.stringify(STEPS[i]!(n))]);
    await this.write([n, 0, 'completed', null]);
  }

  private write(write: Write): Promise<void> {
    const queue = this.queue;
    if (!queue) {
      this.statements++;
      return this.pool.query({ ...ONE, values: write }).then(() => undefined);
    }
    return new Promise((resolve, reject) => queue.push({ key: String(write[0]), write, resolve: () => resolve(), reject }));
  }

  private async upsertMany(batch: QueuedWrite[]): Promise<void> {
    const columns: unknown[][] = [[], [], [], []];
    for (const { write } of batch) write.forEach((value, i) => columns[i]!.push(value));
    this.statements++;
    await this.pool.query({ ...MANY, values: columns });
    for (const entry of batch) entry.resolve(undefined);
  }
}

/** One statement of the recorded workflow: its text, its parameters and the row version it answered. */
interface RecordedStatement {
  text: string;
  values: unknown[];
  version: string;
}

/**
 * Migrates the database at `url`, runs two workflows through the engine and
 * the Kysely store on it (the first so that the store has checked its tables
 * and read the database's clock) and records the statements of the second:
 * those whose parameters name it, in order, each with the row version it
 * answered (`row_version` of the create, `version` of a compare-and-set write).
 */
async function recordWorkflow(url: string): Promise<{ workflowId: string; statements: RecordedStatement[] }> {
  const seen: { text: string; values: unknown[]; rows: Promise<Record<string, unknown>[]> }[] = [];
  // A statement that failed answered nothing (and a statement of the recorded workflow then fails the check below).
  const db = recordingKysely(url, ({ text, values }, result) => {
    if (result) seen.push({ text, values: [...(values ?? [])], rows: result.then((r) => r.rows as Record<string, unknown>[], () => []) });
  });
  const engine = createEngine({ store: new KyselyWorkflowStore({ db }), workflows: [benchWorkflow], concurrency: 1, logger: benchLogger });
  const tracker = new CompletionTracker();
  engine.events.on('workflow:completed', (e) => tracker.completed(e.workflowId));
  engine.events.on('workflow:failed', (e) => tracker.failed(e.workflowId, e.error.message));
  let workflowId = '';
  let from = 0;
  try {
    await migrateToLatest(db);
    engine.startWorker();
    for (let i = 0; i < 2; i++) {
      from = seen.length;
      workflowId = (await engine.start(BENCH_WORKFLOW, benchStartOptions(i))).id;
      await tracker.wait(workflowId);
    }
  } finally {
    await engine.stop();
    await db.destroy();
  }
  const statements: RecordedStatement[] = [];
  for (const s of seen.slice(from).filter((s) => s.values.includes(workflowId))) {
    const rows = await s.rows;
    const version = rows[0]?.['row_version'] ?? rows[0]?.['version'];
    if (rows.length !== 1 || typeof version !== 'string') throw new Error(`a recorded statement answered no row version: ${s.text.slice(0, 120)}`);
    statements.push({ text: s.text, values: s.values, version });
  }
  if (statements.length < 2 || !statements[0]!.text.includes('insert into')) {
    throw new Error(`expected the workflow's create and its writes, recorded ${statements.length} statements`);
  }
  return { workflowId, statements };
}

/**
 * Sends the recorded statements again for a new workflow: the recorded
 * workflow's id replaced by the new one, and each row version the recording
 * answered by the one the replay's statement answered.
 */
class Replay {
  statements = 0;
  private readonly versions = new Map<string, number>();

  constructor(
    private readonly pool: pg.Pool,
    private readonly recorded: { workflowId: string; statements: RecordedStatement[] },
  ) {
    recorded.statements.forEach((s, i) => this.versions.set(s.version, i));
  }

  /** One workflow, under a new id. */
  async run(): Promise<void> {
    const id = newWorkflowId(Date.now());
    const live: string[] = [];
    const { workflowId, statements } = this.recorded;
    for (let i = 0; i < statements.length; i++) {
      const values = statements[i]!.values.map((v) => {
        if (v === workflowId) return id;
        const from = typeof v === 'string' ? this.versions.get(v) : undefined;
        return from !== undefined && from < i ? live[from] : v;
      });
      this.statements++;
      const { rows } = await this.pool.query({ name: `bench_replay_${i}`, text: statements[i]!.text, values });
      const version = rows[0]?.['row_version'] ?? rows[0]?.['version'];
      if (rows.length !== 1 || typeof version !== 'string') throw new Error(`statement ${i + 1} of a replayed workflow wrote nothing`);
      live[i] = version;
    }
  }
}

/** A reference run on a database of its own: a warm-up pass and the measured pass on one pool, counted as the sagaline runs are. */
export async function runReference(ctx: RunContext, mode: ReferenceMode, clients: number): Promise<ReferenceRun> {
  const { options, postgres: server } = ctx;
  if (!server) throw new Error('Postgres is not running');
  const database = `bench_reference_${mode}_${clients}c`;
  await server.createDatabase(database);
  const url = server.url(database);
  let recorded: Awaited<ReturnType<typeof recordWorkflow>> | null = null;
  if (mode === 'statements') {
    recorded = await recordWorkflow(url);
  } else {
    const setup = new pg.Client({ connectionString: url });
    setup.on('error', () => undefined);
    await setup.connect();
    try {
      await setup.query(`create table ${TABLE} (
        workflow_id bigint not null, step integer not null, status text not null, output jsonb,
        updated_at timestamptz not null default now(), primary key (workflow_id, step))`);
    } finally {
      await setup.end();
    }
  }
  const before = await server.counters(database);
  const pool = new pg.Pool({ connectionString: url, max: options.poolSize });
  pool.on('error', () => undefined);
  const closePool = onCleanup(`postgres pool ${url}`, () => pool.end());
  const sender: Writer | Replay = recorded ? new Replay(pool, recorded) : new Writer(pool, mode);
  const tracker = new CompletionTracker();
  const loop = (workflows: number, firstNumber: number) =>
    runClosedLoop({
      workflows,
      clients,
      tracker,
      timeoutMs: options.runTimeoutSeconds * 1000,
      firstNumber,
      start: async (n) => {
        await sender.run(n);
        const id = String(n);
        tracker.completed(id);
        return id;
      },
    });
  let result: Awaited<ReturnType<typeof loop>>;
  let statements: number;
  let cpu: CpuUse;
  try {
    if (options.warmupWorkflows > 0) await loop(options.warmupWorkflows, WARMUP_FIRST_NUMBER);
    const statementsBefore = sender.statements;
    const cpuBefore = cpuReading(ctx);
    result = await loop(options.workflows, 0);
    cpu = cpuSince(ctx, cpuBefore, 0);
    statements = sender.statements - statementsBefore;
  } finally {
    await closePool();
  }
  const after = await server.counters(database);
  const counted = options.workflows + options.warmupWorkflows;
  // The statements mode's database also holds the two workflows the engine ran to record them.
  await (recorded ? verify(url, counted + 2, true) : verify(url, counted, false));
  return {
    label: REFERENCE_LABELS[mode],
    mode,
    clients,
    workflows: result.workflows,
    seconds: result.seconds,
    workflowsPerSec: result.workflowsPerSec,
    stepsPerSec: result.stepsPerSec,
    latency: result.latency,
    transactions: postgresTransactions(before, after, counted, STEPS_PER_WORKFLOW),
    statementsPerWorkflow: statements / result.workflows,
    baseline: null,
    cpu: cpuPerWorkflow(cpu, result.workflows),
    poolSize: options.poolSize,
  };
}

/**
 * Checks that every workflow of the run ended, each with its 5 step results:
 * the loop's rows, or (`replayed`) the store's tables.
 */
async function verify(url: string, expected: number, replayed: boolean): Promise<void> {
  const client = new pg.Client({ connectionString: url });
  client.on('error', () => undefined);
  await client.connect();
  try {
    const { rows } = await client.query<{ ended: string; steps: string }>(
      replayed
        ? `select (select count(*) from sagaline_workflows where status = 'completed')::text as ended,
             (select count(*) from sagaline_steps where status = 'completed')::text as steps`
        : `select count(*) filter (where step = 0 and status = 'completed')::text as ended,
             count(*) filter (where step > 0 and status = 'completed')::text as steps
           from ${TABLE}`,
    );
    const ended = Number(rows[0]?.ended ?? 0);
    const steps = Number(rows[0]?.steps ?? 0);
    if (ended !== expected || steps !== expected * STEPS_PER_WORKFLOW) {
      throw new Error(`expected ${expected} ended workflows and ${expected * STEPS_PER_WORKFLOW} step results, found ${ended} and ${steps}`);
    }
  } finally {
    await client.end();
  }
}
