/**
 * Where a measured run stores its workflows: a fresh memory store, SQLite file
 * or Postgres database per run, opened once for the warm-up and again for the
 * measured pass, with the counters each one can provide. The `-group` kinds
 * open the same Kysely store with `groupCommit: true`; their transactions are
 * counted the same way.
 */
import { join } from 'node:path';
import { Kysely, SqliteDialect, sql } from 'kysely';
import type { WorkflowStore } from '../src/index.js';
import { KyselyWorkflowStore, migrateToLatest } from '../src/kysely.js';
import { MemoryWorkflowStore } from '../src/memory.js';
import { onCleanup } from './cleanup.js';
import { openPostgres, type BenchPostgres, type PgCounters } from './postgres.js';
import type { StoreKind, TransactionFigures } from './results.js';
import { cachedStatements } from '../src/kysely.js';
import { CountingSqlite, openSqliteFile, type SqliteTransactionCounts } from './sqlite.js';
import { StatementCounter, type StatementCounts } from './statement-counter.js';
import { databaseOf, usesGroupCommit } from './store-kinds.js';

/** A store opened for one pass. */
export interface OpenStore {
  store: WorkflowStore;
  /** Statements sent so far (SQL stores). */
  statements(): StatementCounts | null;
  /** Transactions committed so far by this connection (SQLite). */
  sqliteCounts?: () => SqliteTransactionCounts;
  close(): Promise<void>;
}

/** Raw transaction counts at one moment, to be subtracted. */
type CounterReading =
  | { kind: 'postgres'; commits: number; nextXid: number; walBytes: number }
  | { kind: 'sqlite'; counts: SqliteTransactionCounts }
  | null;

export interface Target {
  kind: StoreKind;
  /** Postgres: the database's connection URL. */
  url: string | null;
  open(): Promise<OpenStore>;
  /**
   * Reads the transaction counters. On Postgres this waits until no session
   * is connected to the database: call it when no pool of the run holds a
   * connection (a pool connects on its first query, and lets go when closed).
   */
  readCounters(open: OpenStore | null): Promise<CounterReading>;
  /** Committed transactions between two readings. */
  transactions(before: CounterReading, after: CounterReading, workflows: number, stepsPerWorkflow: number): TransactionFigures | null;
  /** Checks that the stored workflows all completed; returns how many there are. */
  verify(expected: number): Promise<number>;
}

export async function createTarget(kind: StoreKind, name: string, context: { tempDir: string; postgres: BenchPostgres | null; poolSize: number }): Promise<Target> {
  const database = databaseOf(kind);
  if (database === 'memory') return memoryTarget();
  if (database === 'sqlite') return sqliteTarget(kind, join(context.tempDir, `${name}.db`));
  if (!context.postgres) throw new Error('Postgres is not running');
  return postgresTarget(kind, context.postgres, name, context.poolSize);
}

function memoryTarget(): Target {
  return {
    kind: 'memory',
    url: null,
    async open() {
      return { store: new MemoryWorkflowStore(), statements: () => null, close: async () => {} };
    },
    async readCounters() {
      return null;
    },
    transactions() {
      return null;
    },
    async verify(expected) {
      return expected;
    },
  };
}

