/** A cancellable timer handle returned by {@link Clock.setTimeout}. */
export interface ClockTimer {
  cancel(): void;
}

/**
 * Source of time for the engine and stores. Injected so that backoff, lease,
 * timeout and poll behaviour can be tested with {@link ManualClock} instead of sleeping.
 */
export interface Clock {
  /** Milliseconds since the Unix epoch. */
  now(): number;
  /** Calls `fn` once after `ms` milliseconds of this clock's time. */
  setTimeout(fn: () => void, ms: number): ClockTimer;
}

/** The wall clock, with real timers (unref'd so they never keep a process alive). */
export const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout(fn, ms) {
    const handle = setTimeout(fn, Math.max(0, ms));
    (handle as { unref?: () => void }).unref?.();
    return { cancel: () => clearTimeout(handle) };
  },
};

/** A clock that only moves when told to; timers fire inside {@link ManualClock.advance}. */
export interface ManualClock extends Clock {
  /** Moves time forward by `ms` and fires every timer that became due, in order. */
  advance(ms: number): void;
  /** Sets the time (never backwards) and fires due timers. */
  set(time: number | Date): void;
  /** Number of timers waiting to fire. */
  pendingTimers(): number;
}

/**
 * Creates a {@link ManualClock} starting at `start` (default 2026-01-01T00:00:00Z).
 *
 * @example
 * ```ts
 * const clock = createManualClock();
 * const engine = createEngine({ store: new MemoryWorkflowStore({ clock }), workflows: [wf], clock });
 * clock.advance(30_000); // a backoff of 30 s has now elapsed
 * ```
 */
export function createManualClock(start: number | Date = Date.UTC(2026, 0, 1)): ManualClock {
  let current = typeof start === 'number' ? start : start.getTime();
  let seq = 0;
  const timers: { at: number; seq: number; fn: () => void }[] = [];
  const fireDue = (): void => {
    for (;;) {
      timers.sort((a, b) => a.at - b.at || a.seq - b.seq);
      const next = timers[0];
      if (!next || next.at > current) return;
      timers.shift();
      next.fn();
    }
  };
  return {
    now: () => current,
    setTimeout(fn, ms) {
      const timer = { at: current + Math.max(0, ms), seq: seq++, fn };
      timers.push(timer);
      return {
        cancel() {
          const i = timers.indexOf(timer);
          if (i >= 0) timers.splice(i, 1);
        },
      };
    },
    advance(ms) {
      if (!(ms >= 0)) throw new RangeError('advance(ms) needs a non-negative number');
      current += ms;
      fireDue();
    },
    set(time) {
      const t = typeof time === 'number' ? time : time.getTime();
      if (t < current) throw new RangeError('a manual clock never goes backwards');
      current = t;
      fireDue();
    },
    pendingTimers: () => timers.length,
  };
}
