import type { ManualClock } from '../../src/core/clock.js';
import type { WorkflowStore } from '../../src/storage/workflow-store.js';
import type { StoreContractFactory } from '../../src/testing/store-contract.js';
import { migrateToLatest } from '../../src/stores/kysely/kysely-migrations.js';
import { KyselyWorkflowStore } from '../../src/stores/kysely/kysely-workflow-store.js';
import { MemoryWorkflowStore } from '../../src/stores/memory/memory-workflow-store.js';
import { createPostgresSchema, createSqliteDatabase } from './databases.js';

/** A way to make a fresh, empty store for one test, and to clean it up. */
export interface StoreFactory {
  name: 'memory' | 'sqlite' | 'postgres';
  create(clock: ManualClock): Promise<{ store: WorkflowStore; cleanup: () => Promise<void> }>;
}

/** Every store the engine suites run on. */
export const storeFactories: StoreFactory[] = [
  {
    name: 'memory',
    async create(clock) {
      const store = new MemoryWorkflowStore({ clock });
      return { store, cleanup: async () => {} };
    },
  },
  {
    name: 'sqlite',
    async create(clock) {
      // A new database file per test, migrated, with the manual clock as the store's clock.
      const database = await createSqliteDatabase();
      try {
        await migrateToLatest(database.db);
      } catch (err) {
        await database.cleanup();
        throw err;
      }
      return { store: new KyselyWorkflowStore({ db: database.db, clock }), cleanup: () => database.cleanup() };
    },
  },
  {
    name: 'postgres',
    async create(clock) {
      // A new schema per test on the shared test server, migrated, with the manual clock as the store's clock.
      const database = await createPostgresSchema();
      try {
        await migrateToLatest(database.db, { schema: database.schema });
      } catch (err) {
        await database.cleanup();
        throw err;
      }
      return { store: new KyselyWorkflowStore({ db: database.db, schema: database.schema, clock }), cleanup: () => database.cleanup() };
    },
  },
];

/** The factory named `name`. */
export function storeFactory(name: StoreFactory['name']): StoreFactory {
  const factory = storeFactories.find((f) => f.name === name);
  if (!factory) throw new Error(`no store factory named ${name}`);
  return factory;
}

/** The store contract's factory over `make` (a store and its cleanup): each store is cleaned up when the contract destroys it. */
export function contractFactory(make: StoreFactory['create']): StoreContractFactory {
  const cleanups = new Map<WorkflowStore, () => Promise<void>>();
  return {
    async create(clock) {
      const { store, cleanup } = await make(clock);
      cleanups.set(store, cleanup);
      return store;
    },
    async destroy(store) {
      await cleanups.get(store)?.();
      cleanups.delete(store);
    },
  };
}
