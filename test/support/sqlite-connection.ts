import Database from 'better-sqlite3';

/**
 * Opens a better-sqlite3 connection configured as the Kysely store requires:
 * a busy timeout (set first, so that switching to WAL waits for other
 * processes too) and WAL.
 */
export function openSqlite(file: string): Database.Database {
  const sqlite = new Database(file, { timeout: 10_000 });
  sqlite.pragma('busy_timeout = 10000');
  sqlite.pragma('journal_mode = WAL');
  sqlite.pragma('synchronous = NORMAL');
  sqlite.pragma('foreign_keys = ON');
  return sqlite;
}