/** SQLite: each open() is a new connection on the same file; transactions are counted by the connection wrapper. */
async function sqliteTarget(kind: StoreKind, file: string): Promise<Target> {
  {
    const db = new Kysely<any>({ dialect: new SqliteDialect({ database: cachedStatements(openSqliteFile(file)) }) });
    try {
      await migrateToLatest(db);
    } finally {
      await db.destroy();
    }
  }
  const groupCommit = usesGroupCommit(kind);
  return {
    kind,
    url: null,
    async open() {
      const counting = new CountingSqlite(openSqliteFile(file));
      const counter = new StatementCounter();
      const db = new Kysely<any>({ dialect: new SqliteDialect({ database: counting }), log: counter.log });
      const close = onCleanup(`sqlite ${file}`, () => db.destroy());
      const store = new KyselyWorkflowStore({ db, groupCommit });
      // The store checks the database on first use; do it now, outside the measured pass.
      await store.check();
      return { store, statements: () => counter.snapshot(), sqliteCounts: () => counting.snapshot(), close };
    },
    async readCounters(current) {
      const counts = current?.sqliteCounts?.();
      return counts ? { kind: 'sqlite', counts } : null;
    },
    transactions(before, after, workflows, steps) {
      if (before?.kind !== 'sqlite' || after?.kind !== 'sqlite') return null;
      return figures(
        'better-sqlite3 connection (see bench/sqlite.ts)',
        after.counts.commits - before.counts.commits,
        after.counts.writeCommits - before.counts.writeCommits,
        workflows,
        steps,
      );
    },
    async verify(expected) {
      const db = new Kysely<any>({ dialect: new SqliteDialect({ database: cachedStatements(openSqliteFile(file)) }) });
      try {
        return await countCompleted(db, expected);
      } finally {
        await db.destroy();
      }
    },
  };
}

/** Postgres: a database of its own; transactions come from pg_stat_database and the xid counter. */
async function postgresTarget(kind: StoreKind, server: BenchPostgres, database: string, poolSize: number): Promise<Target> {
  await server.createDatabase(database);
  const url = server.url(database);
  {
    const { db, close } = openPostgres(url, 1);
    try {
      await migrateToLatest(db);
    } finally {
      await close();
    }
  }
  const groupCommit = usesGroupCommit(kind);
  return {
    kind,
    url,
    async open() {
      const counter = new StatementCounter();
      const { db, close } = openPostgres(url, poolSize, counter.log);
      return { store: new KyselyWorkflowStore({ db, groupCommit }), statements: () => counter.snapshot(), close };
    },
    async readCounters() {
      const c = await server.counters(database);
      return { kind: 'postgres', commits: c.commits, nextXid: c.nextXid, walBytes: c.walBytes };
    },
    transactions(before, after, workflows, steps) {
      if (before?.kind !== 'postgres' || after?.kind !== 'postgres') return null;
      return postgresTransactions(before, after, workflows, steps);
    },
    async verify(expected) {
      const { db, close } = openPostgres(url, 1);
      try {
        return await countCompleted(db, expected);
      } finally {
        await close();
      }
    },
  };
}

/** Transactions and WAL between two readings of a Postgres database's counters ({@link BenchPostgres.counters}). */
export function postgresTransactions(before: PgCounters, after: PgCounters, workflows: number, stepsPerWorkflow: number): TransactionFigures {
  return {
    ...figures(
      'pg_stat_database.xact_commit (all) and the transaction-id counter (write)',
      after.commits - before.commits,
      after.nextXid - before.nextXid,
      workflows,
      stepsPerWorkflow,
    ),
    walBytesPerWorkflow: (after.walBytes - before.walBytes) / workflows,
  };
}

function figures(source: string, commits: number, writeCommits: number, workflows: number, stepsPerWorkflow: number): TransactionFigures {
  return {
    source,
    commits,
    writeCommits,
    perWorkflow: commits / workflows,
    writePerWorkflow: writeCommits / workflows,
    writePerStep: writeCommits / (workflows * stepsPerWorkflow),
  };
}

async function countCompleted(db: Kysely<any>, expected: number): Promise<number> {
  const rows = (await sql<{ status: string; n: number | string }>`select status, count(*) as n from sagaline_workflows group by status`.execute(db)).rows;
  const byStatus = Object.fromEntries(rows.map((r) => [r.status, Number(r.n)]));
  const total = Object.values(byStatus).reduce((a, b) => a + b, 0);
  if (total !== expected || byStatus['completed'] !== expected) {
    throw new Error(`expected ${expected} completed workflows in the database, found ${JSON.stringify(byStatus)}`);
  }
  return total;
}
