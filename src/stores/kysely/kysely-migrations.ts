import { Migrator, sql, type Kysely, type Migration, type MigrationProvider } from 'kysely';
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
    '0001_initial': { up: (db) => (tables.dialect === 'postgres' ? initialPostgres(db, tables) : initialSqlite(db, tables)) },
  };
}

async function initialPostgres(db: Kysely<any>, t: TableNames): Promise<void> {
  const w = t.ref(t.workflows);
  const s = t.ref(t.steps);
  const h = t.ref(t.history);
  const idx = (suffix: string) => sql.id(`${t.prefix}${suffix}`);
  // Ids compare bytewise (COLLATE "C"), as JavaScript orders strings, and faster.
  await sql`
    create table ${w} (
      id text collate "C" primary key,
      tenant_id text not null,
      type text not null,
      service_slug text,
      status text not null,
      definition_version text not null,
      input jsonb,
      output jsonb,
      error jsonb,
      idempotency_key text,
      current_step text,
      retry_count integer not null default 0,
      last_history_seq integer not null default 0,
      created_at timestamptz not null,
      updated_at timestamptz not null,
      completed_at timestamptz,
      constraint ${idx('workflows_idempotency_key')} unique (tenant_id, idempotency_key)
    )`.execute(db);
  await createListIndexes(db, t, w);
  await sql`
    create table ${s} (
      workflow_id text collate "C" not null references ${w} (id) on delete cascade,
      name text not null,
      position integer not null,
      depends_on jsonb not null,
      status text not null,
      attempts integer not null default 0,
      retry_count integer not null default 0,
      max_attempts integer not null,
      started_at timestamptz,
      completed_at timestamptz,
      due_at timestamptz,
      lease_owner text,
      lease_token text,
      lease_expires_at timestamptz,
      callback_token_hash text,
      callback_result jsonb,
      poll_count integer not null default 0,
      poll_deadline_at timestamptz,
      output jsonb,
      error jsonb,
      completion_seq integer,
      claimed_from_status text,
      claimed_from_owner text,
      primary key (workflow_id, name)
    )`.execute(db);
  await createStepIndexes(db, t, s);
  await sql`
    create table ${h} (
      workflow_id text collate "C" not null references ${w} (id) on delete cascade,
      seq integer not null,
      at timestamptz not null,
      kind text not null,
      step_name text,
      from_status text,
      to_status text,
      actor text,
      reason text,
      action text,
      detail jsonb,
      primary key (workflow_id, seq)
    )`.execute(db);
}

async function initialSqlite(db: Kysely<any>, t: TableNames): Promise<void> {
  const w = t.ref(t.workflows);
  const s = t.ref(t.steps);
  const h = t.ref(t.history);
  const idx = (suffix: string) => sql.id(`${t.prefix}${suffix}`);
  // Timestamps are integer epoch milliseconds; JSON columns hold JSON text.
  await sql`
    create table ${w} (
      id text primary key not null,
      tenant_id text not null,
      type text not null,
      service_slug text,
      status text not null,
      definition_version text not null,
      input text,
      output text,
      error text,
      idempotency_key text,
      current_step text,
      retry_count integer not null default 0,
      last_history_seq integer not null default 0,
      created_at integer not null,
      updated_at integer not null,
      completed_at integer,
      constraint ${idx('workflows_idempotency_key')} unique (tenant_id, idempotency_key)
    )`.execute(db);
  await createListIndexes(db, t, w);
  await sql`
    create table ${s} (
      workflow_id text not null references ${w} (id) on delete cascade,
      name text not null,
      position integer not null,
      depends_on text not null,
      status text not null,
      attempts integer not null default 0,
      retry_count integer not null default 0,
      max_attempts integer not null,
      started_at integer,
      completed_at integer,
      due_at integer,
      lease_owner text,
      lease_token text,
      lease_expires_at integer,
      callback_token_hash text,
      callback_result text,
      poll_count integer not null default 0,
      poll_deadline_at integer,
      output text,
      error text,
      completion_seq integer,
      claimed_from_status text,
      claimed_from_owner text,
      primary key (workflow_id, name)
    )`.execute(db);
  await createStepIndexes(db, t, s);
  await sql`
    create table ${h} (
      workflow_id text not null references ${w} (id) on delete cascade,
      seq integer not null,
      at integer not null,
      kind text not null,
      step_name text,
      from_status text,
      to_status text,
      actor text,
      reason text,
      action text,
      detail text,
      primary key (workflow_id, seq)
    )`.execute(db);
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
