/** IPC messages between the bench and its engine processes (`bench/pg-worker.ts`). */
import type { StatementCounts } from './statement-counter.js';

export type ParentMessage =
  /** `groupCommit`: the Kysely store's option of the same name. */
  | { type: 'start'; url: string; poolSize: number; concurrency: number; idlePollMs: number; groupCommit: boolean }
  | { type: 'stop' };

export type WorkerMessage =
  | { type: 'spawned' }
  | { type: 'ready' }
  | { type: 'completed'; workflowId: string }
  | { type: 'failed'; workflowId: string; reason: string }
  /** `cpuMs`: CPU time of the worker process from its `start` to its `stop`. */
  | { type: 'stopped'; statements: StatementCounts; cpuMs: number }
  | { type: 'error'; message: string };
