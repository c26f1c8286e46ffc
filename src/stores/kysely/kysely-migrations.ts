import { Migrator, sql, type Kysely, type Migration, type MigrationProvider, type RawBuilder } from 'kysely';
import { resolveTables, type TableNames } from './kysely-tables.js';
import type { KyselyTableOptions } from './kysely-workflow-store-config.js';

/** Options of {@link migrateToLatest}: the same table options as the store. */
export type KyselyMigrationOptions = KyselyTableOptions;

/** What {@link migrateToLatest} did. */
export interface KyselyMigrationResult {
  /** Names of the migrations this call applied, in order (empty when the schema was up to date). */
  applied: string[];
}

/**
 * Creates or upgrades sagaline's tables. Safe to call from every process at
 * start-up: concurrent calls all succeed and the schema is applied once.
 *
 * Built on Kysely's `Migrator`, with its own migration tables
 * (`<prefix>migration`, `<prefix>migration_lock`). On Postgres the migrator
 * holds an advisory lock and runs the migrations in one transaction; on
 * SQLite the whole run is one `BEGIN IMMEDIATE` transaction, so other
 * processes wait (up to their `busy_timeout`) and then find the schema applied.
 *
 * Takes a `Kysely` instance, not a `Transaction` (the migrator needs its own
 * connection and transaction).
 *
 * @example
 * ```ts
 * await migrateToLatest(db);                                   // sagaline_* tables
 * await migrateToLatest(db, { tablePrefix: 'wf_', schema: 'jobs' }); // Postgres schema "jobs"
 * ```
 */
export async function migrateToLatest(
  db: Kysely<any>,
  options: KyselyMigrationOptions = {},
): Promise<KyselyMigrationResult> {
  if (db.isTransaction) {
    throw new TypeError('migrateToLatest needs a Kysely instance, not a Transaction: the migrator opens its own transaction');
  }
  const tables = resolveTables(db, options);
  const provider: MigrationProvider = { getMigrations: async () => migrations(tables) };
  if (tables.dialect === 'postgres') {
    // Without a schema, pin the migration tables to the schema our unqualified
    // names resolve to: the migrator's existence check would otherwise match a
    // same-named table in any schema.
    const migrationTableSchema = tables.schema ?? (await currentSchema(db));
    const migrator = new Migrator({
      db,
      provider,
      migrationTableName: tables.migration,
      migrationLockTableName: tables.migrationLock,
      migrationTableSchema,
    });
    return unwrap(await migrator.migrateToLatest());
  }
  // SQLite: Kysely's SqliteAdapter takes no lock, and runs migrations outside a
  // transaction. BEGIN IMMEDIATE takes the write lock up front (waiting for
  // other processes through busy_timeout), and makes the run atomic.
  return db.connection().execute(async (conn) => {
    await sql`begin immediate`.execute(conn);
    let result: KyselyMigrationResult;
    try {
      const migrator = new Migrator({
        db: conn,
        provider,
        migrationTableName: tables.migration,
        migrationLockTableName: tables.migrationLock,
      });
      result = unwrap(await migrator.migrateToLatest());
    } catch (err) {
      await sql`rollback`.execute(conn);
      throw err;
    }
    await sql`commit`.execute(conn);
    return result;
  });
}

async function currentSchema(db: Kysely<any>): Promise<string> {
  const { rows } = await sql<{ schema: string }>`select current_schema() as schema`.execute(db);
  const schema = rows[0]?.schema;
  if (!schema) throw new Error('Postgres has no current schema (empty search_path): pass the schema option');
  return schema;
}

function unwrap(resultSet: { error?: unknown; results?: { migrationName: string; status: string }[] }): KyselyMigrationResult {
  if (resultSet.error !== undefined) {
    const failed = resultSet.results?.find((r) => r.status === 'Error')?.migrationName;
    const reason = resultSet.error instanceof Error ? resultSet.error.message : String(resultSet.error);
    throw new Error(`sagaline migration ${failed ? `"${failed}" ` : ''}failed: ${reason}`, { cause: resultSet.error });
  }
  return { applied: (resultSet.results ?? []).filter((r) => r.status === 'Success').map((r) => r.migrationName) };
}

