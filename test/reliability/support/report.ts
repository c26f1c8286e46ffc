/**
 * The reliability report: when `SAGALINE_RELIABILITY_REPORT` names a file,
 * every reliability case appends one JSON line
 * `{ suite, fault, iterations, stores, outcome, durationMs, detail? }` to it.
 * `docs/reliability.md` is generated from that file.
 */
import { appendFileSync, mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import type { Tally } from './iterations.js';

/** One case of the report. */
export interface ReliabilityRecord {
  /** The suite (file) the case belongs to, e.g. `admin-races`. */
  suite: string;
  /** The fault, race or input the case injects, in a few words. */
  fault: string;
  /** Iterations that actually ran (a time budget may stop a loop early). */
  iterations: number;
  /** Store names the case ran on. */
  stores: string[];
  outcome: 'passed' | 'failed';
  durationMs: number;
  /** The first line of the failure, for a failed case. */
  detail?: string;
}

/** Appends a record to the report file, if one is configured. */
export function recordCase(record: ReliabilityRecord): void {
  const file = process.env['SAGALINE_RELIABILITY_REPORT'];
  if (file === undefined || file.trim() === '') return;
  mkdirSync(dirname(file), { recursive: true });
  // One write per line with O_APPEND: lines from parallel test files do not interleave.
  appendFileSync(file, `${JSON.stringify(record)}\n`, { encoding: 'utf8', flag: 'a' });
}

/**
 * Runs one reported case. `body` counts its iterations in the tally it is
 * given; the case is recorded as passed, or as failed (and the error rethrown).
 */
export async function reportedCase(meta: { suite: string; fault: string; stores: string[] }, body: (tally: Tally) => Promise<void>): Promise<void> {
  const started = Date.now();
  const tally: Tally = { iterations: 0 };
  try {
    await body(tally);
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    recordCase({
      ...meta,
      iterations: tally.iterations,
      outcome: 'failed',
      durationMs: Date.now() - started,
      detail: (message.split('\n')[0] ?? '').slice(0, 300),
    });
    throw err;
  }
  recordCase({ ...meta, iterations: tally.iterations, outcome: 'passed', durationMs: Date.now() - started });
}
