/**
 * The raw baselines, measured in the same run as sagaline: how many
 * single-row UPDATE transactions per second the machine's Postgres and SQLite
 * commit, from Node, with nothing else in the way. Each UPDATE runs on its own
 * (autocommit), so each is one transaction and one durable commit.
 */
import { setImmediate as yieldToEventLoop } from 'node:timers/promises';
import pg from 'pg';
import { cpuBetween, readCpu, type CpuReading } from './cpu.js';
import { Latencies, type LatencySummary } from './stats.js';
import { openSqliteFile } from './sqlite.js';

/** A measured commit rate. */
export interface BaselineResult {
  connections: number;
  /** Committed UPDATEs per second (all connections together). */
  commitsPerSec: number;
  commits: number;
  seconds: number;
  /** Latency of one UPDATE, as seen by its connection. */
  latency: LatencySummary;
  /**
   * CPU milliseconds per commit: this (Node) process, and the Postgres server;
   * and the share of the machine's CPU time that was idle meanwhile.
   */
  cpu: { nodeMsPerCommit: number; postgresMsPerCommit: number | null; machineIdle: number | null };
}

function cpuPerCommit(before: CpuReading, after: CpuReading, commits: number): BaselineResult['cpu'] {
  const used = cpuBetween(before, after);
  return {
    nodeMsPerCommit: used.nodeMs / commits,
    postgresMsPerCommit: used.postgresMs === null ? null : used.postgresMs / commits,
    machineIdle: used.machineIdle,
  };
}

const WARMUP_MS = 300;

/** Single-row UPDATEs on Postgres, each connection on its own row (no lock waits), prepared, autocommit. */
export async function postgresUpdateRate(url: string, connections: number, seconds: number, serverPid: number | null): Promise<BaselineResult> {
  const clients = Array.from({ length: connections }, () => new pg.Client({ connectionString: url }));
  for (const c of clients) c.on('error', () => undefined);
  try {
    await Promise.all(clients.map((c) => c.connect()));
    const setup = clients[0]!;
    await setup.query('create table if not exists bench_counter (id integer primary key, n bigint not null)');
    await setup.query('insert into bench_counter (id, n) select g, 0 from generate_series(1, $1::integer) g on conflict (id) do nothing', [
      connections,
    ]);
    const latencies = new Latencies();
    const bump = (client: pg.Client, id: number) => client.query({ name: 'bench_bump', text: 'update bench_counter set n = n + 1 where id = $1', values: [id] });
    const loop = async (client: pg.Client, id: number, until: number, record: boolean): Promise<number> => {
      let n = 0;
      while (performance.now() < until) {
        const t0 = performance.now();
        await bump(client, id);
        if (record) latencies.add(performance.now() - t0);
        n++;
      }
      return n;
    };
    const warmUntil = performance.now() + WARMUP_MS;
    await Promise.all(clients.map((c, i) => loop(c, i + 1, warmUntil, false)));
    const cpuBefore = readCpu(serverPid);
    const start = performance.now();
    const until = start + seconds * 1000;
    const counts = await Promise.all(clients.map((c, i) => loop(c, i + 1, until, true)));
    const elapsed = (performance.now() - start) / 1000;
    const commits = counts.reduce((a, b) => a + b, 0);
    const cpu = cpuPerCommit(cpuBefore, readCpu(serverPid), commits);
    return { connections, commitsPerSec: commits / elapsed, commits, seconds: elapsed, latency: latencies.summary(), cpu };
  } finally {
    await Promise.all(clients.map((c) => c.end().catch(() => undefined)));
  }
}

/** Single-row UPDATEs on a SQLite file (WAL, `synchronous = FULL`), one connection, prepared, autocommit. */
export async function sqliteUpdateRate(file: string, seconds: number): Promise<BaselineResult> {
  const db = openSqliteFile(file);
  try {
    db.exec('create table if not exists bench_counter (id integer primary key, n integer not null); insert or ignore into bench_counter values (1, 0)');
    const bump = db.prepare('update bench_counter set n = n + 1 where id = ?');
    const latencies = new Latencies();
    // better-sqlite3 is synchronous: run in slices so that signals (Ctrl-C) are still handled.
    const loop = async (until: number, record: boolean): Promise<number> => {
      let n = 0;
      while (performance.now() < until) {
        const sliceEnd = Math.min(until, performance.now() + 50);
        while (performance.now() < sliceEnd) {
          const t0 = performance.now();
          bump.run(1);
          if (record) latencies.add(performance.now() - t0);
          n++;
        }
        await yieldToEventLoop();
      }
      return n;
    };
    await loop(performance.now() + WARMUP_MS, false);
    const cpuBefore = readCpu(null);
    const start = performance.now();
    const commits = await loop(start + seconds * 1000, true);
    const elapsed = (performance.now() - start) / 1000;
    const cpu = cpuPerCommit(cpuBefore, readCpu(null), commits);
    return { connections: 1, commitsPerSec: commits / elapsed, commits, seconds: elapsed, latency: latencies.summary(), cpu };
  } finally {
    db.close();
  }
}
