/** IPC messages between the bench and its engine processes (`bench/pg-worker.ts`). */
import type { StatementCounts } from './statement-counter.js';

export type ParentMessage =
  /**
   * `groupCommit`: the Kysely store's option of the same name. `notify`: the store's `notifications`,
   * listening on a client of its own (`LISTEN/NOTIFY` wake-ups).
   */
  | { type: 'start'; url: string; poolSize: number; concurrency: number; idlePollMs: number; groupCommit: boolean; notify: boolean }
  /** From here on, count statements and CPU time for the `stopped` reply (else from `start`). */
  | { type: 'mark' }
  | { type: 'stop' };

export type WorkerMessage =
  | { type: 'spawned' }
  | { type: 'ready' }
  | { type: 'marked' }
  | { type: 'completed'; workflowId: string }
  | { type: 'failed'; workflowId: string; reason: string }
  /** Statements sent and CPU time of the worker process from its `start` (or its last `mark`) to its `stop`. */
  | { type: 'stopped'; statements: StatementCounts; cpuMs: number }
  | { type: 'error'; message: string };
