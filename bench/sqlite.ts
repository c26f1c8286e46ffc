/**
 * The bench's SQLite: a file database in WAL mode with `synchronous = FULL`
 * (every commit is fsynced), opened through a thin wrapper that counts
 * transactions as the connection runs them.
 *
 * SQLite keeps no commit statistics a second connection could read
 * (`PRAGMA data_version` only tells another connection that something
 * changed), so the count comes from the connection itself: after each
 * statement, better-sqlite3's `inTransaction` says whether a transaction is
 * open. A statement run outside a transaction is a transaction of its own; a
 * transaction ending with `COMMIT` counts once. It is a write transaction when
 * a statement in it changed rows (`changes` of a run, or rows returned by an
 * `… RETURNING`): SQLite appends a commit to the WAL, and fsyncs it at
 * `synchronous = FULL`, only when pages changed, so a claim that found nothing
 * due commits nothing.
 */
import Database from 'better-sqlite3';
import type { SqliteDatabase, SqliteStatement } from 'kysely';
import { cachedStatements } from '../src/kysely.js';

/** Transactions committed on the connection. */
export interface SqliteTransactionCounts {
  /** Every committed transaction, read-only ones (autocommit SELECTs, BEGIN … COMMIT without writes) included. */
  commits: number;
  /** Committed transactions that changed rows: one WAL commit (and fsync) each. */
  writeCommits: number;
}

/** Opens `file` as the bench uses it: WAL, `synchronous = FULL`, a busy timeout, foreign keys on. */
export function openSqliteFile(file: string): Database.Database {
  const db = new Database(file, { timeout: 10_000 });
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = FULL');
  db.pragma('busy_timeout = 10000');
  db.pragma('foreign_keys = ON');
  const mode = String(db.pragma('journal_mode', { simple: true }));
  const sync = Number(db.pragma('synchronous', { simple: true }));
  if (mode !== 'wal' || sync !== 2) throw new Error(`SQLite ${file}: expected journal_mode=wal and synchronous=FULL (2), got ${mode} and ${sync}`);
  return db;
}

/** A better-sqlite3 connection for Kysely's `SqliteDialect` that counts committed transactions. */
export class CountingSqlite implements SqliteDatabase {
  private readonly counts: SqliteTransactionCounts = { commits: 0, writeCommits: 0 };
  /** Whether the open explicit transaction has changed rows. */
  private dirty = false;

  /** Statements through the store's recommended cache, as a host would open the database. */
  private readonly statements: ReturnType<typeof cachedStatements>;

  constructor(readonly raw: Database.Database) {
    this.statements = cachedStatements(raw);
  }

  prepare(sql: string): SqliteStatement {
    const stmt = this.statements.prepare(sql) as Database.Statement;
    const isCommit = /^\s*(commit|end)\b/i.test(sql);
    const writes = !stmt.readonly;
    return {
      get reader() {
        return stmt.reader;
      },
      all: (parameters) => this.track(isCommit, () => {
        const rows = stmt.all(...parameters);
        return { result: rows, changed: writes && rows.length > 0 };
      }),
      run: (parameters) => this.track(isCommit, () => {
        const result = stmt.run(...parameters);
        return { result, changed: writes && Number(result.changes) > 0 };
      }),
      iterate: (parameters) => this.track(isCommit, () => ({ result: stmt.iterate(...parameters), changed: writes })),
    };
  }

  close(): void {
    this.raw.close();
  }

  snapshot(): SqliteTransactionCounts {
    return { ...this.counts };
  }

  private track<T>(isCommit: boolean, run: () => { result: T; changed: boolean }): T {
    const before = this.raw.inTransaction;
    const { result, changed } = run();
    const after = this.raw.inTransaction;
    if (!before && !after) {
      // Autocommit: the statement was a transaction of its own.
      this.counts.commits++;
      if (changed) this.counts.writeCommits++;
    } else if (!before && after) {
      this.dirty = changed;
    } else if (before && !after) {
      if (isCommit) {
        this.counts.commits++;
        if (this.dirty) this.counts.writeCommits++;
      }
      this.dirty = false;
    } else if (changed) {
      this.dirty = true;
    }
    return result;
  }
}
