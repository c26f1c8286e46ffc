/** Command-line options of `npm run bench`. */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import type { StoreKind } from './results.js';
import { isStoreKind, STORE_KINDS } from './store-kinds.js';

export interface BenchOptions {
  workflows: number;
  clients: number[];
  /** Engine processes of the multi-process Postgres runs (0: no such run). */
  processes: number;
  stores: StoreKind[];
  json: string | null;
  quick: boolean;
  baselineSeconds: number;
  warmupWorkflows: number;
  /** Workflows the engine runs on a memory store, at each client count, before the first measured run. */
  engineWarmupWorkflows: number;
  /** Engine `concurrency` (step handlers at once, per process). */
  concurrency: number;
  /** Postgres pool size per process. */
  poolSize: number;
  /**
   * How the multi-process run's workers learn of new workflows: `notify`, the Kysely store's
   * `notifications` (`LISTEN/NOTIFY`, with the poll as the fallback), or `poll` alone.
   */
  wakeups: 'notify' | 'poll';
  /** Engine `idlePollMs` of the multi-process run's workers. */
  pollMs: number;
  /** Whether to run the reference loop (`bench/reference-loop.ts`) on Postgres at each client count. */
  reference: boolean;
  runTimeoutSeconds: number;
  totalTimeoutSeconds: number;
}

export const USAGE = `Usage: npm run bench -- [options]

Measures the machine's raw commit rates (Postgres, SQLite) and sagaline on the
memory, SQLite and Postgres stores with a 5-step workflow, in one run, and
prints one table. The SQL stores run twice: as they are, and with the Kysely
store's groupCommit: true (the -group kinds). Starts its own Postgres server
(fsync on).

Options:
  --workflows N         workflows per measured run (default 2000; --quick: 200)
  --clients LIST        closed-loop clients, comma-separated (default 1,32)
  --processes N         engine processes of the multi-process Postgres runs (default 3; 0 skips them)
  --stores LIST         any of ${STORE_KINDS.join(',')} (default all)
  --json FILE           also write the figures to FILE
  --quick               a short pass to check that everything works (about a minute)
  --baseline-seconds S  duration of each raw baseline (default 5; --quick: 0.5)
  --warmup N            warm-up workflows before each measured run (default N/10, at most 200; --quick: 10)
  --engine-warmup N     workflows the engine first runs on a memory store and on each SQL store kind
                        (on databases of their own), at each client count, before any measured run,
                        so that the code runs compiled as in a long-lived host (default N)
  --concurrency N       engine concurrency per process (default 32)
  --pool N              Postgres pool size per process (default 10)
  --wakeups KIND        how the multi-process workers learn of new workflows: notify (LISTEN/NOTIFY,
                        the store's notifications option, polling as the fallback) or poll (default notify)
  --poll-ms N           idle poll interval of the multi-process workers (default 1000 with notify,
                        the engine's default; 20 with poll)
  --no-reference        skip the reference runs: a minimal hand-written loop on the same Postgres (7 upserts
                        per workflow, each its own commit, and batched), the yardstick of the goals, and
                        the same loop sending sagaline's own statements for a workflow, without the engine
  --run-timeout S       a measured run fails after S seconds (default 300; --quick: 60)
  --timeout S           the whole bench stops after S seconds (default 1800; --quick: 180)
  -h, --help            this text`;

export class UsageError extends Error {
  override readonly name = 'UsageError';
}

