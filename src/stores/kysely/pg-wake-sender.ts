/**
 * Sends a store's `pg_notify` after its writes have committed, one at a time.
 *
 * A notification sent inside a writing transaction makes its commit take a
 * lock that Postgres holds for every notifying commit in the database until
 * that commit is on disk, so notifying writes commit one after another, each
 * waiting for its own flush. Sent afterwards, in a statement of its own, the
 * notification writes nothing that needs flushing and the writes commit as
 * any others do.
 *
 * @module
 */

/**
 * Coalesces wake-ups: {@link wake} starts a send unless one is on its way; the
 * wakes made while one is on its way share one more send, started once it
 * has ended. Every wake resolves once a send that started after it has
 * ended, so a write that waits for its wake leaves nothing running behind it
 * (a host may destroy its Kysely instance as soon as the write resolves), and
 * under load one send covers all the writes that committed while the one
 * before it was on its way.
 */
export class WakeSender {
  private sending: Promise<void> | undefined;
  /** The wakes not yet covered by a send that started after them. */
  private waiting: { promise: Promise<void>; resolve: () => void } | undefined;

  /**
   * @param send sends one notification.
   * @param onError told of a send that failed (the writes it covered have
   *   committed; the other processes find their work at their next poll).
   */
  constructor(
    private readonly send: () => Promise<void>,
    private readonly onError: (error: Error) => void,
  ) {}

  /**
   * Asks for a notification sent after this call; resolves once it has
   * been sent, or has failed and been reported (never rejects).
   */
  wake(): Promise<void> {
    if (!this.waiting) {
      let resolve!: () => void;
      const promise = new Promise<void>((r) => (resolve = r));
      this.waiting = { promise, resolve };
    }
    const done = this.waiting.promise;
    this.sending ??= this.run();
    return done;
  }

  /** Resolves once no send is on its way (and none is due). */
  async idle(): Promise<void> {
    while (this.sending) await this.sending;
  }

  private async run(): Promise<void> {
    while (this.waiting) {
      // This send covers every wake made before it starts.
      const covered = this.waiting;
      this.waiting = undefined;
      try {
        await this.send();
      } catch (err) {
        try {
          this.onError(err instanceof Error ? err : new Error(String(err)));
        } catch {
          // A throwing error handler must not stop the sends to come.
        }
      }
      covered.resolve();
    }
    this.sending = undefined;
  }
}