/** The migrations, by name (applied in name order). */
function migrations(tables: TableNames): Record<string, Migration> {
  return {
    '0001_initial': { up: (db) => initialSchema(db, tables) },
    '0002_callback_tokens_name_their_step': { up: (db) => dropCallbackIndex(db, tables) },
  };
}

/**
 * A callback token names its workflow and step, so the engine reads the step
 * by its key: the index on the token hash is no longer read, and every claim
 * wrote an entry in it.
 */
async function dropCallbackIndex(db: Kysely<any>, t: TableNames): Promise<void> {
  await sql`drop index if exists ${t.ref(`${t.prefix}steps_callback_idx`)}`.execute(db);
}

/**
 * How a column is stored: `id` is the workflow id (the primary key), `owner`
 * the workflow id of a step or history row; the others are plain types. See
 * {@link columnSql}.
 */
type ColumnKind = 'id' | 'owner' | 'text' | 'int' | 'time' | 'json';

/** A column: name, kind, and what follows the type (`not null`, a default). */
type Column = readonly [name: string, kind: ColumnKind, rest?: string];

const WORKFLOW_COLUMNS: readonly Column[] = [
  ['id', 'id'],
  ['tenant_id', 'text', 'not null'],
  ['type', 'text', 'not null'],
  ['service_slug', 'text'],
  ['status', 'text', 'not null'],
  ['definition_version', 'text', 'not null'],
  ['input', 'json'],
  ['output', 'json'],
  ['error', 'json'],
  ['idempotency_key', 'text'],
  ['current_step', 'text'],
  ['retry_count', 'int', 'not null default 0'],
  ['last_history_seq', 'int', 'not null default 0'],
  // Raised by every write to the row: SQLite's compare-and-set compares it (Postgres compares xmin).
  ['version', 'int', 'not null default 0'],
  ['created_at', 'time', 'not null'],
  ['updated_at', 'time', 'not null'],
  ['completed_at', 'time'],
];

const STEP_COLUMNS: readonly Column[] = [
  ['workflow_id', 'owner'],
  ['name', 'text', 'not null'],
  ['position', 'int', 'not null'],
  ['depends_on', 'json', 'not null'],
  ['status', 'text', 'not null'],
  ['attempts', 'int', 'not null default 0'],
  ['retry_count', 'int', 'not null default 0'],
  ['max_attempts', 'int', 'not null'],
  ['started_at', 'time'],
  ['completed_at', 'time'],
  ['due_at', 'time'],
  ['lease_owner', 'text'],
  ['lease_token', 'text'],
  ['lease_expires_at', 'time'],
  ['callback_token_hash', 'text'],
  ['callback_result', 'json'],
  ['poll_count', 'int', 'not null default 0'],
  ['poll_deadline_at', 'time'],
  ['output', 'json'],
  ['error', 'json'],
  ['completion_seq', 'int'],
  ['claimed_from_status', 'text'],
  ['claimed_from_owner', 'text'],
];

const HISTORY_COLUMNS: readonly Column[] = [
  ['workflow_id', 'owner'],
  ['seq', 'int', 'not null'],
  ['at', 'time', 'not null'],
  ['kind', 'text', 'not null'],
  ['step_name', 'text'],
  ['from_status', 'text'],
  ['to_status', 'text'],
  ['actor', 'text'],
  ['reason', 'text'],
  ['action', 'text'],
  ['detail', 'json'],
];

/**
 * A column's definition. Postgres: ids compare bytewise (`COLLATE "C"`), as
 * JavaScript orders strings, and faster; `timestamptz` and `jsonb`. SQLite:
 * timestamps are integer epoch milliseconds and JSON columns hold JSON text.
 *
 * `owner` columns carry no foreign key: a key check on every inserted history
 * row (a locking read of the workflow row per row, on Postgres) cost about a
 * quarter of the server's time per step. The store only writes steps and
 * history with their workflow row, in the same statement or transaction, and
 * a trigger deletes them with it (see {@link initialSchema}).
 */
function columnSql([name, kind, rest]: Column, postgres: boolean): RawBuilder<unknown> {
  const types: Record<ColumnKind, string> = postgres
    ? { id: 'text collate "C" primary key', owner: 'text collate "C" not null', text: 'text', int: 'integer', time: 'timestamptz', json: 'jsonb' }
    : { id: 'text primary key not null', owner: 'text not null', text: 'text', int: 'integer', time: 'integer', json: 'text' };
  return sql`${sql.id(name)} ${sql.raw(types[kind])}${rest ? sql.raw(` ${rest}`) : sql``}`;
}

