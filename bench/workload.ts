/**
 * The measured workload: a workflow of 5 trivial linear steps (each returns a
 * small object), started by closed-loop clients: each client starts a new
 * workflow as soon as its previous one has completed, until N have been
 * started. Latency is from the `start()` call to the completion being
 * reported (the `workflow:completed` event, emitted after the final
 * transition is committed).
 */
import { z } from 'zod';
import { defineWorkflow, step } from '../src/index.js';
import { Latencies, type LatencySummary } from './stats.js';

export const BENCH_WORKFLOW = 'bench_five_steps';
export const STEPS_PER_WORKFLOW = 5;

/**
 * The workflow, defined with a build's own `defineWorkflow` and `step` (the
 * bench's are this checkout's; `bench:compare` also defines it with an older
 * build's).
 */
export function defineBenchWorkflow(define: typeof defineWorkflow, makeStep: typeof step) {
  return define({
    name: BENCH_WORKFLOW,
    version: 1,
    input: z.object({ n: z.number().int() }),
    steps: {
      first: makeStep({ run: (ctx) => ({ step: 1, n: ctx.input.n }) }),
      second: makeStep({ run: () => ({ step: 2, ok: true }) }),
      third: makeStep({ run: () => ({ step: 3, ok: true }) }),
      fourth: makeStep({ run: () => ({ step: 4, ok: true }) }),
      fifth: makeStep({ run: () => ({ step: 5, ok: true }) }),
    },
  });
}

export const benchWorkflow = defineBenchWorkflow(defineWorkflow, step);

/** Start options of the n-th bench workflow. */
export function benchStartOptions(n: number): { tenantId: string; input: { n: number } } {
  return { tenantId: `tenant_${n % 16}`, input: { n } };
}

/**
 * Matches completions to the clients waiting for them. A completion may be
 * reported before `start()` has returned to its client (the workflow can run
 * to the end while `start()` reads it back), so early ones are kept.
 */
export class CompletionTracker {
  private readonly waiters = new Map<string, { resolve: () => void; reject: (err: Error) => void }>();
  private readonly early = new Map<string, Error | null>();
  private aborted: Error | null = null;

  completed(workflowId: string): void {
    this.settle(workflowId, null);
  }

  failed(workflowId: string, reason: string): void {
    this.settle(workflowId, new Error(`workflow ${workflowId} did not complete: ${reason}`));
  }

  /** Resolves when `workflowId` completes; rejects if it fails or the tracker is aborted. */
  wait(workflowId: string): Promise<void> {
    if (this.aborted) return Promise.reject(this.aborted);
    if (this.early.has(workflowId)) {
      const error = this.early.get(workflowId) ?? null;
      this.early.delete(workflowId);
      return error ? Promise.reject(error) : Promise.resolve();
    }
    return new Promise((resolve, reject) => this.waiters.set(workflowId, { resolve, reject }));
  }

  /** Rejects every waiting client, and every later wait. */
  abort(error: Error): void {
    this.aborted = error;
    for (const w of this.waiters.values()) w.reject(error);
    this.waiters.clear();
  }

  private settle(workflowId: string, error: Error | null): void {
    const waiter = this.waiters.get(workflowId);
    if (!waiter) {
      this.early.set(workflowId, error);
      return;
    }
    this.waiters.delete(workflowId);
    if (error) waiter.reject(error);
    else waiter.resolve();
  }
}

export interface ClosedLoopOptions {
  workflows: number;
  clients: number;
  /** Starts the n-th workflow and resolves to its id. */
  start: (n: number) => Promise<string>;
  tracker: CompletionTracker;
  /** The run fails when it has not finished after this long. */
  timeoutMs: number;
  /** Offset of the workflow numbers (so warm-up and measured runs use distinct inputs). */
  firstNumber?: number;
}

export interface ClosedLoopResult {
  workflows: number;
  clients: number;
  seconds: number;
  workflowsPerSec: number;
  stepsPerSec: number;
  latency: LatencySummary;
}

/** Runs the closed loop to the end, or throws (a failed workflow, a store error, the timeout). */
export async function runClosedLoop(options: ClosedLoopOptions): Promise<ClosedLoopResult> {
  const { workflows, clients, start, tracker } = options;
  const first = options.firstNumber ?? 0;
  const latencies = new Latencies();
  let issued = 0;
  let failure: Error | null = null;
  const timer = setTimeout(() => {
    failure ??= new Error(`timed out after ${Math.round(options.timeoutMs / 1000)} s with ${latencies.count} of ${workflows} workflows completed`);
    tracker.abort(failure);
  }, options.timeoutMs);
  const client = async (): Promise<void> => {
    while (issued < workflows && failure === null) {
      const n = first + issued++;
      const t0 = performance.now();
      const id = await start(n);
      await tracker.wait(id);
      latencies.add(performance.now() - t0);
    }
  };
  const begin = performance.now();
  try {
    await Promise.all(
      Array.from({ length: clients }, () =>
        client().catch((err: unknown) => {
          const error = err instanceof Error ? err : new Error(String(err));
          if (failure === null) {
            failure = error;
            tracker.abort(error);
          }
        }),
      ),
    );
  } finally {
    clearTimeout(timer);
  }
  if (failure !== null) throw failure;
  const seconds = (performance.now() - begin) / 1000;
  return {
    workflows,
    clients,
    seconds,
    workflowsPerSec: workflows / seconds,
    stepsPerSec: (workflows * STEPS_PER_WORKFLOW) / seconds,
    latency: latencies.summary(),
  };
}
