/**
 * The queue behind group commit: callers wait here while a batch commits, and
 * the next batch takes what queued meanwhile.
 *
 * @module
 */

/** The default {@link KyselyGroupCommitOptions.maxBatch}. */
export const DEFAULT_MAX_BATCH = 64;

/** One queued call: the key it locks (a workflow id) and how to settle it. */
export interface BatchEntry {
  readonly key: string;
  resolve(value: unknown): void;
  reject(error: unknown): void;
}

/**
 * Runs batches one at a time. A batch holds each key at most once, so a
 * second call on the same key waits for a later batch, in arrival order;
 * calls on other keys overtake it. The batch runner settles every entry
 * itself; if it throws, the entries it left unsettled get that error
 * (`resolve` and `reject` are a promise's, so a second settle is ignored).
 */
export class GroupCommitQueue<E extends BatchEntry> {
  private readonly queue: E[] = [];
  private running = false;

  constructor(
    private readonly maxBatch: number,
    private readonly runBatch: (batch: E[]) => Promise<void>,
  ) {
    if (!Number.isInteger(maxBatch) || maxBatch < 1) throw new TypeError(`groupCommit.maxBatch must be a positive integer, got ${String(maxBatch)}`);
  }

  /** Queues `entry`; a batch starts at once when none is running. */
  push(entry: E): void {
    this.queue.push(entry);
    if (this.running) return;
    this.running = true;
    // Started after the current microtasks, so calls made together share the first batch.
    queueMicrotask(() => void this.drain());
  }

  /** Calls waiting for a batch. */
  get pending(): number {
    return this.queue.length;
  }

  private async drain(): Promise<void> {
    try {
      while (this.queue.length > 0) {
        const batch = this.take();
        try {
          await this.runBatch(batch);
        } catch (err) {
          // Settling is idempotent: entries the runner already settled keep their outcome.
          for (const entry of batch) entry.reject(err);
        }
      }
    } finally {
      this.running = false;
    }
  }

  /** The next batch: queued entries in order, each key once, at most `maxBatch`. */
  private take(): E[] {
    const batch: E[] = [];
    const keys = new Set<string>();
    let kept = 0;
    for (let i = 0; i < this.queue.length; i++) {
      const entry = this.queue[i]!;
      if (batch.length < this.maxBatch && !keys.has(entry.key)) {
        keys.add(entry.key);
        batch.push(entry);
      } else {
        this.queue[kept++] = entry;
      }
    }
    this.queue.length = kept;
    return batch;
  }
}