export function parseBenchOptions(argv: string[]): BenchOptions | 'help' {
  const parsed = parseCommandLine({
    args: argv,
    allowPositionals: false,
    options: {
      workflows: { type: 'string' },
      clients: { type: 'string' },
      processes: { type: 'string' },
      stores: { type: 'string' },
      json: { type: 'string' },
      quick: { type: 'boolean', default: false },
      'baseline-seconds': { type: 'string' },
      warmup: { type: 'string' },
      'engine-warmup': { type: 'string' },
      concurrency: { type: 'string' },
      pool: { type: 'string' },
      wakeups: { type: 'string' },
      'poll-ms': { type: 'string' },
      'no-reference': { type: 'boolean', default: false },
      'run-timeout': { type: 'string' },
      timeout: { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  const v = parsed.values;
  if (v.help) return 'help';
  const quick = v.quick === true;
  const workflows = intArg('--workflows', v.workflows, quick ? 200 : 2000, 1);
  const wakeups = v.wakeups ?? 'notify';
  if (wakeups !== 'notify' && wakeups !== 'poll') throw new UsageError(`--wakeups: expected notify or poll, got "${wakeups}"`);
  return {
    workflows,
    clients: clientList(v.clients),
    processes: intArg('--processes', v.processes, 3, 0),
    stores: storeList(v.stores, STORE_KINDS),
    json: v.json ?? null,
    quick,
    baselineSeconds: numArg('--baseline-seconds', v['baseline-seconds'], quick ? 0.5 : 5, 0.1),
    warmupWorkflows: intArg('--warmup', v.warmup, quick ? 10 : Math.min(200, Math.ceil(workflows / 10)), 0),
    engineWarmupWorkflows: intArg('--engine-warmup', v['engine-warmup'], workflows, 0),
    concurrency: intArg('--concurrency', v.concurrency, 32, 1),
    poolSize: intArg('--pool', v.pool, 10, 1),
    wakeups,
    pollMs: intArg('--poll-ms', v['poll-ms'], wakeups === 'notify' ? 1000 : 20, 1),
    reference: v['no-reference'] !== true,
    runTimeoutSeconds: numArg('--run-timeout', v['run-timeout'], quick ? 60 : 300, 1),
    totalTimeoutSeconds: numArg('--timeout', v.timeout, quick ? 180 : 1800, 1),
  };
}

/** The options of `npm run bench:compare`. */
export interface CompareOptions {
  /** The git revision to compare the working tree with. */
  revision: string;
  stores: StoreKind[];
  clients: number[];
  rounds: number;
  /** Workflows per round; null: 200 at 1 client, 1,000 at more. */
  workflows: number | null;
  /** Unmeasured workflows per build before the first round. */
  warmup: number;
}

export const COMPARE_USAGE = `Usage: npm run bench:compare -- <revision> [options]

Runs the library at <revision> (any git revision) and the working tree in one
process, in alternating rounds on the same machine, and prints, for each
store and client count, the medians of each and how many rounds each led.

Options:
  --stores LIST     any of ${STORE_KINDS.join(',')} (default postgres,postgres-group)
  --clients LIST    closed-loop clients, comma-separated (default 1,32)
  --rounds N        rounds per build (default 8)
  --workflows N     workflows per round (default 200 at 1 client, 1000 at more)
  --warmup N        unmeasured workflows per build before the first round (default 300)
  -h, --help        this text`;

export function parseCompareOptions(argv: string[]): CompareOptions | 'help' {
  const parsed = parseCommandLine({
    args: argv,
    allowPositionals: true,
    options: {
      stores: { type: 'string' },
      clients: { type: 'string' },
      rounds: { type: 'string' },
      workflows: { type: 'string' },
      warmup: { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  const v = parsed.values;
  if (v.help) return 'help';
  if (parsed.positionals.length !== 1) {
    throw new UsageError(`expected one revision to compare with, got ${parsed.positionals.length === 0 ? 'none' : parsed.positionals.join(' ')}`);
  }
  return {
    revision: parsed.positionals[0]!,
    stores: storeList(v.stores, ['postgres', 'postgres-group']),
    clients: clientList(v.clients),
    rounds: intArg('--rounds', v.rounds, 8, 1),
    workflows: v.workflows === undefined ? null : intArg('--workflows', v.workflows, 0, 1),
    warmup: intArg('--warmup', v.warmup, 300, 0),
  };
}

/** `--clients LIST`: distinct client counts of at least 1, in the order given (default 1,32). */
function clientList(value: string | undefined): number[] {
  return [...new Set((value ?? '1,32').split(',').map((c) => intArg('--clients', c.trim(), 0, 1)))];
}

/** `--stores LIST`: distinct store kinds, in the order given. */
function storeList(value: string | undefined, fallback: readonly StoreKind[]): StoreKind[] {
  if (value === undefined) return [...fallback];
  const stores: StoreKind[] = [];
  for (const s of value.split(',').map((name) => name.trim())) {
    if (!isStoreKind(s)) throw new UsageError(`--stores: unknown store "${s}" (any of ${STORE_KINDS.join(',')})`);
    if (!stores.includes(s)) stores.push(s);
  }
  return stores;
}

/** `parseArgs` in strict mode, its errors (an unknown option, a missing value) as {@link UsageError}s. */
function parseCommandLine<T extends Omit<ParseArgsConfig, 'strict'>>(config: T): ReturnType<typeof parseArgs<T & { strict: true }>> {
  try {
    return parseArgs({ ...config, strict: true });
  } catch (err) {
    throw new UsageError(err instanceof Error ? err.message : String(err));
  }
}

export function intArg(name: string, value: string | undefined, fallback: number, min: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isInteger(n) || n < min) throw new UsageError(`${name} must be an integer >= ${min}, got "${value}"`);
  return n;
}

function numArg(name: string, value: string | undefined, fallback: number, min: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isFinite(n) || n < min) throw new UsageError(`${name} must be a number >= ${min}, got "${value}"`);
  return n;
}
