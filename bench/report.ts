/** The machine description and the printed table. */
import { spawnSync } from 'node:child_process';
import { statfsSync } from 'node:fs';
import { availableParallelism, cpus, loadavg, release, totalmem, type } from 'node:os';
import Database from 'better-sqlite3';
import type { BaselineResult } from './baselines.js';
import type { BenchResults, MachineInfo, SagalineRun } from './results.js';
import { usesGroupCommit } from './store-kinds.js';
import { STEPS_PER_WORKFLOW } from './workload.js';
import { DEFAULT_MAX_BATCH, DEFAULT_MAX_BATCH_POSTGRES, DEFAULT_MAX_CONCURRENT_BATCHES } from '../src/stores/kysely/kysely-group-commit.js';

/** Group commit's defaults on Postgres, as the legend states them. */
const GROUP_COMMIT_DEFAULTS = `batches of at most ${DEFAULT_MAX_BATCH_POSTGRES} on Postgres, up to ${DEFAULT_MAX_CONCURRENT_BATCHES} at once`;

const FILESYSTEMS: Record<number, string> = {
  0xef53: 'ext4',
  0x58465342: 'xfs',
  0x9123683e: 'btrfs',
  0x01021994: 'tmpfs (no real fsync)',
  0x794c7630: 'overlayfs',
  0x2fc12fc1: 'zfs',
};

export function describeMachine(
  tempDir: string,
  postgres: { version: string; settings: Record<string, string> } | null,
  loadAverage: number[],
): MachineInfo {
  const memory = new Database(':memory:');
  const sqlite = String(memory.prepare('select sqlite_version() as v').pluck().get());
  memory.close();
  let filesystem: string | null = null;
  try {
    const fsType = statfsSync(tempDir).type;
    filesystem = FILESYSTEMS[fsType] ?? `0x${fsType.toString(16)}`;
  } catch {
    filesystem = null;
  }
  return {
    nproc: availableParallelism(),
    cpu: cpus()[0]?.model.trim() ?? 'unknown',
    memoryGiB: Math.round(totalmem() / 2 ** 30),
    os: `${type()} ${release()}`,
    node: process.version,
    postgres: postgres?.version ?? null,
    postgresSettings: postgres?.settings ?? null,
    sqlite,
    filesystem,
    loadAverage,
    loadAverageAtEnd: loadavg(),
  };
}

/** The measured code's revision (`git describe --always --dirty`), or null outside a git checkout. */
export function codeRevision(): string | null {
  const root = new URL('..', import.meta.url).pathname;
  const git = spawnSync('git', ['describe', '--always', '--dirty', '--abbrev=12'], { cwd: root, encoding: 'utf8' });
  return git.status === 0 ? git.stdout.trim() || null : null;
}

