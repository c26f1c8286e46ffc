/**
 * The compare-and-set write of optimistic transactions on Postgres: the
 * buffered writes of one or many workflows in one statement, applied to each
 * workflow only if its row is still the version its transaction read (`xmin`)
 * and every fenced step still has the expected lease token.
 *
 * Every row carries all patchable columns and a bit mask of those it sets,
 * so the statement's text depends only on how many rows of each kind it
 * writes (see {@link CasWriter}).
 *
 * @module
 */
import type { NewHistoryEntry } from '../../storage/workflow-store.js';
import { TextCache } from './text-cache.js';

/** How a column is stored: its Postgres type. */
export type CasColumnType = 'text' | 'integer' | 'timestamptz' | 'jsonb';

/** One column value as the store encoded it for the driver. */
export interface CasCell {
  value: unknown;
}

/** What the write needs of one transaction (the store's buffered transaction has these fields). */
export interface CasTransaction {
  readonly now: Date;
  readonly workflowId: string;
  readonly historySeq: number;
  readonly workflowCells: ReadonlyMap<string, CasCell>;
  readonly stepWrites: ReadonlyMap<string, { cells: ReadonlyMap<string, CasCell>; fence: { expected: string | null } | null }>;
  readonly history: readonly NewHistoryEntry[];
}

/** One transaction to write, with the row version it read. */
export interface CasItem {
  tx: CasTransaction;
  version: string;
}

/** The tables (as SQL, schema-qualified and quoted) and the patchable columns. */
export interface CasShape {
  workflows: string;
  steps: string;
  history: string;
  workflowColumns: readonly (readonly [column: string, type: CasColumnType])[];
  stepColumns: readonly (readonly [column: string, type: CasColumnType])[];
  /** Text every statement starts with (the store's statement marker). */
  prefix: string;
}

/** A statement ready for `CompiledQuery.raw`. */
export interface CasStatement {
  sql: string;
  parameters: unknown[];
}

/** Row counts of one write: its statement's text depends on these and on the shape only. */
interface CasCounts {
  workflows: number;
  fences: number;
  steps: number;
  history: number;
}

/** The history table's columns, in the order every history insert of the store writes them. */
export const HISTORY_COLUMNS = ['workflow_id', 'seq', 'at', 'kind', 'step_name', 'from_status', 'to_status', 'actor', 'reason', 'action', 'detail'];
/** Their Postgres types. */
export const HISTORY_TYPES: readonly CasColumnType[] = ['text', 'integer', 'timestamptz', 'text', 'text', 'text', 'text', 'text', 'text', 'text', 'jsonb'];

/**
 * Builds compare-and-set writes for one store's tables. Texts are cached by
 * row counts: a workload repeats a handful of them, so with
 * `preparedStatements` each is planned once per connection, and a plan for
 * exactly the rows given (Postgres keeps a generic plan for such statements;
 * with array parameters it would re-plan every call, estimating 100 rows for
 * each array).
 */
export class CasWriter {
  private readonly texts = new TextCache(1024);

  constructor(private readonly shape: CasShape) {}

  /** The statement writing `items`. */
  statement(items: readonly CasItem[]): CasStatement {
    if (items.length === 1) return this.single(items[0]!);
    const { parameters, counts } = this.parameters(items);
    // (Row counts are rounded up to powers of two by padding, so a workload needs few texts.)
    const key = `${counts.workflows},${counts.fences},${counts.steps},${counts.history}`;
    return { sql: this.texts.get(key, () => this.text(counts)), parameters };
  }

