/**
 * `npm run bench:compare -- <revision>`: the library at a git revision against
 * the working tree, in one process, in alternating rounds.
 *
 * Two full bench runs minutes apart move by up to a quarter on a shared
 * machine, which hides most single changes. Here both builds run in the same
 * process, each on its own database of the same server (or its own SQLite
 * file), and take turns: round after round of the same number of workflows,
 * in the order old, new, new, old, … So both see the same machine, minute by
 * minute, and a change shows as the share of rounds in which it was ahead
 * and the ratio of the medians.
 *
 * The revision is checked out into a temporary git worktree and built with
 * tsup as the package is (as the bench builds the working tree), sharing this
 * checkout's node_modules.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Kysely, SqliteDialect } from 'kysely';
import * as current from '../src/index.js';
import * as currentKysely from '../src/kysely.js';
import * as currentMemory from '../src/memory.js';
import { installCleanupHandlers, onCleanup, removeTempDir, runCleanups, trackTempDir } from './cleanup.js';
import { ownCpuMs, processTreeCpuMs } from './cpu.js';
import { COMPARE_USAGE, parseCompareOptions, UsageError, type CompareOptions } from './options.js';
import { openPostgres, startBenchPostgres, type BenchPostgres } from './postgres.js';
import { openSqliteFile } from './sqlite.js';
import { IN_PROCESS_IDLE_POLL_MS } from './runs.js';
import { BENCH_WORKFLOW, benchStartOptions, CompletionTracker, defineBenchWorkflow, runClosedLoop, STEPS_PER_WORKFLOW } from './workload.js';
import type { StoreKind } from './results.js';
import { databaseOf, kindLabel, usesGroupCommit } from './store-kinds.js';

/** What the comparison needs of a build of the library. */
interface Library {
  createEngine: typeof current.createEngine;
  defineWorkflow: typeof current.defineWorkflow;
  step: typeof current.step;
  KyselyWorkflowStore: typeof currentKysely.KyselyWorkflowStore;
  migrateToLatest: typeof currentKysely.migrateToLatest;
  /** Absent in builds older than these wrappers: the driver is used as it is. */
  preparedStatements?: typeof currentKysely.preparedStatements;
  cachedStatements?: typeof currentKysely.cachedStatements;
  MemoryWorkflowStore: typeof currentMemory.MemoryWorkflowStore;
}

interface Round {
  workflowsPerSec: number;
  p50Ms: number;
  nodeMsPerWorkflow: number;
  postgresMsPerWorkflow: number | null;
}

/** One build, its engine and store, ready to run rounds. */
interface Side {
  name: 'old' | 'new';
  run(workflows: number): Promise<Round>;
  close(): Promise<void>;
  rounds: Round[];
}

function progress(line: string): void {
  process.stderr.write(`bench:compare: ${line}\n`);
}

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');

/** Checks out and builds `revision`; returns its modules. */
async function buildRevision(revision: string, tempDir: string): Promise<Library> {
  const dir = join(tempDir, 'old');
  execFileSync('git', ['worktree', 'add', '--detach', '--force', dir, revision], { cwd: root, stdio: 'pipe' });
  onCleanup('old worktree', () => {
    execFileSync('git', ['worktree', 'remove', '--force', dir], { cwd: root, stdio: 'pipe' });
  });
  symlinkSync(join(root, 'node_modules'), join(dir, 'node_modules'), 'dir');
  const outDir = join(dir, '.compare-dist');
  const { build } = await import('tsup');
  await build({
    entry: { index: join(dir, 'src/index.ts'), kysely: join(dir, 'src/kysely.ts'), memory: join(dir, 'src/memory.ts') },
    outDir,
    format: ['esm'],
    target: 'node20',
    platform: 'node',
    splitting: true,
    dts: false,
    silent: true,
    config: false,
    skipNodeModulesBundle: true,
  });
  const load = (name: string) => import(pathToFileURL(join(outDir, `${name}.js`)).href);
  const [index, kysely, memory] = await Promise.all([load('index'), load('kysely'), load('memory')]);
  return { ...index, ...kysely, ...memory } as Library;
}

