/**
 * Fresh databases for tests: a SQLite file in a temp dir, or a new database
 * on the run's shared Postgres server (see `postgres-global-setup.ts`).
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Kysely, PostgresDialect, sql, SqliteDialect } from 'kysely';
import { preparedStatements } from '../../src/stores/kysely/pg-prepared-statements.js';
import { cachedStatements } from '../../src/stores/kysely/sqlite-statement-cache.js';
import pg from 'pg';
import { inject } from 'vitest';
import { openSqlite } from './sqlite-connection.js';

export { openSqlite };

/** A test database and how to remove it. */
export interface TestDatabase {
  db: Kysely<any>;
  cleanup(): Promise<void>;
}

/** A SQLite test database: its file as well. */
export interface SqliteTestDatabase extends TestDatabase {
  file: string;
}

/** A Postgres test database: its connection URL and name as well. */
export interface PostgresTestDatabase extends TestDatabase {
  url: string;
  name: string;
}

/** A new SQLite database file in its own temp dir, in WAL mode with a busy timeout. */
export async function createSqliteDatabase(): Promise<SqliteTestDatabase> {
  const dir = mkdtempSync(join(tmpdir(), 'sagaline-sqlite-'));
  const file = join(dir, 'test.db');
  const db = new Kysely<any>({ dialect: new SqliteDialect({ database: cachedStatements(openSqlite(file)) }) });
  return {
    db,
    file,
    async cleanup() {
      await db.destroy();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** The shared test server's URL for database `name`. */
export function postgresUrl(name: string): string {
  const server = inject('postgres');
  return `postgres://${server.user}@${server.host}:${server.port}/${name}`;
}

/** A Kysely instance on a Postgres URL, with its own pool, wrapped with `preparedStatements` as the README recommends. */
export function openPostgres(url: string, max = 10): Kysely<any> {
  const pool = new pg.Pool({ connectionString: url, max });
  // An idle connection closed by the server (a database dropped WITH (FORCE)) is not a test failure.
  pool.on('error', (err: Error & { code?: string }) => {
    if (err.code !== '57P01') throw err;
  });
  return new Kysely<any>({ dialect: new PostgresDialect({ pool: preparedStatements(pool) }) });
}

/** Runs one statement on the server's maintenance database. */
async function admin(statement: string): Promise<void> {
  const client = new pg.Client({ connectionString: inject('postgres').url });
  await client.connect();
  try {
    await client.query(statement);
  } finally {
    await client.end();
  }
}

/** A new, empty database on the shared Postgres server; cleanup drops it. */
export async function createPostgresDatabase(options: { poolSize?: number } = {}): Promise<PostgresTestDatabase> {
  const name = `sagaline_test_${randomBytes(6).toString('hex')}`;
  await admin(`create database ${name}`);
  const url = postgresUrl(name);
  const db = openPostgres(url, options.poolSize);
  return {
    db,
    url,
    name,
    async cleanup() {
      await db.destroy();
      await admin(`drop database if exists ${name} with (force)`);
    },
  };
}

let sharedDatabase: Promise<string> | undefined;

/**
 * A new, empty schema in a database shared by this test file (created on
 * first use, left for the server's teardown), with its own small pool;
 * cleanup drops the schema and closes the pool. Much cheaper than a database
 * per test, and it exercises the store's `schema` option.
 */
export async function createPostgresSchema(): Promise<TestDatabase & { schema: string; url: string }> {
  sharedDatabase ??= (async () => {
    const name = `sagaline_shared_${randomBytes(6).toString('hex')}`;
    await admin(`create database ${name}`);
    return postgresUrl(name);
  })();
  const url = await sharedDatabase;
  const schema = `s_${randomBytes(6).toString('hex')}`;
  const db = openPostgres(url, 4);
  return {
    db,
    schema,
    url,
    async cleanup() {
      try {
        await sql`drop schema if exists ${sql.id(schema)} cascade`.execute(db);
      } finally {
        await db.destroy();
      }
    },
  };
}
