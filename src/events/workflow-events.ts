import { EventEmitter } from 'eventemitter3';
import type { Logger } from '../core/logger.js';
import type { StoredError } from '../storage/workflow-store.js';

/** Fields every event payload carries. */
export interface WorkflowEventBase {
  workflowId: string;
  tenantId: string;
  type: string;
  /** Store time of the transition. */
  at: Date;
}

/** Fields of step events. */
export interface StepEventBase extends WorkflowEventBase {
  stepName: string;
  attempt: number;
}

/** Admin actions carry who did them and why. */
export interface AdminEventFields {
  actor: string | null;
  reason: string | null;
}

/**
 * The typed event map of `engine.events`. Every event is emitted after the
 * transition it reports was committed to the store. A throwing listener is
 * logged and never affects the engine.
 */
export interface WorkflowEvents {
  /** A workflow was created by `start()` (not emitted for an idempotent repeat). */
  'workflow:started': (event: WorkflowEventBase) => void;
  /** Every step finished (completed or skipped by force-complete). */
  'workflow:completed': (event: WorkflowEventBase) => void;
  /** A step exhausted its attempts and the workflow halted. */
  'workflow:failed': (event: WorkflowEventBase & { error: StoredError }) => void;
  /** An operator force-completed the workflow. */
  'workflow:force_completed': (event: WorkflowEventBase & AdminEventFields & { skippedSteps: string[] }) => void;
  /** A rollback started (by an operator, or by `onFailure: 'rollback'`). */
  'workflow:rolling_back': (event: WorkflowEventBase & AdminEventFields) => void;
  /** Every compensation ran. */
  'workflow:rolled_back': (event: WorkflowEventBase) => void;
  /** A compensation exhausted its attempts; the rollback stopped there. */
  'workflow:rollback_failed': (event: WorkflowEventBase & { stepName: string; error: StoredError }) => void;
  /** A step attempt started (`pending -> running`, or a reclaim after a lost lease). */
  'step:started': (event: StepEventBase & { reclaimed: boolean }) => void;
  'step:completed': (event: StepEventBase & { output: unknown }) => void;
  /** A step failed for good (no attempts left, or non-retryable). */
  'step:failed': (event: StepEventBase & { error: StoredError }) => void;
  /** A failed attempt will be retried at `nextAttemptAt`. */
  'step:retry_scheduled': (event: StepEventBase & { error: StoredError; nextAttemptAt: Date; delayMs: number }) => void;
  'step:waiting_callback': (event: StepEventBase & { timeoutAt: Date | null }) => void;
  'step:waiting_poll': (event: StepEventBase & { nextPollAt: Date }) => void;
  'step:skipped': (event: StepEventBase & { reason: 'force_complete' | 'rollback' }) => void;
  'step:compensated': (event: StepEventBase) => void;
  'step:compensation_failed': (event: StepEventBase & { error: StoredError }) => void;
}

/** Event names of {@link WorkflowEvents}. */
export type WorkflowEventName = keyof WorkflowEvents;

/** Payload type of event `E`. */
export type WorkflowEventPayload<E extends WorkflowEventName> = Parameters<WorkflowEvents[E]>[0];

/** The emitter type of `engine.events`. */
export type WorkflowEventEmitter = EventEmitter<WorkflowEvents>;

/** Creates the typed emitter. */
export function createEventEmitter(): WorkflowEventEmitter {
  return new EventEmitter<WorkflowEvents>();
}

/**
 * Emits to each listener separately, so a throwing listener is logged and the
 * others (and the engine) carry on.
 */
export function safeEmit<E extends WorkflowEventName>(
  emitter: WorkflowEventEmitter,
  logger: Logger,
  event: E,
  payload: WorkflowEventPayload<E>,
): void {
  const listeners = emitter.listeners(event) as ((p: WorkflowEventPayload<E>) => void)[];
  if (listeners.length === 0) return;
  // Drop `once` registrations the way EventEmitter#emit would, then call each listener in isolation.
  for (const listener of listeners) emitter.removeListener(event, listener as never, undefined, true);
  for (const listener of listeners) {
    try {
      const result = listener.call(emitter, payload) as unknown;
      if (result && typeof (result as Promise<unknown>).then === 'function') {
        (result as Promise<unknown>).then(undefined, (err: unknown) => {
          logger.error('event listener rejected', { event, error: describe(err) });
        });
      }
    } catch (err) {
      logger.error('event listener threw', { event, error: describe(err) });
    }
  }
}

function describe(err: unknown): string {
  return err instanceof Error ? `${err.name}: ${err.message}` : String(err);
}
