/**
 * Checks and normal forms every store applies to what it is given, so that
 * the stores agree on them.
 *
 * @module
 */
import type { HistoryRecord, NewHistoryEntry } from './workflow-store.js';

/** A date field: a copy of a valid `Date`, or null; anything else is a `TypeError` naming `field`. */
export function checkedDate(value: unknown, field: string): Date | null {
  const ms = checkedTime(value, field);
  return ms === null ? null : new Date(ms);
}

/** {@link checkedDate}'s check, giving the time in epoch ms. */
export function checkedTime(value: unknown, field: string): number | null {
  if (value === null || value === undefined) return null;
  if (value instanceof Date) {
    const ms = value.getTime();
    if (!Number.isNaN(ms)) return ms;
  }
  throw new TypeError(`${field} must be a valid Date or null`);
}

/**
 * A history entry with every optional field made explicit (null) and its
 * `at` checked; `detail` goes through `detail` (a store's JSON normal form).
 */
export function normalizeHistory(entry: NewHistoryEntry, detail: (value: unknown) => unknown): NewHistoryEntry {
  const out: NewHistoryEntry = {
    kind: entry.kind,
    stepName: entry.stepName ?? null,
    from: entry.from ?? null,
    to: entry.to ?? null,
    actor: entry.actor ?? null,
    reason: entry.reason ?? null,
    action: entry.action ?? null,
    detail: detail(entry.detail),
  };
  const at = checkedDate(entry.at ?? null, 'at');
  if (at !== null) out.at = at;
  return out;
}

/** A history entry a claim writes itself: no actor, reason, action or detail. */
export function claimHistoryEntry(kind: HistoryRecord['kind'], stepName: string | null, from: string | null, to: string | null): NewHistoryEntry {
  return { kind, stepName, from, to, actor: null, reason: null, action: null, detail: null };
}
