import { PostgresAdapter, SqliteAdapter, sql, type Kysely, type RawBuilder } from 'kysely';
import type { KyselyStoreDialect, KyselyTableOptions } from './kysely-workflow-store-config.js';

/** The default {@link KyselyTableOptions.tablePrefix}. */
export const DEFAULT_TABLE_PREFIX = 'sagaline_';

const PREFIX_PATTERN = /^[A-Za-z_][A-Za-z0-9_]{0,23}$/;

/** Resolved names of every table and index, and references ready for SQL. */
export interface TableNames {
  dialect: KyselyStoreDialect;
  prefix: string;
  schema: string | undefined;
  workflows: string;
  steps: string;
  history: string;
  migration: string;
  migrationLock: string;
  /** A (schema-qualified) reference to one of the tables. */
  ref(table: string): RawBuilder<unknown>;
}

/** Detects the dialect from the Kysely adapter (unless given) and resolves the table names. */
export function resolveTables(db: Kysely<any>, options: KyselyTableOptions): TableNames {
  const dialect = options.dialect ?? detectDialect(db);
  if (dialect !== 'postgres' && dialect !== 'sqlite') {
    throw new TypeError(`dialect must be 'postgres' or 'sqlite', got ${JSON.stringify(dialect)}`);
  }
  const prefix = options.tablePrefix ?? DEFAULT_TABLE_PREFIX;
  if (!PREFIX_PATTERN.test(prefix) && prefix !== '') {
    throw new TypeError(
      `tablePrefix must be letters, digits and underscores (at most 24, not starting with a digit), got ${JSON.stringify(prefix)}`,
    );
  }
  const schema = options.schema;
  if (schema !== undefined) {
    if (dialect !== 'postgres') throw new TypeError('the schema option is only supported on Postgres');
    if (schema.length === 0 || schema.length > 63) throw new TypeError('schema must be 1 to 63 characters long');
  }
  return {
    dialect,
    prefix,
    schema,
    workflows: `${prefix}workflows`,
    steps: `${prefix}steps`,
    history: `${prefix}history`,
    migration: `${prefix}migration`,
    migrationLock: `${prefix}migration_lock`,
    ref: (table) => (schema === undefined ? sql.id(table) : sql.id(schema, table)),
  };
}

function detectDialect(db: Kysely<any>): KyselyStoreDialect {
  const adapter: unknown = db.getExecutor().adapter;
  if (adapter instanceof PostgresAdapter) return 'postgres';
  if (adapter instanceof SqliteAdapter) return 'sqlite';
  // A second copy of kysely (or a third-party dialect) fails instanceof; fall back to the class name.
  const name = (adapter as { constructor?: { name?: string } } | null)?.constructor?.name ?? '';
  if (/postgres|pglite/i.test(name)) return 'postgres';
  if (/sqlite/i.test(name)) return 'sqlite';
  throw new TypeError(`cannot detect the SQL dialect from the Kysely adapter ${name || '(unknown)'}: pass dialect: 'postgres' or 'sqlite'`);
}
