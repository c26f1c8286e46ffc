/**
 * Test aids: a manual clock, and the contract suites every store (and every
 * HTTP binding) must pass. Imports vitest, so use it from test files only.
 *
 * @example
 * ```ts
 * import { createManualClock, runWorkflowStoreContract } from 'sagaline/testing';
 * runWorkflowStoreContract('my-store', { create: async (clock) => new MyStore({ clock }) });
 * ```
 *
 * @module
 */
export { createManualClock } from './core/clock.js';
export type { ManualClock } from './core/clock.js';
export { runWorkflowStoreContract } from './testing/store-contract.js';
export type { StoreContractFactory } from './testing/store-contract.js';
export { CONTRACT_PRINCIPALS, runHttpContract } from './testing/http-contract.js';
export type { HttpContractApp, HttpContractOptions, HttpExchange, MakeHttpContractApp } from './testing/http-contract.js';
