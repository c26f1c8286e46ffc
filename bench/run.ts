/**
 * `npm run bench`: the raw commit rates of the machine's Postgres and SQLite,
 * then sagaline on the memory, SQLite and Postgres stores (the SQL ones also
 * with group commit; and several engine processes on Postgres), all in one
 * run, printed as one table. See `npm run bench -- --help`, and the README's
 * Performance section.
 *
 * Progress goes to stderr, the table to stdout.
 */
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { postgresUpdateRate, sqliteUpdateRate } from './baselines.js';
import { installCleanupHandlers, onCleanup, removeTempDir, runCleanups, shuttingDown, trackTempDir } from './cleanup.js';
import { loggedProblems } from './logger.js';
import { runMultiProcess } from './multi-process.js';
import { parseBenchOptions, USAGE, UsageError, type BenchOptions } from './options.js';
import { PostgresStartError, startBenchPostgres, type BenchPostgres } from './postgres.js';
import { REFERENCE_LABELS, runReference } from './reference-loop.js';
import { codeRevision, describeMachine, formatTable } from './report.js';
import type { BaselineSet, BenchBaselines, BenchResults, FailedRun, ReferenceMode, ReferenceRun, SagalineRun, StoreKind } from './results.js';
import { applyBaselines, runInProcess, warmUpCode, type RunContext } from './runs.js';
import { DATABASES, databaseOf, kindLabel } from './store-kinds.js';

/** The bench was interrupted (a signal, or the overall timeout): cleanup is under way. */
class Interrupted extends Error {
  override readonly name = 'Interrupted';
}

function progress(line: string): void {
  process.stderr.write(`bench: ${line}\n`);
}