async function openSide(
  name: 'old' | 'new',
  lib: Library,
  kind: StoreKind,
  clients: number,
  context: { tempDir: string; postgres: BenchPostgres | null },
): Promise<Side> {
  const database = databaseOf(kind);
  const label = `cmp_${name}_${kind.replace('-', '_')}_${clients}c`;
  let db: Kysely<any> | null = null;
  let destroy = async (): Promise<void> => {};
  if (database === 'postgres') {
    const server = context.postgres!;
    await server.createDatabase(label);
    ({ db, close: destroy } = openPostgres(server.url(label), 10, undefined, (pool) => (lib.preparedStatements ? lib.preparedStatements(pool) : pool)));
  } else if (database === 'sqlite') {
    const file = openSqliteFile(join(context.tempDir, `${label}.db`));
    const sqlite = new Kysely<any>({ dialect: new SqliteDialect({ database: lib.cachedStatements ? lib.cachedStatements(file) : file }) });
    db = sqlite;
    destroy = onCleanup(`${name} database`, () => sqlite.destroy());
  }
  if (db) await lib.migrateToLatest(db);
  const store = db ? new lib.KyselyWorkflowStore({ db, groupCommit: usesGroupCommit(kind) }) : new lib.MemoryWorkflowStore();
  const engine = lib.createEngine({
    store,
    workflows: [defineBenchWorkflow(lib.defineWorkflow, lib.step)],
    concurrency: 32,
    idlePollMs: IN_PROCESS_IDLE_POLL_MS,
    shutdownTimeoutMs: 5_000,
  });
  const tracker = new CompletionTracker();
  engine.events.on('workflow:completed', (e) => tracker.completed(e.workflowId));
  engine.events.on('workflow:failed', (e) => tracker.failed(e.workflowId, `${e.error.code}: ${e.error.message}`));
  const stop = onCleanup(`${name} engine`, async () => {
    tracker.abort(new Error('interrupted'));
    await engine.stop();
  });
  engine.startWorker();
  let next = 0;
  const pid = database === 'postgres' ? context.postgres!.pid : null;
  const side: Side = {
    name,
    rounds: [],
    async run(workflows) {
      const node0 = ownCpuMs();
      const pg0 = pid === null ? null : processTreeCpuMs(pid);
      const first = next;
      next += workflows;
      const loop = await runClosedLoop({
        workflows,
        clients,
        tracker,
        timeoutMs: 300_000,
        firstNumber: first,
        start: async (n) => (await engine.start(BENCH_WORKFLOW, benchStartOptions(n))).id,
      });
      const pg1 = pid === null ? null : processTreeCpuMs(pid);
      return {
        workflowsPerSec: workflows / loop.seconds,
        p50Ms: loop.latency.p50Ms,
        nodeMsPerWorkflow: (ownCpuMs() - node0) / workflows,
        postgresMsPerWorkflow: pg0 === null || pg1 === null ? null : (pg1 - pg0) / workflows,
      };
    },
    async close() {
      await stop();
      await destroy();
    },
  };
  return side;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

/** The summary lines of one store and client count. */
function summarize(kind: StoreKind, clients: number, old: Round[], now: Round[]): string {
  const lines = [`${kindLabel(kind)}, ${clients} client${clients === 1 ? '' : 's'}, ${old.length} rounds each:`];
  const metric = (label: string, pick: (r: Round) => number | null, higherIsBetter: boolean, digits: number) => {
    const a = old.map(pick);
    const b = now.map(pick);
    if (a.some((v) => v === null) || b.some((v) => v === null)) return;
    const x = a as number[];
    const y = b as number[];
    const ahead = y.filter((v, i) => (higherIsBetter ? v > x[i]! : v < x[i]!)).length;
    const ratio = median(y) / median(x);
    lines.push(
      `  ${label.padEnd(22)} old ${median(x).toFixed(digits).padStart(8)}  new ${median(y).toFixed(digits).padStart(8)}  (${ratio >= 1 ? '+' : ''}${((ratio - 1) * 100).toFixed(1)}%)` +
        `  new ahead in ${ahead} of ${y.length}  [old ${x.map((v) => v.toFixed(digits)).join(' ')} | new ${y.map((v) => v.toFixed(digits)).join(' ')}]`,
    );
  };
  metric('workflows/s', (r) => r.workflowsPerSec, true, 0);
  metric('p50 ms', (r) => r.p50Ms, false, 2);
  metric('Node CPU ms/wf', (r) => r.nodeMsPerWorkflow, false, 2);
  metric('Postgres CPU ms/wf', (r) => r.postgresMsPerWorkflow, false, 2);
  return lines.join('\n');
}

async function main(argv: string[]): Promise<number> {
  let options: CompareOptions | 'help';
  try {
    options = parseCompareOptions(argv);
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    process.stderr.write(`bench:compare: ${err.message}\n\n${COMPARE_USAGE}\n`);
    return 2;
  }
  if (options === 'help') {
    process.stdout.write(`${COMPARE_USAGE}\n`);
    return 0;
  }
  const { stores, clients: clientCounts, rounds, warmup, revision } = options;

  const tempDir = mkdtempSync(join(tmpdir(), 'sagaline-compare-'));
  trackTempDir(tempDir);
  onCleanup('compare temp dir', () => removeTempDir(tempDir));
  progress(`building ${revision}…`);
  const old = await buildRevision(revision, tempDir);
  const postgres = stores.some((s) => databaseOf(s) === 'postgres') ? await startBenchPostgres() : null;
  const summaries: string[] = [];
  for (const kind of stores) {
    for (const clients of clientCounts) {
      const workflows = options.workflows ?? (clients === 1 ? 200 : 1000);
      const sides = [
        await openSide('old', old, kind, clients, { tempDir, postgres }),
        await openSide('new', { ...current, ...currentKysely, ...currentMemory }, kind, clients, { tempDir, postgres }),
      ];
      try {
        for (const side of sides) if (warmup > 0) await side.run(warmup);
        for (let r = 0; r < rounds; r++) {
          // old, new, new, old, …: neither build always runs right after the other.
          for (const side of r % 2 === 0 ? sides : [...sides].reverse()) {
            progress(`${kindLabel(kind)}, ${clients} client${clients === 1 ? '' : 's'}, round ${r + 1}/${rounds}: ${side.name}`);
            side.rounds.push(await side.run(workflows));
          }
        }
      } finally {
        for (const side of sides) await side.close();
      }
      summaries.push(summarize(kind, clients, sides[0]!.rounds, sides[1]!.rounds));
    }
  }
  process.stdout.write(
    `\n${revision} (old) against the working tree (new); ${STEPS_PER_WORKFLOW}-step workflows, rounds alternating old/new in one process:\n\n${summaries.join('\n\n')}\n`,
  );
  return 0;
}

installCleanupHandlers();
let code = 1;
try {
  code = await main(process.argv.slice(2));
} catch (err) {
  progress(`failed: ${err instanceof Error ? err.message : String(err)}`);
} finally {
  await runCleanups();
}
process.exit(code);
