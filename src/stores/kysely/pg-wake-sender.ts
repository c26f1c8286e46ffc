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
 * Coalesces wake-ups: {@link wake} starts a send unless one is on its way, in
 * which case one more is sent once it has ended. So every call is followed by
 * a send that starts after it, and under load a single send covers all the
 * writes that committed while the one before it was on its way.
 */
export class WakeSender {
  private sending: Promise<void> | undefined;
  private again = false;

  /**
   * @param send sends one notification.
   * @param onError told of a send that failed (the writes it covered have
   *   committed; the other processes find their work at their next poll).
   */
  constructor(
    private readonly send: () => Promise<void>,
    private readonly onError: (error: Error) => void,
  ) {}

  /** Asks for a notification sent after this call. */
  wake(): void {
    if (this.sending) {
      this.again = true;
      return;
    }
    this.sending = this.run();
  }

  /** Resolves once no send is on its way (and none is due). */
  async idle(): Promise<void> {
    while (this.sending) await this.sending;
  }

  private async run(): Promise<void> {
    do {
      this.again = false;
      try {
        await this.send();
      } catch (err) {
        try {
          this.onError(err instanceof Error ? err : new Error(String(err)));
        } catch {
          // A throwing error handler must not stop the sends to come.
        }
      }
    } while (this.again);
    this.sending = undefined;
  }
}
