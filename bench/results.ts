/** The figures one bench run produces (also the shape of the `--json` file). */
import type { BaselineResult } from './baselines.js';
import type { LatencySummary } from './stats.js';

/** A database the bench measures (the memory store counts as one). */
export type StoreDatabase = 'memory' | 'sqlite' | 'postgres';

/**
 * What a run measures: a database, and for SQLite and Postgres, the Kysely
 * store with `groupCommit: true` (`-group`). See `bench/store-kinds.ts`.
 */
export type StoreKind = StoreDatabase | 'sqlite-group' | 'postgres-group';

/** Committed transactions of a run, from the database's own statistics (Postgres) or the connection (SQLite). */
export interface TransactionFigures {
  /** Where the counts come from. */
  source: string;
  /** Every committed transaction, read-only ones included. */
  commits: number;
  /** Transactions that wrote (Postgres: were assigned a transaction id; SQLite: committed a write to the WAL). */
  writeCommits: number;
  perWorkflow: number;
  writePerWorkflow: number;
  writePerStep: number;
  /** Postgres: WAL written per workflow (server-wide insert position delta), in bytes. */
  walBytesPerWorkflow?: number;
}

/** Statements sent through Kysely (on Postgres, one round trip each). */
export interface StatementFigures {
  total: number;
  perWorkflow: number;
  perStep: number;
  /** Per workflow, by statement kind (see `statementKind`). */
  byKindPerWorkflow: Record<string, number>;
  /** Milliseconds per workflow the statements took as Kysely timed them (send to result), in total and by kind. */
  msPerWorkflow: number;
  msByKindPerWorkflow: Record<string, number>;
}

export interface SagalineRun {
  label: string;
  store: StoreKind;
  processes: number;
  clients: number;
  workflows: number;
  seconds: number;
  workflowsPerSec: number;
  stepsPerSec: number;
  latency: LatencySummary;
  transactions: TransactionFigures | null;
  statements: StatementFigures | null;
  /** The raw baseline this run is compared with, and steps/s as a fraction of it. */
  baseline: { name: string; commitsPerSec: number; stepsPerSecRatio: number } | null;
  /**
   * CPU milliseconds per workflow during the measured pass: every Node process
   * of the run (this one and engine workers; SQLite's work is in there too), and
   * the Postgres server (all its processes); and the share of the machine's
   * CPU time (all cores) that was idle meanwhile, where `/proc/stat` is readable.
   */
  cpu: { nodeMsPerWorkflow: number; postgresMsPerWorkflow: number | null; machineIdle: number | null };
  /** Engine, store and pool settings of the run. */
  settings: { concurrency: number; idlePollMs: number; poolSize: number | null; groupCommit: boolean; notify?: boolean };
}

/**
 * How the reference loop writes (see `bench/reference-loop.ts`): each upsert
 * its own commit, the upserts of concurrent workflows batched, or sagaline's
 * own statements for a workflow, recorded and sent again without the engine.
 */
export type ReferenceMode = 'each' | 'batched' | 'statements';

/**
 * A run of the reference loop: the same workload and counters as a sagaline
 * run on Postgres, with no engine; its baseline is the raw 8-connection rate.
 */
export interface ReferenceRun
  extends Pick<SagalineRun, 'label' | 'clients' | 'workflows' | 'seconds' | 'workflowsPerSec' | 'stepsPerSec' | 'latency' | 'baseline' | 'cpu'> {
  mode: ReferenceMode;
  transactions: TransactionFigures;
  /** Statements sent per workflow (each one round trip). */
  statementsPerWorkflow: number;
  poolSize: number;
}

/** A run that did not finish. */
export interface FailedRun {
  /** Set for a reference run (the label is then the reference's). */
  reference?: boolean;
  label: string;
  store: StoreKind;
  processes: number;
  clients: number;
  error: string;
}

/** The raw baselines of one measurement round. */
export interface BaselineSet {
  postgres1?: BaselineResult;
  postgres8?: BaselineResult;
  sqlite?: BaselineResult;
}

/**
 * The raw baselines of each database, measured right before its sagaline runs
 * and again right after them (the machine's load may change in between);
 * ratios use the mean of the two.
 */
export interface BenchBaselines extends BaselineSet {
  atEnd?: BaselineSet;
}

export interface MachineInfo {
  nproc: number;
  cpu: string;
  memoryGiB: number;
  os: string;
  node: string;
  postgres: string | null;
  postgresSettings: Record<string, string> | null;
  sqlite: string;
  filesystem: string | null;
  /** 1, 5 and 15-minute load averages when the bench started and when it ended (other work on the machine skews the figures). */
  loadAverage: number[];
  loadAverageAtEnd: number[];
}

export interface BenchResults {
  date: string;
  /** `git describe --always --dirty` of the measured code, when available. */
  revision: string | null;
  machine: MachineInfo;
  options: {
    workflows: number;
    clients: number[];
    processes: number;
    stores: StoreKind[];
    quick: boolean;
    baselineSeconds: number;
    warmupWorkflows: number;
    /** Absent in results written before it existed. */
    engineWarmupWorkflows?: number;
    concurrency: number;
    poolSize: number;
    /** Absent in results written before it existed (their multi-process runs polled). */
    wakeups?: 'notify' | 'poll';
    pollMs: number;
  };
  baselines: BenchBaselines;
  runs: SagalineRun[];
  /** The reference loop's runs, on Postgres. Absent in results written before it existed. */
  references?: ReferenceRun[];
  failures: FailedRun[];
}