async function main(options: BenchOptions): Promise<number> {
  const loadAverage = loadavg();
  const tempDir = mkdtempSync(join(tmpdir(), 'sagaline-bench-'));
  trackTempDir(tempDir);
  onCleanup('bench temp dir', () => removeTempDir(tempDir));

  let postgres: BenchPostgres | null = null;
  if (options.stores.some((kind) => databaseOf(kind) === 'postgres')) {
    progress('starting Postgres…');
    postgres = await startBenchPostgres();
    progress(`Postgres ${postgres.version} up (fsync=${postgres.settings['fsync'] ?? '?'})`);
  }

  if (postgres) await postgres.createDatabase('bench_raw');
  /** The raw baselines of one database, measured right before and right after its sagaline runs. */
  const measureBaselines = async (store: 'sqlite' | 'postgres', when: 'before' | 'after', into: BaselineSet): Promise<void> => {
    const seconds = options.baselineSeconds;
    if (store === 'postgres' && postgres) {
      const url = postgres.url('bench_raw');
      progress(`raw baseline (${when}): Postgres single-row UPDATE, 1 connection, ${seconds} s`);
      into.postgres1 = await postgresUpdateRate(url, 1, seconds, postgres.pid);
      progress(`raw baseline (${when}): Postgres single-row UPDATE, 8 connections, ${seconds} s`);
      into.postgres8 = await postgresUpdateRate(url, 8, seconds, postgres.pid);
    }
    if (store === 'sqlite') {
      progress(`raw baseline (${when}): SQLite single-row UPDATE (WAL, synchronous=FULL), ${seconds} s`);
      into.sqlite = await sqliteUpdateRate(join(tempDir, 'raw.db'), seconds);
    }
  };
  const baselines: BenchBaselines = { atEnd: {} };

  const ctx: RunContext = { options, tempDir, postgres, baselines };
  const runs: SagalineRun[] = [];
  const failures: FailedRun[] = [];
  const references: ReferenceRun[] = [];
  /**
   * Runs one measured run and reports it: a failure is recorded (the bench goes on with the next run),
   * unless the bench is shutting down.
   */
  const attempt = async <R extends SagalineRun | ReferenceRun>(failed: Omit<FailedRun, 'error'>, run: () => Promise<R>, keep: (result: R) => void): Promise<void> => {
    if (shuttingDown()) throw new Interrupted();
    const { clients } = failed;
    progress(`${failed.reference ? 'reference' : 'sagaline'}: ${failed.label}, ${clients} client${clients === 1 ? '' : 's'}, ${options.workflows} workflows…`);
    const problemsBefore = loggedProblems();
    try {
      const result = await run();
      keep(result);
      const problems = loggedProblems() - problemsBefore;
      progress(
        `  ${Math.round(result.workflowsPerSec)} workflows/s, ${Math.round(result.stepsPerSec)} steps/s, p50 ${result.latency.p50Ms.toFixed(2)} ms` +
          (result.transactions ? `, ${result.transactions.writePerWorkflow.toFixed(1)} write tx/workflow` : '') +
          (problems > 0 ? ` (the engine logged ${problems} warnings or errors)` : ''),
      );
    } catch (err) {
      if (shuttingDown()) throw new Interrupted();
      const message = err instanceof Error ? err.message : String(err);
      progress(`  FAILED: ${message}`);
      failures.push({ ...failed, error: message });
    }
  };
  const attemptEngine = (label: string, store: StoreKind, processes: number, clients: number, run: () => Promise<SagalineRun>) =>
    attempt({ label, store, processes, clients }, run, (result) => runs.push(result));
  const attemptReference = (mode: ReferenceMode, clients: number) =>
    attempt({ reference: true, label: REFERENCE_LABELS[mode], store: 'postgres', processes: 1, clients }, () => runReference(ctx, mode, clients), (result) =>
      references.push(result),
    );
  if (options.engineWarmupWorkflows > 0) {
    progress(`warming up: ${options.engineWarmupWorkflows} workflows per client count on a memory store and on each SQL store kind…`);
    await warmUpCode(ctx);
  }
  // One database at a time, its baselines around all of its runs (with and without group commit).
  for (const database of DATABASES) {
    const kinds = options.stores.filter((kind) => databaseOf(kind) === database);
    if (kinds.length === 0) continue;
    if (database !== 'memory') await measureBaselines(database, 'before', baselines);
    if (database === 'postgres' && options.reference) {
      for (const mode of ['each', 'batched', 'statements'] as const) for (const clients of options.clients) await attemptReference(mode, clients);
    }
    for (const kind of kinds) {
      for (const clients of options.clients) await attemptEngine(kindLabel(kind), kind, 1, clients, () => runInProcess(ctx, kind, clients));
      if ((kind === 'postgres' || kind === 'postgres-group') && options.processes > 0) {
        // At every client count: 1 client shows the wake-up across processes (a workflow's first step is
        // claimed in another process), the most clients the scale-out.
        const label = `${kindLabel(kind)}, ${options.processes} processes`;
        for (const clients of options.clients) {
          await attemptEngine(label, kind, options.processes, clients, () => runMultiProcess(ctx, kind, options.processes, clients));
        }
      }
    }
    if (shuttingDown()) throw new Interrupted();
    if (database !== 'memory') await measureBaselines(database, 'after', baselines.atEnd!);
  }
  applyBaselines(runs, baselines);
  applyBaselines(references, baselines);

  const results: BenchResults = {
    date: new Date().toISOString(),
    revision: codeRevision(),
    machine: describeMachine(tempDir, postgres, loadAverage),
    options: {
      workflows: options.workflows,
      clients: options.clients,
      processes: options.processes,
      stores: options.stores,
      quick: options.quick,
      baselineSeconds: options.baselineSeconds,
      warmupWorkflows: options.warmupWorkflows,
      engineWarmupWorkflows: options.engineWarmupWorkflows,
      concurrency: options.concurrency,
      poolSize: options.poolSize,
      wakeups: options.wakeups,
      pollMs: options.pollMs,
    },
    baselines,
    runs,
    references,
    failures,
  };
  process.stdout.write(`\n${formatTable(results)}\n`);
  for (const f of failures) process.stdout.write(`FAILED ${f.label} (${f.clients} clients): ${f.error}\n`);
  if (options.json) {
    const file = resolve(options.json);
    mkdirSync(dirname(file), { recursive: true });
    writeFileSync(file, `${JSON.stringify(results, null, 2)}\n`);
    progress(`figures written to ${file}`);
  }
  return failures.length > 0 ? 1 : 0;
}

let options: BenchOptions | 'help';
try {
  options = parseBenchOptions(process.argv.slice(2));
} catch (err) {
  if (!(err instanceof UsageError)) throw err;
  process.stderr.write(`bench: ${err.message}\n\n${USAGE}\n`);
  process.exit(2);
}
if (options === 'help') {
  process.stdout.write(`${USAGE}\n`);
  process.exit(0);
}

installCleanupHandlers();
const limitSeconds = options.totalTimeoutSeconds;
const watchdog = setTimeout(() => {
  progress(`the bench did not finish within ${limitSeconds} s (--timeout); stopping`);
  void runCleanups().finally(() => process.exit(1));
}, limitSeconds * 1000);
watchdog.unref();

let code = 1;
try {
  code = await main(options);
} catch (err) {
  if (shuttingDown() || err instanceof Interrupted) {
    // A signal handler (or the watchdog) is cleaning up; it exits with its own code once done.
    await runCleanups();
    process.exit(130);
  }
  if (err instanceof PostgresStartError) progress(err.message);
  else progress(`failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
  code = 1;
} finally {
  await runCleanups();
}
process.exit(code);
