/**
 * A test rig for the reliability suites: a manual clock, a fresh store from a
 * factory wrapped in a {@link FaultyStore} (which only counts until a fault is
 * armed), an engine on it, and the state checks of `invariants.ts`.
 *
 * Unlike `useHarness`, a rig is built and closed explicitly, so that one test
 * can run many independent iterations (a fresh store each).
 */
import { createManualClock, type ManualClock } from '../../../src/core/clock.js';
import type { WorkflowDefinition } from '../../../src/core/define-workflow.js';
import type { EngineOptions } from '../../../src/engine/engine-config.js';
import { createEngine, type WorkflowEngine } from '../../../src/engine/workflow-engine.js';
import type { WorkflowStore } from '../../../src/storage/workflow-store.js';
import { recordingLogger } from '../../fixtures/harness.js';
import type { StoreFactory } from '../../support/store-factories.js';
import { FaultyStore } from './faulty-store.js';
import { compensableFrom, describeStored, readStored, violations, type Compensable, type StoredWorkflow } from './invariants.js';

export interface Rig {
  factory: StoreFactory;
  clock: ManualClock;
  /** The store itself: what tests read to check state, never faulted. */
  inner: WorkflowStore;
  /** The wrapper the engines use. */
  store: FaultyStore;
  engine: WorkflowEngine;
  logger: ReturnType<typeof recordingLogger>;
  compensable: Compensable;
  /** Another engine on the same store, as another worker would be. */
  otherEngine(options?: Partial<EngineOptions>): WorkflowEngine;
  /** Waits until no store call is in flight and `idle()` holds, for a few event-loop turns in a row. */
  quiesce(idle?: () => boolean): Promise<void>;
  read(id: string): Promise<StoredWorkflow>;
  /** Every rule violated by the stored workflows (empty when all is legal). */
  violations(ids: readonly string[], options?: { live?: boolean }): Promise<string[]>;
  close(): Promise<void>;
}

export interface RigOptions {
  engine?: Partial<EngineOptions>;
  checkAtomicity?: boolean;
}

export async function createRig(factory: StoreFactory, workflows: WorkflowDefinition<any, any>[], options: RigOptions = {}): Promise<Rig> {
  const clock = createManualClock();
  const { store: inner, cleanup } = await factory.create(clock);
  const store = new FaultyStore(inner, { checkAtomicity: options.checkAtomicity ?? false });
  const logger = recordingLogger();
  const engines: WorkflowEngine[] = [];
  const make = (extra: Partial<EngineOptions>) => {
    const e = createEngine({ store, workflows, clock, logger, random: () => 0.5, leaseMs: 30_000, ...options.engine, ...extra });
    engines.push(e);
    return e;
  };
  const engine = make({ workerId: 'worker_a' });
  const compensable = compensableFrom(workflows);
  let closed = false;
  return {
    factory,
    clock,
    inner,
    store,
    engine,
    logger,
    compensable,
    otherEngine: (extra = {}) => make({ workerId: `worker_${engines.length}`, ...extra }),
    async quiesce(idle = () => true) {
      const deadline = Date.now() + 15_000;
      let stable = 0;
      while (stable < 4) {
        await new Promise<void>((resolve) => setImmediate(resolve));
        if (store.inFlight === 0 && idle()) {
          stable++;
        } else {
          stable = 0;
          if (Date.now() > deadline) throw new Error(`the engine did not settle (${store.inFlight} store calls in flight)`);
        }
      }
    },
    read: (id) => readStored(inner, id),
    async violations(ids, opts = {}) {
      const out: string[] = [];
      for (const id of ids) {
        const stored = await readStored(inner, id);
        const found = violations(stored, compensable, opts);
        if (found.length > 0) out.push(`${describeStored(stored)}:`, ...found.map((v) => `  ${v}`));
      }
      return out;
    },
    async close() {
      if (closed) return;
      closed = true;
      for (const e of engines) await e.stop();
      await cleanup();
    },
  };
}

/** Names a store factory list for a report. */
export function storeNames(factories: readonly StoreFactory[]): string[] {
  return factories.map((f) => f.name);
}