  /**
   * One workflow's write: each row by its key, setting only the columns the
   * write sets, with no rows of values to join. On Postgres this costs about
   * a fifth less server time than the batch form with one row (which joins
   * the values, and sets every column through a mask), and sends fewer
   * parameters. A null is written as a literal and a time equal to the
   * transaction's as its one parameter (`$3`), so a transition sends about
   * half the parameters it sets: each costs the driver and the server a
   * conversion. The text depends on which columns each row sets (and which
   * of them are null or the transaction's time), the number of fences, the
   * same of each history entry: a workload repeats a
   * few such sets, so texts are cached by them.
   *
   * The key is also the text's description, read back by {@link singleText}:
   * `s` and, for each workflow column set, its index followed by `n` for
   * null or `t` for the transaction's time (`s,0,3t`); then for each step
   * write in order, `:f` if it is fenced and `:s` with its columns the same
   * way, if it sets any; then `:h` and, for each history entry, its code
   * from {@link pushHistoryCode}. Parameters follow
   * the same order, fences before step rows.
   */
  private single({ tx, version }: CasItem): CasStatement {
    const shape = this.shape;
    const nowMs = tx.now.getTime();
    const now = timeParameter(tx.now);
    const parameters: unknown[] = [tx.workflowId, version, now, tx.historySeq + tx.history.length];
    let key = 's';
    const columnKey = (i: number, value: unknown, out: unknown[]): string => {
      if (value === null || value === undefined) return `,${i}n`;
      if (value instanceof Date && value.getTime() === nowMs) return `,${i}t`;
      out.push(cellParameter(value));
      return `,${i}`;
    };
    shape.workflowColumns.forEach(([column], i) => {
      const cell = tx.workflowCells.get(column);
      if (cell !== undefined) key += columnKey(i, cell.value, parameters);
    });
    const fences: unknown[] = [];
    const steps: unknown[] = [];
    for (const [name, write] of tx.stepWrites) {
      if (write.fence) {
        fences.push(name, write.fence.expected);
        key += ':f';
      }
      // A write with no column matters only for its fence.
      if (write.cells.size === 0) continue;
      steps.push(name);
      key += ':s';
      shape.stepColumns.forEach(([column], i) => {
        const cell = write.cells.get(column);
        if (cell !== undefined) key += columnKey(i, cell.value, steps);
      });
    }
    parameters.push(...fences, ...steps);
    key += ':h';
    for (const h of tx.history) key += `,${pushHistoryCode(parameters, h, nowMs)}`;
    return { sql: this.texts.get(key, () => this.singleText(key)), parameters };
  }

  /** The text of {@link single} for a key it made: placeholders in the order its parameters are collected. */
  private singleText(key: string): string {
    const shape = this.shape;
    let n = 4;
    const p = (type: string) => `$${++n}::${type}`;
    const quote = (name: string) => `"${name}"`;
    /** A column's value in the text: a placeholder, a typed null, or the transaction's time. */
    const value = (token: string, type: string): string => (token.endsWith('n') ? `null::${type}` : token.endsWith('t') ? '$3::timestamptz' : p(type));
    const sets = (part: string, columns: CasShape['stepColumns']): string[] =>
      part
        .split(',')
        .slice(1)
        .map((token) => {
          const [column, type] = columns[Number.parseInt(token, 10)]!;
          return `${quote(column)} = ${value(token, type)}`;
        });
    const [workflowPart, ...rest] = key.split(':');
    const wfSets = ['version = w.version + 1', 'updated_at = $3::timestamptz', 'last_history_seq = $4::integer', ...sets(workflowPart!, shape.workflowColumns)];
    const fenced: string[] = [];
    const stepParts: string[] = [];
    let history: number[] = [];
    for (const part of rest) {
      if (part === 'f') {
        fenced.push(`
      and not exists (select 1 from ${shape.steps} s where s.workflow_id = $1::text and s.name = ${p('text')} and s.lease_token is distinct from ${p('text')})`);
      } else if (part.startsWith('h')) history = part.split(',').slice(1).map(Number);
    }
    // Step rows after the fences, as their parameters are collected.
    for (const part of rest) {
      if (part !== 's' && !part.startsWith('s,')) continue;
      const name = p('text');
      stepParts.push(`st${stepParts.length} as (
    update ${shape.steps} s set ${sets(part, shape.stepColumns).join(', ')}
    where s.workflow_id = $1::text and s.name = ${name} and exists (select 1 from wf)
  )`);
    }
    const parts = [
      `wf as (
    update ${shape.workflows} w set ${wfSets.join(', ')}
    where w.id = $1::text and w.xmin = $2::text::xid${fenced.join('')}
    returning w.id, w.xmin::text as version
  )`,
      ...stepParts,
    ];
    if (history.length > 0) {
      // `$4` is the sequence number of the last entry.
      const rows = history.map((code, r) => {
        const back = history.length - 1 - r;
        const at = code & 1 ? '$3::timestamptz' : p('timestamptz');
        const cells = HISTORY_TYPES.slice(3).map((type, j) => ((code >> (j + 1)) & 1 ? `null::${type}` : p(type)));
        return `(${back === 0 ? '$4::integer' : `$4::integer - ${back}`}, ${at}, ${cells.join(', ')})`;
      });
      parts.push(`hist as (
    insert into ${shape.history} (${HISTORY_COLUMNS.join(', ')})
    select $1::text, hv.* from (values ${rows.join(', ')}) as hv(${HISTORY_COLUMNS.slice(1).join(', ')}) where exists (select 1 from wf)
  )`);
    }
    return `${shape.prefix} with ${parts.join(',\n  ')}\nselect wf.id, wf.version from wf`;
  }

