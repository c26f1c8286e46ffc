/**
 * The create statements of the Kysely store on Postgres: a workflow insert
 * with its steps and history in one statement, for one create or for many.
 *
 * One create's text has a row of values per step and history entry, so it
 * depends on their numbers; it is cached by shape. Many creates (group
 * commit) go out as one statement whose columns are arrays, unnested into
 * rows: one text for any number of creates, steps and entries, so a pool's
 * connections prepare it once.
 *
 * Both insert the steps and history only of workflows the insert wrote: a
 * create whose idempotency key is taken (earlier, or by an earlier create of
 * the same batch) writes nothing, and returns no row.
 *
 * @module
 */
import type { CasColumnType } from './kysely-cas-write.js';
import { HISTORY_COLUMNS, HISTORY_TYPES, timeParameter } from './kysely-cas-write.js';
import { TextCache } from './text-cache.js';
import { WORKFLOW_INSERT_COLUMNS, WORKFLOW_VALUE_COLUMNS, workflowInsertCells } from './workflow-insert.js';

/** Where a store's creates write, and what its statements add. */
export interface PgCreateShape {
  /** The tables as SQL (quoted, schema-qualified as the store's are). */
  workflows: string;
  steps: string;
  history: string;
  /** The step columns a create writes after `workflow_id`, with their types, in the order of {@link PgCreateValues.steps}. */
  stepColumns: readonly (readonly [column: string, type: CasColumnType])[];
  /** History entries without their own time take a parameter (an injected clock's now) instead of `statement_timestamp()`. */
  clock: boolean;
  /** The comment the statements start with (the prepared-statement marker). */
  prefix: string;
}

/** One create's values, collected (and checked) before it is queued or written. */
export interface PgCreateValues {
  /** The workflow row's values (see `workflowInsertValues`). */
  workflow: unknown[];
  /** Per step, its values in {@link PgCreateShape.stepColumns} order. */
  steps: unknown[][];
  /** Per history entry: its seq, its own time (null: the statement's, or the clock's), then kind to detail. */
  history: { seq: number; at: unknown; cells: unknown[] }[];
  /** Notifications are on and the create leaves a step claimable without a lease: other workers are to hear of it (the store notifies after the commit). */
  wakes: boolean;
}

/** What every create statement takes besides the creates' values. */
export interface PgCreateExtras {
  /** The injected clock's now, encoded (with {@link PgCreateShape.clock}). */
  now?: unknown;
}

/** A statement to run. */
export interface PgCreateStatement {
  sql: string;
  parameters: unknown[];
}

const WORKFLOW_TYPES: readonly CasColumnType[] = ['text', 'text', 'text', 'text', 'text', 'text', 'jsonb', 'text', 'integer', 'timestamptz'];

/** Builds the create statements of one store. */
export class PgCreateWriter {
  /** Single-create texts by shape. */
  private readonly texts = new TextCache(256);
  /** The batch text. */
  private batchText: string | undefined;

  constructor(private readonly shape: PgCreateShape) {}

  /** One create: its text depends on its numbers of steps and history entries, and which entries bring their own time. */
  single(values: PgCreateValues, extras: PgCreateExtras): PgCreateStatement {
    const parameters = [...values.workflow];
    for (const cells of values.steps) for (const value of cells) parameters.push(value);
    let ownTimes = '';
    for (const h of values.history) {
      parameters.push(h.seq);
      if (h.at !== null) parameters.push(h.at);
      ownTimes += h.at !== null ? 'a' : '-';
      for (const value of h.cells) parameters.push(value);
    }
    const clock = this.shape.clock && ownTimes.includes('-');
    if (clock) parameters.push(extras.now);
    const sql = this.texts.get(`${values.steps.length}:${ownTimes}`, () => this.singleText(values.steps.length, ownTimes, clock));
    return { sql, parameters };
  }

  /** Many creates in one statement: one array per column. */
  batch(list: readonly PgCreateValues[], extras: PgCreateExtras): PgCreateStatement {
    const workflow = WORKFLOW_TYPES.map(() => [] as unknown[]);
    const steps = [[], ...this.shape.stepColumns].map(() => [] as unknown[]);
    const history = HISTORY_COLUMNS.map(() => [] as unknown[]);
    for (const values of list) {
      values.workflow.forEach((value, i) => workflow[i]!.push(value));
      const id = values.workflow[0];
      for (const cells of values.steps) {
        steps[0]!.push(id);
        cells.forEach((value, i) => steps[i + 1]!.push(value));
      }
      for (const h of values.history) {
        history[0]!.push(id);
        history[1]!.push(h.seq);
        history[2]!.push(h.at);
        h.cells.forEach((value, i) => history[i + 3]!.push(value));
      }
    }
    const parameters: unknown[] = [...workflow, ...steps, ...history].map(arrayLiteral);
    if (this.shape.clock) parameters.push(extras.now);
    const sql = (this.batchText ??= this.arrayText());
    return { sql, parameters };
  }

