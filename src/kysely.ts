/**
 * `sagaline/kysely`: the durable store, on Postgres or SQLite through the
 * host's Kysely instance, and the migrations that create its tables.
 *
 * ```ts
 * import { KyselyWorkflowStore, migrateToLatest } from 'sagaline/kysely';
 *
 * await migrateToLatest(db);
 * const store = new KyselyWorkflowStore({ db });
 * ```
 *
 * @module
 */
export { KyselyWorkflowStore } from './stores/kysely/kysely-workflow-store.js';
export type {
  KyselyGroupCommitOptions,
  KyselyNotificationOptions,
  KyselyStoreDialect,
  KyselyTableOptions,
  KyselyWorkflowStoreConfig,
} from './stores/kysely/kysely-workflow-store-config.js';
export type { PgListenClient, PgListenConnection, PgNotification } from './stores/kysely/kysely-notifications.js';
export { migrateToLatest } from './stores/kysely/kysely-migrations.js';
export type { KyselyMigrationOptions, KyselyMigrationResult } from './stores/kysely/kysely-migrations.js';
export type { HistoryTable, SagalineDatabase, StepsTable, StoredJson, StoredTimestamp, WorkflowsTable } from './stores/kysely/kysely-schema.js';
export { preparedStatements } from './stores/kysely/pg-prepared-statements.js';
export type { PreparedStatementsOptions } from './stores/kysely/pg-prepared-statements.js';
export { cachedStatements } from './stores/kysely/sqlite-statement-cache.js';
export type { CachedStatementsOptions } from './stores/kysely/sqlite-statement-cache.js';
