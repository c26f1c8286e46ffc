/**
 * Iteration counts and time bounds of the reliability suites.
 *
 * `npm test` runs every case at a small count (the `quick` argument), so that
 * each file takes a few seconds. The long run sets
 * `SAGALINE_RELIABILITY_ITERATIONS` (e.g. 500): every loop then runs that many
 * times (scaled per case), bounded by `SAGALINE_RELIABILITY_BUDGET_MS` per case.
 */
import { storeFactories, type StoreFactory } from '../../support/store-factories.js';

function positiveInt(name: string): number | undefined {
  const raw = process.env[name];
  if (raw === undefined || raw.trim() === '') return undefined;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 1) throw new Error(`${name} must be a positive integer, got ${JSON.stringify(raw)}`);
  return n;
}

/** True when `SAGALINE_RELIABILITY_ITERATIONS` is set (the long run). */
export function isLongRun(): boolean {
  return positiveInt('SAGALINE_RELIABILITY_ITERATIONS') !== undefined;
}

/**
 * The iteration count of one loop: `quick` in `npm test`; in the long run,
 * `SAGALINE_RELIABILITY_ITERATIONS × scale` (at least `quick`).
 */
export function iterations(quick: number, scale = 1): number {
  const long = positiveInt('SAGALINE_RELIABILITY_ITERATIONS');
  if (long === undefined) return quick;
  return Math.max(quick, Math.round(long * scale));
}

/** Wall-clock bound of one case's loop: `SAGALINE_RELIABILITY_BUDGET_MS`, default 20 s (quick) or 10 min (long run). */
export function budgetMs(): number {
  return positiveInt('SAGALINE_RELIABILITY_BUDGET_MS') ?? (isLongRun() ? 600_000 : 20_000);
}

/** A vitest timeout for one case: its budget plus room for set-up and the final checks. */
export function caseTimeoutMs(): number {
  return budgetMs() + 60_000;
}

/** Counts the iterations a case has run so far (read by the report, also when the case fails). */
export interface Tally {
  iterations: number;
}

/**
 * Runs `body(i)` for `i = 0 … count - 1`, stopping early (never in the middle
 * of an iteration) once the time budget is spent. Adds every finished
 * iteration to `tally` and resolves to the number that ran.
 */
export async function loop(count: number, tally: Tally, body: (i: number) => Promise<void>, budget = budgetMs()): Promise<number> {
  const started = Date.now();
  let i = 0;
  for (; i < count; i++) {
    if (i > 0 && Date.now() - started > budget) break;
    await body(i);
    tally.iterations++;
  }
  return i;
}

/**
 * The stores the reliability suites run on: every factory of
 * `test/support/store-factories.ts`, or those named in
 * `SAGALINE_RELIABILITY_STORES` (comma-separated, e.g. `memory,sqlite`).
 */
export function reliabilityStores(): StoreFactory[] {
  const raw = process.env['SAGALINE_RELIABILITY_STORES'];
  if (raw === undefined || raw.trim() === '') return storeFactories;
  const names = raw.split(',').map((s) => s.trim()).filter(Boolean);
  const unknown = names.filter((n) => !storeFactories.some((f) => f.name === n));
  if (unknown.length > 0) throw new Error(`SAGALINE_RELIABILITY_STORES names unknown stores: ${unknown.join(', ')}`);
  return storeFactories.filter((f) => names.includes(f.name));
}

/** A quick count that depends on the store: a database store pays for a fresh database (or schema) per iteration. */
export function perStore(name: StoreFactory['name'], counts: Record<StoreFactory['name'], number>): number {
  return counts[name];
}
