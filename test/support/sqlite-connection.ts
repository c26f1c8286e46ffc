import Database from 'better-sqlite3';

/** How long opening waits for other processes that hold the new file's lock. */
const OPEN_TIMEOUT_MS = 10_000;

/**
 * Opens a better-sqlite3 connection configured as the Kysely store requires:
 * a busy timeout and WAL.
 *
 * Switching a file to WAL needs an exclusive lock, and SQLite may answer
 * SQLITE_BUSY at once instead of calling the busy handler when another
 * process opens the same new file at that moment; the switch is retried
 * until the timeout.
 */
export function openSqlite(file: string): Database.Database {
  const sqlite = new Database(file, { timeout: OPEN_TIMEOUT_MS });
  sqlite.pragma(`busy_timeout = ${OPEN_TIMEOUT_MS}`);
  const deadline = Date.now() + OPEN_TIMEOUT_MS;
  for (;;) {
    try {
      sqlite.pragma('journal_mode = WAL');
      break;
    } catch (err) {
      if ((err as { code?: string }).code !== 'SQLITE_BUSY' || Date.now() > deadline) throw err;
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 10);
    }
  }
  sqlite.pragma('synchronous = NORMAL');
  sqlite.pragma('foreign_keys = ON');
  return sqlite;
}