/** The one table the bench prints (Markdown, so it can go into the README as is), with its legend. */
export function formatTable(results: BenchResults): string {
  const header = [
    'run',
    'procs',
    'clients',
    'workflows/s',
    'steps/s',
    'p50 ms',
    'p99 ms',
    'tx/wf (all)',
    'write tx/wf',
    'stmts/step',
    'CPU ms/wf node+pg',
    'CPU idle',
    '% of raw commits/s',
  ];
  const rows: string[][] = [];
  const drifted: string[] = [];
  const baselineRow = (name: string, b: BaselineResult | undefined, end: BaselineResult | undefined): void => {
    if (!b) return;
    const cpu = `${fixed(b.cpu.nodeMsPerCommit, 2)}${b.cpu.postgresMsPerCommit !== null ? `+${fixed(b.cpu.postgresMsPerCommit, 2)}` : ''} per commit`;
    const rate = end ? `${int(b.commitsPerSec)} → ${int(end.commitsPerSec)} commits/s` : `${int(b.commitsPerSec)} commits/s`;
    if (end && Math.max(b.commitsPerSec, end.commitsPerSec) > 1.25 * Math.min(b.commitsPerSec, end.commitsPerSec)) drifted.push(name.replace(/^raw: /, ''));
    rows.push([name, '1', String(b.connections), '—', rate, ms(b.latency.p50Ms), ms(b.latency.p99Ms), '1', '1', '1', cpu, idle(b.cpu.machineIdle), '100%']);
  };
  const end = results.baselines.atEnd;
  baselineRow('raw: Postgres single-row UPDATE, 1 connection', results.baselines.postgres1, end?.postgres1);
  baselineRow('raw: Postgres single-row UPDATE, 8 connections', results.baselines.postgres8, end?.postgres8);
  baselineRow('raw: SQLite single-row UPDATE (WAL, synchronous=FULL)', results.baselines.sqlite, end?.sqlite);
  for (const r of results.references ?? []) {
    rows.push([
      `reference: ${r.label}`,
      '1',
      String(r.clients),
      int(r.workflowsPerSec),
      int(r.stepsPerSec),
      ms(r.latency.p50Ms),
      ms(r.latency.p99Ms),
      fixed(r.transactions.perWorkflow),
      fixed(r.transactions.writePerWorkflow),
      fixed(r.statementsPerWorkflow / STEPS_PER_WORKFLOW),
      cpuPerWorkflow(r.cpu),
      idle(r.cpu.machineIdle),
      r.baseline ? pct(r.baseline.stepsPerSecRatio) : '—',
    ]);
  }
  for (const r of results.runs) {
    rows.push([
      `sagaline: ${r.label}`,
      String(r.processes),
      String(r.clients),
      int(r.workflowsPerSec),
      int(r.stepsPerSec),
      ms(r.latency.p50Ms),
      ms(r.latency.p99Ms),
      r.transactions ? fixed(r.transactions.perWorkflow) : '—',
      r.transactions ? fixed(r.transactions.writePerWorkflow) : '—',
      r.statements ? fixed(r.statements.perStep) : '—',
      cpuPerWorkflow(r.cpu),
      idle(r.cpu.machineIdle),
      r.baseline ? pct(r.baseline.stepsPerSecRatio) : '—',
    ]);
  }
  for (const f of results.failures) {
    rows.push([`${f.reference ? 'reference' : 'sagaline'}: ${f.label}`, String(f.processes), String(f.clients), 'FAILED', '', '', '', '', '', '', '', '', '']);
  }
  const right = header.map((_, i) => i > 0);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]): string =>
    `| ${cells.map((c, i) => (right[i] ? c.padStart(widths[i]!) : c.padEnd(widths[i]!))).join(' | ')} |`;
  const rule = `|${widths.map((w, i) => (right[i] ? `${'-'.repeat(w + 1)}:` : `${'-'.repeat(w + 2)}`)).join('|')}|`;
  const m = results.machine;
  const o = results.options;
  const single = results.runs.find((r) => r.processes === 1);
  const multi = results.runs.find((r) => r.processes > 1);
  const legend = [
    `${o.workflows} workflows of 5 trivial steps per run (after ${o.warmupWorkflows} warm-up workflows on the same store and pool` +
      `${o.engineWarmupWorkflows ? `; before the first run, ${o.engineWarmupWorkflows} on a memory store and on each SQL store kind, on databases of their own, per client count` : ''}` +
      `${o.engineWarmupWorkflows && multi ? `; before each multi-process run, ${o.engineWarmupWorkflows} through its engine processes, on pools of their own` : ''}); closed-loop clients; latency from start() to workflow:completed.`,
    `Machine: ${m.nproc} cores (${m.cpu}), ${m.memoryGiB} GiB, ${m.os}, ${m.filesystem ?? 'unknown fs'}, load average ${m.loadAverage[0]?.toFixed(1) ?? '?'} at start and ${m.loadAverageAtEnd[0]?.toFixed(1) ?? '?'} at end; Node ${m.node}; PostgreSQL ${m.postgres ?? '—'}` +
      `${m.postgresSettings ? ` (fsync=${m.postgresSettings['fsync']}, synchronous_commit=${m.postgresSettings['synchronous_commit']})` : ''}; SQLite ${m.sqlite}; ${results.date}` +
      `${results.revision ? `; code ${results.revision}` : ''}.`,
    `Engine: concurrency ${o.concurrency} per process; Postgres pool of ${o.poolSize} per process; idle poll ${single?.settings.idlePollMs ?? '—'} ms in one process` +
      `${multi ? `, ${multi.settings.idlePollMs} ms in the ${multi.processes}-process runs (${multi.settings.notify ? 'the fallback: their workers learn of new workflows from LISTEN/NOTIFY, the store\'s notifications option' : 'their workers learn of new workflows by polling'})` : ''}.`,
    results.runs.some((r) => r.settings.groupCommit) || results.failures.some((f) => usesGroupCommit(f.store))
      ? `+ group commit: the Kysely store with groupCommit: true (${GROUP_COMMIT_DEFAULTS}; ${DEFAULT_MAX_BATCH} on SQLite, one at a time): concurrent transact calls on different workflows share one database transaction and one commit; the same workload, counters and baselines.`
      : '',
    (results.references ?? []).length > 0
      ? `reference: a minimal hand-written loop on the same server and a pool of ${o.poolSize}, no engine, the yardstick of the goals (bench/reference-loop.ts): each workflow is 7 upserts into one table (its start, each step's result, its end), in order; one upsert per transition commits each on its own, many workflows per commit sends the upserts waiting at a moment as one statement (group commit's batching: ${GROUP_COMMIT_DEFAULTS}); sagaline's statements, no engine: the statements the Kysely store sent for one workflow the engine ran (its create and its compare-and-set writes), recorded and sent again by the same loop for every workflow, each its own commit: what the store's SQL alone reaches.`
      : '',
    'Raw rates were measured right before and right after the sagaline runs on the same database (before → after); % of raw commits/s divides steps/s by their mean (Postgres: 8 connections; SQLite: one connection).',
    ...(drifted.length > 0
      ? [`WARNING: the raw rate moved by more than 25% during the run (${drifted.join('; ')}): the machine's load changed, so the ratios are unreliable.`]
      : []),
    'tx/wf (all): committed transactions per workflow, read-only ones included, over the warm-up and measured workflows together (Postgres: pg_stat_database.xact_commit; SQLite: counted on the connection).',
    'write tx/wf: transactions that wrote (Postgres: assigned a transaction id; SQLite: committed to the WAL). stmts/step: SQL statements per step (round trips on Postgres), start() included.',
    `CPU ms/wf: CPU time per workflow of the Node processes (SQLite runs in them) + the Postgres server; ${m.nproc} cores give at most ${int(m.nproc * 1000)} ms of CPU per second.`,
    `CPU idle: the share of the machine's CPU time (all cores, from /proc/stat) that was idle during the run: well above zero, the run waited on something other than the CPU (a single thread, the disk, a lock).`,
  ].filter((l) => l !== '');
  return [line(header), rule, ...rows.map(line), '', ...legend].join('\n');
}

function int(n: number): string {
  return Number.isFinite(n) ? Math.round(n).toLocaleString('en-US') : '—';
}

function fixed(n: number, digits = 1): string {
  return Number.isFinite(n) ? n.toFixed(digits) : '—';
}

function ms(n: number): string {
  if (!Number.isFinite(n)) return '—';
  return n >= 100 ? n.toFixed(0) : n >= 10 ? n.toFixed(1) : n.toFixed(2);
}

function pct(ratio: number): string {
  if (!Number.isFinite(ratio)) return '—';
  const p = ratio * 100;
  return `${p >= 10 ? p.toFixed(0) : p.toFixed(1)}%`;
}

/** CPU per workflow, `node+pg` (Node alone where the run has no Postgres server). */
function cpuPerWorkflow(cpu: SagalineRun['cpu']): string {
  return `${fixed(cpu.nodeMsPerWorkflow, 2)}${cpu.postgresMsPerWorkflow !== null ? `+${fixed(cpu.postgresMsPerWorkflow, 2)}` : ''}`;
}

/** A share of idle CPU time as a whole percentage, or a dash where it was not measured. */
function idle(share: number | null): string {
  return share === null ? '—' : `${Math.round(share * 100)}%`;
}
