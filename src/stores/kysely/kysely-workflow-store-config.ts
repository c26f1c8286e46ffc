import type { Kysely } from 'kysely';
import type { Clock } from '../../core/clock.js';
import type { PgListenClient, PgListenConnection } from './kysely-notifications.js';

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
   * `StoreError` naming the missing setting. Deleting workflow rows deletes
   * their steps and history (a trigger, on both dialects).
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
  /**
   * Group commit: concurrent {@link KyselyWorkflowStore.transact} calls on
   * different workflows share one database transaction. While batches
   * commit (at most `maxConcurrentBatches` at once), new calls queue; the next
   * batch takes everything queued (at most `maxBatch`, each workflow at most
   * once and not in a running batch), locks all its workflow rows in one
   * statement (in id order), reads all their steps in one statement, runs
   * each callback on its own snapshot, writes everything in as few statements
   * as possible and commits once. On Postgres, calls made with
   * `{ optimistic: true }` (the engine's result writes) skip the lock and the
   * read: their batch is one compare-and-set statement (see
   * {@link KyselyWorkflowStore.transact}). `createWorkflow` calls join the
   * batch too: on SQLite each under its own savepoint, on Postgres all of a
   * batch's creates in one statement. Every caller resolves
   * only after that commit, so a result is durable before anything depends on it.
   *
   * A callback that throws (or whose fence is stale) fails only its own
   * caller and writes nothing; a batch that fails to commit fails every
   * caller in it and writes nothing. A slow callback delays its whole batch.
   * Needs a `Kysely` instance, not a `Transaction`.
   *
   * `true` is the default `maxBatch` (16 on Postgres, 64 on SQLite) and
   * `maxConcurrentBatches`.
   *
   * @default false
   */
  groupCommit?: boolean | KyselyGroupCommitOptions;
  /**
   * Wake-ups across processes (Postgres only), through `LISTEN/NOTIFY` on a
   * channel named after the table prefix and schema.
   *
   * With this option, every write that leaves a step claimable now without a
   * lease is followed by a `pg_notify`, and so is a create, unless its
   * creator claimed every step it made due. The notification is sent once
   * the write has committed, in a statement of its own: inside the write it
   * would make the commit wait for every other notifying commit in the
   * database to reach the disk. While one is on its way, the writes that
   * commit meanwhile share the next. A write that notifies resolves once its
   * notification is sent, so nothing is left running behind it. (On a store
   * over a host's transaction, it is sent in that transaction, and delivered
   * when the host commits.)
   * With `listen` the store
   * offers {@link KyselyWorkflowStore.subscribe}, which the engine's worker
   * uses to wake up before its poll interval ends. Give every process that
   * writes the option, so that the others hear of its work; a process with
   * no worker may pass `{}` to send without listening.
   *
   * @default false (no notifications are sent; `subscribe` is undefined)
   */
  notifications?: KyselyNotificationOptions | false;
  /**
   * Postgres: keeps the planner's statistics of the store's tables current
   * while they grow. Each time the workflow table has doubled since the last
   * analysis, as far as the store knows, it runs `ANALYZE` on its three
   * tables in the background, on a connection of the pool: on the columns
   * its statements and list filters select, join or order by (the JSON and
   * other columns are left to autovacuum), which refreshes the tables' row
   * counts as well. The size starts
   * from the planner's estimate (`pg_class.reltuples`, read once) and grows
   * by one per create of this store; an empty or never-analyzed table is
   * first analyzed after 100 creates (then at 200, 400, …), and a store
   * opened on a table of a million workflows analyzes once it alone has
   * created a million more. A failure (a role that does not own the tables
   * gets a warning, not an error) is ignored until the next doubling.
   *
   * Postgres keeps one plan per prepared statement and makes it again only
   * when a table's statistics change. Autovacuum refreshes them at most once
   * per `autovacuum_naptime` (a minute by default), so in a young database
   * the plans made while the tables held a few hundred rows (hash joins over
   * a full scan of the step table, cheap at that size) were kept while the
   * tables grew tenfold. In a database in service autovacuum does the same
   * work, and the doublings become rare. Off with a host `Transaction`.
   *
   * @default true on Postgres; ignored on SQLite
   */
  analyze?: boolean;
}

/** Options of {@link KyselyWorkflowStoreConfig.groupCommit}. */
export interface KyselyGroupCommitOptions {
  /**
   * The most `transact` calls (hence workflows) in one database transaction.
   * On Postgres, smaller than the workflows a process has in flight under
   * load, so that two or more batches commit side by side: the server then
   * works on one while the process prepares the next. One batch of every
   * workflow leaves the server idle while the process works, and the process
   * idle while the server does; with 32 in flight (the engine's
   * `concurrency`), batches of 16 ran 25% faster in the bench than batches
   * of 64, and faster than 8 or 32. SQLite commits one batch at a time, so
   * there a larger batch only saves commits.
   *
   * @default 16 on Postgres, 64 on SQLite
   */
  maxBatch?: number;
  /**
   * Batches committing at once, each on its own connection and on different
   * workflows. More overlap the round trips and fsyncs of several batches;
   * one makes every batch wait for the previous commit. A batch starts beside
   * running ones only once half of `maxBatch` calls wait; fewer wait until no
   * batch runs, so that batches stay large under load.
   *
   * @default 4 on Postgres, 1 on SQLite (one connection)
   */
  maxConcurrentBatches?: number;
}

/** Options of {@link KyselyWorkflowStoreConfig.notifications}. */
export interface KyselyNotificationOptions {
  /**
   * A dedicated, connected client (a `pg.Client`, not a pooled one) on which
   * the store runs `LISTEN` while someone is subscribed. The host owns it:
   * the store never connects, ends or reconnects it.
   *
   * @example
   * ```ts
   * const listen = new pg.Client({ connectionString });
   * await listen.connect();
   * const store = new KyselyWorkflowStore({ db, notifications: { listen } });
   * ```
   *
   * If that client's connection is lost, workers hear nothing more and fall
   * back to polling; {@link connect} reconnects instead.
   */
  listen?: PgListenClient;
  /**
   * Opens a dedicated, connected client (a `pg.Client`) for `LISTEN`: the
   * store calls it for its first subscriber and ends the client after the
   * last. When the client's connection is lost (its `error` or `end`), the
   * store wakes its subscribers (work made due meanwhile went unheard), and
   * opens another, retrying after 100 ms, doubling up to 30 s, and wakes
   * them again once it listens. Workers poll meanwhile. The loss, each
   * failed attempt and the return are reported to the subscribers (see
   * `subscribe`'s `onError` and `onResume`): an engine logs them as a
   * warning (`store wake-ups interrupted; polling until they resume`) and
   * an info (`store wake-ups resumed`) through its `logger`. Give either
   * this or {@link listen}.
   *
   * @example
   * ```ts
   * const store = new KyselyWorkflowStore({
   *   db,
   *   notifications: {
   *     connect: async () => {
   *       const client = new pg.Client({ connectionString });
   *       client.on('error', () => undefined); // the store hears of the loss itself
   *       await client.connect();
   *       return client;
   *     },
   *   },
   * });
   * ```
   */
  connect?: () => Promise<PgListenConnection>;
  /**
   * Told of a notification that could not be sent. Notifications go out
   * after the write that makes work due has committed, in a statement of
   * their own, so the write has succeeded either way; the other processes'
   * workers find its work at their next poll.
   *
   * @default a warning on the console (`console.warn`)
   */
  onError?: (error: Error) => void;
}
