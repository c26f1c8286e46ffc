import type { ManualClock } from '../../src/core/clock.js';
import type { WorkflowStore } from '../../src/storage/workflow-store.js';
import { MemoryWorkflowStore } from '../../src/stores/memory/memory-workflow-store.js';

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
];
