/**
 * A statement cache for Kysely's `SqliteDialect` on better-sqlite3.
 *
 * Kysely prepares every query afresh (`database.prepare(sql)` per call), and
 * for the store's statements SQLite's parse and plan cost about as much as
 * running them. {@link cachedStatements} wraps the database so that a
 * statement text seen before reuses its prepared statement.
 */

/** What Kysely's `SqliteDialect` needs of a prepared statement (structurally better-sqlite3's `Statement`). */
interface StatementLike {
  readonly reader: boolean;
  /** better-sqlite3: true while an `iterate()` over the statement is open. */
  readonly busy?: boolean;
  all(...parameters: any[]): unknown[];
  run(...parameters: any[]): { changes: number | bigint; lastInsertRowid: number | bigint };
  iterate(...parameters: any[]): IterableIterator<unknown>;
}

/** What Kysely's `SqliteDialect` needs of a database (structurally better-sqlite3's `Database`). */
interface DatabaseLike {
  prepare(sql: string): StatementLike;
  close(): unknown;
}

/** Options of {@link cachedStatements}. */
export interface CachedStatementsOptions {
  /** Prepared statements kept, the least recently used dropped first (default 256). */
  maxStatements?: number;
}

const DEFAULT_MAX_STATEMENTS = 256;

/**
 * Wraps a better-sqlite3 database for Kysely's `SqliteDialect` so that
 * statements are prepared once per distinct text and reused (least recently
 * used first out). A statement still being iterated (a streamed query) is
 * not shared: a second use prepares its own.
 *
 * @example
 * ```ts
 * import Database from 'better-sqlite3';
 * import { Kysely, SqliteDialect } from 'kysely';
 * import { cachedStatements, KyselyWorkflowStore } from 'sagaline/kysely';
 *
 * const sqlite = new Database('sagaline.db', { timeout: 5000 });
 * sqlite.pragma('journal_mode = WAL');
 * const db = new Kysely<any>({ dialect: new SqliteDialect({ database: cachedStatements(sqlite) }) });
 * ```
 */
export function cachedStatements<D extends DatabaseLike>(database: D, options: CachedStatementsOptions = {}): DatabaseLike {
  const max = options.maxStatements ?? DEFAULT_MAX_STATEMENTS;
  if (!Number.isInteger(max) || max < 1) throw new TypeError('cachedStatements: maxStatements must be a positive integer');
  if (!database || typeof database.prepare !== 'function') throw new TypeError('cachedStatements needs a better-sqlite3 Database (with prepare())');
  const cache = new Map<string, StatementLike>();
  return {
    prepare(text: string): StatementLike {
      const cached = cache.get(text);
      if (cached && cached.busy !== true) {
        // Most recently used last.
        cache.delete(text);
        cache.set(text, cached);
        return cached;
      }
      const statement = database.prepare(text);
      if (!cached) {
        cache.set(text, statement);
        if (cache.size > max) cache.delete(cache.keys().next().value!);
      }
      return statement;
    },
    close() {
      cache.clear();
      return database.close();
    },
  };
}
