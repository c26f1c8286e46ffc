/**
 * `sagaline/memory`: the in-memory `WorkflowStore`, for tests, demos and
 * single-process use where nothing has to survive a restart.
 *
 * @example
 * ```ts
 * import { createEngine } from 'sagaline';
 * import { MemoryWorkflowStore } from 'sagaline/memory';
 *
 * const engine = createEngine({ store: new MemoryWorkflowStore(), workflows: [provisionService] });
 * ```
 *
 * @module
 */
export { MemoryWorkflowStore } from './stores/memory/memory-workflow-store.js';
export type { MemoryWorkflowStoreOptions } from './stores/memory/memory-workflow-store.js';