  /** The text of {@link single}: placeholders in the order its parameters are collected. */
  private singleText(steps: number, ownTimes: string, clock: boolean): string {
    let n = 0;
    const p = (type: CasColumnType) => `$${++n}::${type}`;
    const ctes = [this.workflowInsert(`values (${workflowInsertCells(WORKFLOW_TYPES.map(p))})`)];
    if (steps > 0) {
      const rows = Array.from({ length: steps }, () => `(${this.shape.stepColumns.map(([, t]) => p(t)).join(', ')})`);
      ctes.push(`steps as (
        insert into ${this.shape.steps} (workflow_id, ${this.stepColumnList()})
        select ins.id, v.* from ins cross join (values ${rows.join(', ')}) as v
      )`);
    }
    if (ownTimes.length > 0) {
      // After workflow_id: seq, at (the entry's own, or the default), then the rest.
      const [seqType, atType, ...cellTypes] = HISTORY_TYPES.slice(1) as [CasColumnType, CasColumnType, ...CasColumnType[]];
      const rows = [...ownTimes].map((mark) => {
        const seq = p(seqType);
        const at = mark === 'a' ? p(atType) : null;
        return { seq, at, cells: cellTypes.map(p) };
      });
      const defaultAt = clock ? p(atType) : 'statement_timestamp()';
      const values = rows.map((r) => `(${[r.seq, r.at ?? defaultAt, ...r.cells].join(', ')})`);
      ctes.push(`hist as (
        insert into ${this.shape.history} (${HISTORY_COLUMNS.join(', ')})
        select ins.id, v.* from ins cross join (values ${values.join(', ')}) as v
      )`);
    }
    return this.finish(ctes);
  }

  /** The text of {@link batch}. */
  private arrayText(): string {
    let n = 0;
    const p = (type: CasColumnType) => `$${++n}::${type}[]`;
    const w = WORKFLOW_TYPES.map(p);
    const s = [p('text'), ...this.shape.stepColumns.map(([, t]) => p(t))];
    const h = HISTORY_TYPES.map(p);
    const defaultAt = this.shape.clock ? `$${++n}::timestamptz` : 'statement_timestamp()';
    const historyCells = HISTORY_COLUMNS.map((c) => (c === 'at' ? `coalesce(v.at, ${defaultAt})` : `v.${c}`));
    // Rows come out of unnest in the arrays' order, so of two creates with one idempotency key the first is inserted.
    const ctes = [
      `w as (select * from unnest(${w.join(', ')}) as w(${WORKFLOW_VALUE_COLUMNS.join(', ')}))`,
      this.workflowInsert(`select ${workflowInsertCells(WORKFLOW_VALUE_COLUMNS)} from w`),
      `steps as (
        insert into ${this.shape.steps} (workflow_id, ${this.stepColumnList()})
        select v.* from unnest(${s.join(', ')}) as v(workflow_id, ${this.stepColumnList()})
        where v.workflow_id in (select id from ins)
      )`,
      `hist as (
        insert into ${this.shape.history} (${HISTORY_COLUMNS.join(', ')})
        select ${historyCells.join(', ')} from unnest(${h.join(', ')}) as v(${HISTORY_COLUMNS.join(', ')})
        where v.workflow_id in (select id from ins)
      )`,
    ];
    return this.finish(ctes);
  }

  private workflowInsert(rows: string): string {
    return `ins as (
        insert into ${this.shape.workflows} (${WORKFLOW_INSERT_COLUMNS})
        ${rows}
        on conflict (tenant_id, idempotency_key) do nothing
        returning id, xmin::text as row_version
      )`;
  }

  private stepColumnList(): string {
    return this.shape.stepColumns.map(([c]) => c).join(', ');
  }

  /** The statement from its CTEs: the id and row version of each inserted workflow (the store knows the rest: it sent it). */
  private finish(ctes: string[]): string {
    return `${this.shape.prefix} with ${ctes.join(', ')} select id, row_version from ins`;
  }
}

/** An element that must be escaped inside a quoted array element. */
const ARRAY_ESCAPE = /["\\]/;
const ARRAY_ESCAPE_ALL = /["\\]/g;

/**
 * A one-dimensional Postgres array literal (`{"a","b",NULL}`) of the values
 * of one column, as text the statement casts to the column's array type.
 * The `pg` driver would build it from a JavaScript array itself, element by
 * element through several small strings each; this joins a column whose
 * values need no escaping in one step. Each element is quoted, `"` and `\`
 * escaped with a backslash, and null is `NULL`; numbers and booleans are
 * their text, a `Date` its {@link timeParameter} text, and any other object its JSON.
 */
export function arrayLiteral(values: readonly unknown[]): string {
  let plain = true;
  for (const value of values) {
    if (typeof value !== 'string' || ARRAY_ESCAPE.test(value)) {
      plain = false;
      break;
    }
  }
  if (plain) return values.length === 0 ? '{}' : `{"${(values as readonly string[]).join('","')}"}`;
  const elements = values.map((value) => {
    if (value === null || value === undefined) return 'NULL';
    const text =
      typeof value === 'string'
        ? value
        : typeof value === 'number' || typeof value === 'bigint' || typeof value === 'boolean'
          ? String(value)
          : value instanceof Date
            ? timeParameter(value)
            : JSON.stringify(value);
    return `"${ARRAY_ESCAPE.test(text) ? text.replace(ARRAY_ESCAPE_ALL, '\\$&') : text}"`;
  });
  return `{${elements.join(',')}}`;
}
