import type { Kysely } from 'kysely';
import type { Clock } from '../../core/clock.js';

/** The SQL dialects the Kysely store supports. */
export type KyselyStoreDialect = 'postgres' | 'sqlite';

/** Where the tables live; shared by the store and {@link migrateToLatest}. */
export interface KyselyTableOptions {
  /**
   * The SQL dialect. Detected from the Kysely adapter when omitted
   * (`PostgresAdapter` or `SqliteAdapter`, or a subclass).
   */
  dialect?: KyselyStoreDialect;
  /**
   * Prepended to every table, index and migration-table name. Letters, digits
   * and underscores, at most 24 characters.
   *
   * @default 'sagaline_'
   */
  tablePrefix?: string;
  /**
   * Postgres schema holding the tables (created by the migration if missing).
   * Without it, unqualified names resolve through the connection's `search_path`.
   * Not supported on SQLite.
   */
  schema?: string;
}

/** Options of {@link KyselyWorkflowStore}. */
export interface KyselyWorkflowStoreConfig extends KyselyTableOptions {
  /**
   * The host's Kysely instance, or a `Transaction` of it. The store never
   * opens or closes connections: the host owns the pool and destroys it.
   *
   * Given a `Kysely` instance, every multi-statement operation runs in its own
   * transaction. Given a `Transaction`, operations run inside it and the host
   * commits (or rolls back) the whole unit of work.
   *
   * SQLite needs `PRAGMA journal_mode = WAL` (file databases) and a positive
   * `PRAGMA busy_timeout`; the store checks both on first use and throws a
   * `StoreError` naming the missing setting. Enable `PRAGMA foreign_keys = ON`
   * for deletes of workflows to cascade to their steps and history.
   */
  db: Kysely<any>;
  /**
   * Source of time for every comparison (due times, leases) and for the times
   * the store writes. Times are then passed to the database as parameters.
   * Without it, the Postgres store uses the database clock (`statement_timestamp()`
   * / `clock_timestamp()`), so a skewed application clock cannot reclaim a
   * lease early; the SQLite store uses the JavaScript clock.
   *
   * @default the database clock (Postgres) or the system clock (SQLite)
   */
  clock?: Clock;
}
