/**
 * The database clock as this process can tell it without a round trip: the
 * local clock plus an offset measured from the statements that read the
 * database clock.
 *
 * @module
 */

/** How long a reading of the database clock is trusted. */
export const CLOCK_READING_TTL_MS = 5_000;

/** Readings kept at most (the newest ones within {@link CLOCK_READING_TTL_MS}). */
const MAX_READINGS = 32;

/** What one reading tells of the offset (database clock minus local clock): it lies in `[low, high]`. */
interface Reading {
  low: number;
  high: number;
  at: number;
}

/**
 * A reading taken at local time `sent` whose reply came at `received` says
 * that the database clock showed `databaseTime` somewhere in between, so the
 * offset lies between `databaseTime - received` and `databaseTime - sent`.
 * Where in between depends on what the round trip waited for: a statement
 * that queued for a pooled connection reads the clock late, and a reply that
 * waits for a busy event loop is read late too. Taking the middle, as a
 * symmetric round trip would allow, put the estimate ahead of the database
 * by half of such waits: a step made due "now" by a process with a busy pool
 * was then not yet due for claims in other processes, for tens of
 * milliseconds.
 *
 * So the estimate is the highest low bound of the recent readings: never
 * ahead of the database clock (while neither clock is stepped), and behind
 * it by at most the shortest recent round trip. If the readings contradict
 * each other (a low bound above another's high bound: a clock was stepped),
 * only the newest counts.
 */
export class DatabaseClockEstimate {
  private readings: Reading[] = [];
  private offset = 0;
  /** How far the offset may lie above {@link offset}: the width of the readings' common bound. */
  private width = 0;
  private observedAt = Number.NEGATIVE_INFINITY;

  /** Records a reading of `databaseTime` by a statement sent at local time `sent`, answered at `received`. */
  observe(databaseTime: number, sent: number, received: number): void {
    const reading: Reading = { low: databaseTime - Math.max(sent, received), high: databaseTime - Math.min(sent, received), at: received };
    const kept = this.readings.filter((r) => received - r.at < CLOCK_READING_TTL_MS && r.at <= received);
    kept.push(reading);
    if (kept.length > MAX_READINGS) kept.splice(0, kept.length - MAX_READINGS);
    let low = Number.NEGATIVE_INFINITY;
    let high = Number.POSITIVE_INFINITY;
    for (const r of kept) {
      low = Math.max(low, r.low);
      high = Math.min(high, r.high);
    }
    if (low > high) {
      this.readings = [reading];
      this.offset = reading.low;
      this.width = reading.high - reading.low;
    } else {
      this.readings = kept;
      this.offset = low;
      this.width = high - low;
    }
    this.observedAt = received;
  }

  /** Whether a reading is recent enough at local time `localNow` to tell the time without one. */
  knows(localNow: number): boolean {
    return localNow >= this.observedAt && localNow - this.observedAt < CLOCK_READING_TTL_MS;
  }

  /** The database clock's estimated time at local time `localNow`. */
  at(localNow: number): number {
    return localNow + this.offset;
  }

  /**
   * How far the database clock may be ahead of {@link at}: at most the
   * shortest recent round trip. A deadline counted from `at` and this much
   * later is not early by the database clock.
   */
  uncertainty(): number {
    return this.width;
  }
}
