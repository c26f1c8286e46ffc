import type { Clock } from '../core/clock.js';
import type { WorkflowDefinition } from '../core/define-workflow.js';
import type { Logger } from '../core/logger.js';
import type { WorkflowStore } from '../storage/workflow-store.js';

/** Options of {@link createEngine}. */
export interface EngineOptions {
  /** Where workflows are persisted. */
  store: WorkflowStore;
  /**
   * The workflow definitions this engine runs. Several versions of one
   * workflow may be registered; `start()` uses the last one given.
   */
  workflows: readonly WorkflowDefinition<any, any>[];
  /** Time source for timers (timeouts, heartbeats, backoff of the worker loop). @default the system clock */
  clock?: Clock;
  /** Step handlers running at once in this engine. @default 10 */
  concurrency?: number;
  /** How long a claim is held without a heartbeat. Handlers extend it every `leaseMs / 3`. @default 30_000 */
  leaseMs?: number;
  /** Recorded as the lease owner. @default `worker_<random>` */
  workerId?: string;
  /** @default warnings and errors to `console`, nothing else */
  logger?: Logger;
  /**
   * How long an idle worker waits before looking for due work again. It is
   * woken sooner by work it creates, by a freed slot when work waits for one,
   * and when a retry, poll or callback timeout it scheduled falls due.
   * @default 1000
   */
  idlePollMs?: number;
  /** `stop()` waits this long for running handlers before aborting them. @default 30_000 */
  shutdownTimeoutMs?: number;
  /** Random source for retry jitter. @default Math.random */
  random?: () => number;
}