  private text(counts: CasCounts): string {
    const shape = this.shape;
    let n = 0;
    const quote = (name: string) => `"${name}"`;
    /** `(values ($1::t1, …), …) as alias(columns)`, or an empty relation of those columns. */
    const rows = (alias: string, columns: readonly string[], types: readonly string[], count: number): string => {
      if (count === 0) {
        const nulls = columns.map((c, i) => `null::${types[i]} as ${c}`).join(', ');
        return `(select ${nulls} where false) as ${alias}`;
      }
      const list: string[] = [];
      for (let r = 0; r < count; r++) list.push(`(${types.map((t) => `$${++n}::${t}`).join(', ')})`);
      return `(values ${list.join(', ')}) as ${alias}(${columns.join(', ')})`;
    };
    const wfColumns = ['id', 'version', 'mask', 'updated_at', 'last_history_seq', ...shape.workflowColumns.map((_, i) => `c${i}`)];
    const wfTypes = ['text', 'text', 'integer', 'timestamptz', 'integer', ...shape.workflowColumns.map(([, t]) => t)];
    const wfSets = [
      'version = w.version + 1',
      'updated_at = wv.updated_at',
      'last_history_seq = wv.last_history_seq',
      ...shape.workflowColumns.map(([column], i) => `${quote(column)} = case when (wv.mask & ${1 << i}) <> 0 then wv.c${i} else w.${quote(column)} end`),
    ];
    const wv = rows('wv', wfColumns, wfTypes, counts.workflows);
    const fv = rows('fv', ['workflow_id', 'name', 'expected'], ['text', 'text', 'text'], counts.fences);
    const stColumns = ['workflow_id', 'name', 'mask', ...shape.stepColumns.map((_, i) => `c${i}`)];
    const stTypes = ['text', 'text', 'integer', ...shape.stepColumns.map(([, t]) => t)];
    const stSets = shape.stepColumns.map(
      ([column], i) => `${quote(column)} = case when (sv.mask & ${1 << i}) <> 0 then sv.c${i} else s.${quote(column)} end`,
    );
    const sv = rows('sv', stColumns, stTypes, counts.steps);
    const hv = rows('hv', HISTORY_COLUMNS, HISTORY_TYPES, counts.history);
    // The workflows whose fence fails: an uncorrelated subquery, run once for the statement (correlated
    // with each workflow row, as `not exists`, a plan could scan the step table once per row).
    const fenced =
      counts.fences === 0
        ? ''
        : `
      and wv.id not in (
        select fv.workflow_id from ${fv} join ${shape.steps} s on s.workflow_id = fv.workflow_id and s.name = fv.name
        where s.lease_token is distinct from fv.expected)`;
    const parts = [
      `wf as (
    update ${shape.workflows} w set ${wfSets.join(', ')}
    from ${wv}
    where w.id = wv.id and w.xmin = wv.version::xid${fenced}
    returning w.id, w.xmin::text as version
  )`,
    ];
    if (counts.steps > 0) {
      parts.push(`st as (
    update ${shape.steps} s set ${stSets.join(', ')}
    from ${sv}
    where s.workflow_id = sv.workflow_id and s.name = sv.name and sv.workflow_id in (select id from wf)
  )`);
    }
    if (counts.history > 0) {
      parts.push(`hist as (
    insert into ${shape.history} (${HISTORY_COLUMNS.join(', ')})
    select hv.* from ${hv} where hv.workflow_id in (select id from wf)
  )`);
    }
    // One string per text, reused: the driver hashes and compares statement texts on every call.
    return `${shape.prefix} with ${parts.join(',\n  ')}\nselect wf.id, wf.version from wf`;
  }

  /** The parameters, in the order of the text's placeholders: workflows, fences, steps, history. */
  private parameters(items: readonly CasItem[]): { parameters: unknown[]; counts: CasCounts } {
    const shape = this.shape;
    const workflows: unknown[] = [];
    const fences: unknown[] = [];
    const steps: unknown[] = [];
    const history: unknown[] = [];
    const counts: CasCounts = { workflows: 0, fences: 0, steps: 0, history: 0 };
    for (const { tx, version } of items) {
      const id = tx.workflowId;
      const now = timeParameter(tx.now);
      const at = workflows.length;
      workflows.push(id, version, 0, now, tx.historySeq + tx.history.length);
      workflows[at + 2] = pushMaskedRow(workflows, shape.workflowColumns, tx.workflowCells);
      counts.workflows++;
      for (const [name, write] of tx.stepWrites) {
        if (write.fence) {
          fences.push(id, name, write.fence.expected);
          counts.fences++;
        }
        // A write with no column matters only for its fence.
        if (write.cells.size === 0) continue;
        const at = steps.length;
        steps.push(id, name, 0);
        steps[at + 2] = pushMaskedRow(steps, shape.stepColumns, write.cells);
        counts.steps++;
      }
      tx.history.forEach((h, i) => {
        history.push(id);
        pushHistoryValues(history, tx, now, h, i);
        counts.history++;
      });
    }
    // Pad each list with rows that match nothing (a null key) up to a power of two.
    const pad = (list: unknown[], count: number, width: number): number => {
      const padded = count === 0 ? 0 : 2 ** Math.ceil(Math.log2(count));
      for (let i = count * width; i < padded * width; i++) list.push(null);
      return padded;
    };
    counts.workflows = pad(workflows, counts.workflows, 5 + shape.workflowColumns.length);
    counts.fences = pad(fences, counts.fences, 3);
    counts.steps = pad(steps, counts.steps, 3 + shape.stepColumns.length);
    counts.history = pad(history, counts.history, HISTORY_COLUMNS.length);
    return { parameters: workflows.concat(fences, steps, history), counts };
  }
}

