/**
 * Counts the statements a Kysely instance sends, through Kysely's `log` hook
 * (which sees every query, `begin` and `commit` included). On Postgres each
 * statement is one network round trip.
 */
import type { LogConfig, LogEvent } from 'kysely';

/**
 * Statement counts, in total and by a short label (`begin`, `commit`,
 * `select … for update`, `with (insert+update)`, …), and the time Kysely saw
 * each kind take (send to result, so waits for a lock or for the pool's
 * connection are not in it; concurrent statements add up).
 */
export interface StatementCounts {
  total: number;
  byKind: Record<string, number>;
  totalMs: number;
  msByKind: Record<string, number>;
}

export const NO_STATEMENTS: StatementCounts = { total: 0, byKind: {}, totalMs: 0, msByKind: {} };

export class StatementCounter {
  private total = 0;
  private totalMs = 0;
  private readonly kinds = new Map<string, { n: number; ms: number }>();
  /** Labels by SQL text: the store sends the same texts again and again. */
  private readonly kindOf = new Map<string, string>();

  /** The `log` option to give to `new Kysely({ … })`. */
  readonly log: LogConfig = (event: LogEvent) => {
    if (event.level !== 'query') return;
    this.total++;
    this.totalMs += event.queryDurationMillis;
    const text = event.query.sql;
    let kind = this.kindOf.get(text);
    if (kind === undefined) {
      kind = statementKind(text);
      if (this.kindOf.size < 10_000) this.kindOf.set(text, kind);
    }
    const entry = this.kinds.get(kind);
    if (entry) {
      entry.n++;
      entry.ms += event.queryDurationMillis;
    } else {
      this.kinds.set(kind, { n: 1, ms: event.queryDurationMillis });
    }
  };

  snapshot(): StatementCounts {
    const byKind: Record<string, number> = {};
    const msByKind: Record<string, number> = {};
    for (const [kind, { n, ms }] of this.kinds) {
      byKind[kind] = n;
      msByKind[kind] = ms;
    }
    return { total: this.total, byKind, totalMs: this.totalMs, msByKind };
  }
}

/** The difference of two snapshots. */
export function diffCounts(after: StatementCounts, before: StatementCounts): StatementCounts {
  const byKind: Record<string, number> = {};
  const msByKind: Record<string, number> = {};
  for (const [kind, n] of Object.entries(after.byKind)) {
    const d = n - (before.byKind[kind] ?? 0);
    if (d === 0) continue;
    byKind[kind] = d;
    msByKind[kind] = (after.msByKind[kind] ?? 0) - (before.msByKind[kind] ?? 0);
  }
  return { total: after.total - before.total, byKind, totalMs: after.totalMs - before.totalMs, msByKind };
}

/** Adds snapshots (several processes' counts). */
export function sumCounts(counts: readonly StatementCounts[]): StatementCounts {
  const byKind: Record<string, number> = {};
  const msByKind: Record<string, number> = {};
  let total = 0;
  let totalMs = 0;
  for (const c of counts) {
    total += c.total;
    totalMs += c.totalMs;
    for (const [kind, n] of Object.entries(c.byKind)) byKind[kind] = (byKind[kind] ?? 0) + n;
    for (const [kind, ms] of Object.entries(c.msByKind)) msByKind[kind] = (msByKind[kind] ?? 0) + ms;
  }
  return { total, byKind, totalMs, msByKind };
}

/**
 * A short label for a statement: its leading keyword, the main keyword of a
 * `with` statement's final part, and whether it locks (`for update`) or
 * returns rows.
 */
export function statementKind(text: string): string {
  // Leading comments (the store marks its statements with one) are not the statement.
  const s = text.replace(/^\s*(\/\*.*?\*\/\s*)+/s, '').replace(/\s+/g, ' ').trim().toLowerCase();
  const head = /^[a-z]+/.exec(s)?.[0] ?? '?';
  if (head === 'begin' || (head === 'start' && s.startsWith('start transaction'))) return 'begin';
  if (head === 'commit' || head === 'rollback' || head === 'pragma') return head;
  if (head === 'with') {
    const parts: string[] = [];
    if (/\binsert into\b/.test(s)) parts.push('insert');
    if (/\bupdate\b[^()]*\bset\b/.test(s)) parts.push('update');
    if (/\bfor update\b/.test(s)) parts.push('lock');
    return `with (${parts.join('+') || 'select'})`;
  }
  const suffix = /\bfor update\b/.test(s) ? ' … for update' : /\breturning\b/.test(s) ? ' … returning' : '';
  const table = /\b(?:from|into|update) "?([a-z_]+)"?/.exec(s)?.[1];
  return `${head}${table ? ` ${table}` : ''}${suffix}`;
}
