/**
 * Runs `migrateToLatest` in its own process, for the concurrent-migration
 * tests: prints `ready`, waits for a line on stdin (so that every process
 * starts migrating at once), then prints the result as one JSON line.
 *
 * Usage: node --import tsx migrate-child.ts <postgres|sqlite> <url|file> [json options]
 */
import { createInterface } from 'node:readline';
import { Kysely, PostgresDialect, SqliteDialect } from 'kysely';
import pg from 'pg';
import { migrateToLatest, type KyselyMigrationOptions } from '../../src/kysely.js';
import { openSqlite } from './sqlite-connection.js';

const [dialect, target, optionsJson] = process.argv.slice(2);
if ((dialect !== 'postgres' && dialect !== 'sqlite') || !target) {
  console.error('usage: migrate-child.ts <postgres|sqlite> <url|file> [json options]');
  process.exit(2);
}
const options = JSON.parse(optionsJson ?? '{}') as KyselyMigrationOptions;
const db =
  dialect === 'postgres'
    ? new Kysely<any>({ dialect: new PostgresDialect({ pool: new pg.Pool({ connectionString: target, max: 2 }) }) })
    : new Kysely<any>({ dialect: new SqliteDialect({ database: openSqlite(target) }) });

const lines = createInterface({ input: process.stdin });
const go = new Promise<void>((resolve) => lines.once('line', () => resolve()));
console.log('ready');
await go;
lines.close();
try {
  const result = await migrateToLatest(db, options);
  console.log(JSON.stringify({ ok: true, applied: result.applied }));
} catch (err) {
  console.log(JSON.stringify({ ok: false, error: err instanceof Error ? err.message : String(err) }));
  process.exitCode = 1;
} finally {
  await db.destroy();
}