/** The values of history entry `i` of `tx`, in {@link HISTORY_COLUMNS} order after `workflow_id`; `now` is `tx.now` as a parameter. */
function pushHistoryValues(out: unknown[], tx: CasTransaction, now: string, h: NewHistoryEntry, i: number): void {
  out.push(tx.historySeq + i + 1, h.at ? timeParameter(h.at) : now);
  pushHistoryCells(out, h);
}

/**
 * Pushes the parameters of history entry `h` of a one-workflow write (see
 * `CasWriter.single`): its time unless it is the transaction's (`nowMs`),
 * then its cells after `at` that are not null. Returns the entry's code: bit
 * 0 set when its time is the transaction's, bit `j + 1` when cell `j` (kind
 * to detail) is null.
 */
function pushHistoryCode(out: unknown[], h: NewHistoryEntry, nowMs: number): number {
  let code = 0;
  if (h.at && h.at.getTime() !== nowMs) out.push(timeParameter(h.at));
  else code = 1;
  const cells: unknown[] = [];
  pushHistoryCells(cells, h);
  for (let j = 0; j < cells.length; j++) {
    if (cells[j] === null) code |= 1 << (j + 1);
    else out.push(cells[j]);
  }
  return code;
}

/**
 * A time as a Postgres parameter: ISO 8601 text in UTC, which every statement
 * of the store casts to `timestamptz`. The `pg` driver would format a `Date`
 * itself, in local time, through a dozen small strings per value: a
 * group-commit workflow sent about 33 times, about a tenth of all the memory
 * the store allocated per workflow. An invalid date is a `RangeError` here,
 * before anything is sent.
 *
 * The last text is kept: a statement's times are mostly its transaction's
 * (a create's rows and history entries all carry it), and formatting one is
 * among the costlier things a write does in Node.
 */
export function timeParameter(date: Date): string {
  const ms = date.getTime();
  // NaN (an invalid date) never equals the kept time: it reaches toISOString, which throws.
  if (ms === lastTime.ms) return lastTime.text;
  const text = date.toISOString();
  lastTime.ms = ms;
  lastTime.text = text;
  return text;
}

/** The last time {@link timeParameter} formatted. */
const lastTime = { ms: Number.NaN, text: '' };

/**
 * The values of a history entry in {@link HISTORY_COLUMNS} order after
 * `workflow_id`, `seq` and `at` (kind to detail, the detail as JSON text),
 * as every history insert of the store writes them.
 */
export function pushHistoryCells(out: unknown[], h: NewHistoryEntry): void {
  out.push(h.kind, h.stepName ?? null, h.from ?? null, h.to ?? null, h.actor ?? null, h.reason ?? null, h.action ?? null, jsonText(h.detail));
}

/** Pushes a row's value for every column (null where it sets none) onto `out`; returns the mask of the columns it sets. */
function pushMaskedRow(out: unknown[], columns: CasShape['stepColumns'], cells: ReadonlyMap<string, CasCell>): number {
  let mask = 0;
  for (let i = 0; i < columns.length; i++) {
    const cell = cells.get(columns[i]![0]);
    if (cell === undefined) {
      out.push(null);
      continue;
    }
    mask |= 1 << i;
    out.push(cellParameter(cell.value));
  }
  return mask;
}

/** A cell's value as a Postgres parameter: times (kept as `Date`s in cells) as {@link timeParameter} text. */
export function cellParameter(value: unknown): unknown {
  return value instanceof Date ? timeParameter(value) : value;
}

/** JSON text for a JSON column, or null (`undefined`, functions and the like store as null). */
export function jsonText(value: unknown): string | null {
  if (value === null || value === undefined) return null;
  const text = JSON.stringify(value) as string | undefined;
  return text === undefined || text === 'null' ? null : text;
}