/** The three tables and their indexes, on either dialect. */
async function initialSchema(db: Kysely<any>, t: TableNames): Promise<void> {
  const postgres = t.dialect === 'postgres';
  const w = t.ref(t.workflows);
  const s = t.ref(t.steps);
  const h = t.ref(t.history);
  const columns = (list: readonly Column[]) => sql.join(list.map((c) => columnSql(c, postgres)));
  const idempotency = sql.id(`${t.prefix}workflows_idempotency_key`);
  await sql`
    create table ${w} (
      ${columns(WORKFLOW_COLUMNS)},
      constraint ${idempotency} unique (tenant_id, idempotency_key)
    )`.execute(db);
  await createListIndexes(db, t, w);
  await sql`create table ${s} (${columns(STEP_COLUMNS)}, primary key (workflow_id, name))`.execute(db);
  await createStepIndexes(db, t, s);
  await sql`create table ${h} (${columns(HISTORY_COLUMNS)}, primary key (workflow_id, seq))`.execute(db);
  await createDeleteTrigger(db, t);
}

/**
 * Deleting workflow rows (a host's retention job, say) deletes their steps
 * and history, in the same statement: on Postgres one statement-level
 * trigger per delete, on SQLite one per row (no `foreign_keys` pragma needed).
 */
async function createDeleteTrigger(db: Kysely<any>, t: TableNames): Promise<void> {
  const name = `${t.prefix}workflows_delete_children`;
  if (t.dialect === 'postgres') {
    // Qualified names throughout, so the function does not depend on the deleting session's search_path.
    const schema = t.schema ?? (await currentSchema(db));
    const w = sql.id(schema, t.workflows);
    const s = sql.id(schema, t.steps);
    const h = sql.id(schema, t.history);
    const fn = sql.id(schema, name);
    await sql`
      create function ${fn}() returns trigger language plpgsql as $body$
      begin
        delete from ${s} where workflow_id in (select id from deleted_workflows);
        delete from ${h} where workflow_id in (select id from deleted_workflows);
        return null;
      end
      $body$`.execute(db);
    await sql`
      create trigger ${sql.id(name)} after delete on ${w}
      referencing old table as deleted_workflows
      for each statement execute function ${fn}()`.execute(db);
    return;
  }
  const w = t.ref(t.workflows);
  const s = t.ref(t.steps);
  const h = t.ref(t.history);
  await sql`
    create trigger ${sql.id(name)} after delete on ${w} for each row begin
      delete from ${s} where workflow_id = old.id;
      delete from ${h} where workflow_id = old.id;
    end`.execute(db);
}

/** One index per list filter, each ending with the keyset order `(created_at, id)`. */
async function createListIndexes(db: Kysely<any>, t: TableNames, w: ReturnType<TableNames['ref']>): Promise<void> {
  const lists: [string, string[]][] = [
    ['workflows_created_idx', []],
    ['workflows_tenant_created_idx', ['tenant_id']],
    ['workflows_status_created_idx', ['status']],
    ['workflows_tenant_status_created_idx', ['tenant_id', 'status']],
    ['workflows_type_created_idx', ['type']],
    ['workflows_service_created_idx', ['service_slug']],
    ['workflows_tenant_service_created_idx', ['tenant_id', 'service_slug']],
  ];
  for (const [name, leading] of lists) {
    const columns = sql.join([...leading, 'created_at', 'id'].map((c) => sql.id(c)));
    await sql`create index ${sql.id(`${t.prefix}${name}`)} on ${w} (${columns})`.execute(db);
  }
}

async function createStepIndexes(db: Kysely<any>, t: TableNames, s: ReturnType<TableNames['ref']>): Promise<void> {
  // The claim scans due steps in due order; finished and not-ready steps have no due time.
  await sql`create index ${sql.id(`${t.prefix}steps_due_idx`)} on ${s} (due_at) where due_at is not null`.execute(db);
  await sql`create index ${sql.id(`${t.prefix}steps_callback_idx`)} on ${s} (callback_token_hash) where callback_token_hash is not null`.execute(
    db,
  );
}
