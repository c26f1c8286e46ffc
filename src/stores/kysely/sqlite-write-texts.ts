/**
 * Statement texts of the Kysely store's hot SQLite writes (creates, result
 * writes, claims' history, and the writes of a group-commit batch), built as strings with `?` placeholders
 * instead of Kysely query trees. Building and compiling a tree costs more
 * than SQLite takes to run a small statement; a text depends only on the
 * columns and the number of rows, so it is built once and kept, and
 * `cachedStatements` then prepares it once.
 *
 * @module
 */
import { TextCache } from './text-cache.js';
import { WORKFLOW_INSERT_COLUMNS, WORKFLOW_VALUE_COLUMNS, workflowInsertCells } from './workflow-insert.js';

/** The tables as SQL (quoted, with the store's prefix). */
export interface SqliteTables {
  workflows: string;
  steps: string;
  history: string;
}

/** A statement ready for `CompiledQuery.raw`. */
export interface SqliteStatement {
  sql: string;
  parameters: unknown[];
}

export class SqliteWriteTexts {
  /** Texts kept at most 512: a workload repeats a handful. */
  private readonly texts = new TextCache(512);

  constructor(private readonly tables: SqliteTables) {}

  /**
   * A workflow's insert, unless its idempotency key is taken; returns the new row's id (no row when the key is taken).
   * Parameters: id, tenant id, type, service slug, status, definition version,
   * input (JSON text), idempotency key, last history seq, created at, updated at.
   */
  createWorkflow(): string {
    return this.texts.get(
      'create',
      () =>
        `insert into ${this.tables.workflows} (${WORKFLOW_INSERT_COLUMNS})
      values (${workflowInsertCells(WORKFLOW_VALUE_COLUMNS.map(() => '?'))})
      on conflict (tenant_id, idempotency_key) do nothing returning id`,
    );
  }

  /** `insert into <table> (<columns>) values (?, …), …`: `rows` rows of `columns.length` placeholders. */
  insert(table: keyof SqliteTables, columns: readonly string[], rows: number): string {
    return this.texts.get(`i|${table}|${columns.join(',')}|${rows}`, () => {
      const row = `(${columns.map(() => '?').join(', ')})`;
      return `insert into ${this.tables[table]} (${columns.join(', ')}) values ${Array.from({ length: rows }, () => row).join(', ')}`;
    });
  }

  /**
   * `UPDATE … FROM (VALUES …)` of workflows (by id) or steps (by workflow id
   * and name, fenced where a row says so), setting `columns` from each row;
   * a workflow's `version` is raised. Each row is its keys then its values:
   * workflows `(id, …)`, steps `(workflow_id, name, fenced 0/1, expected lease token, …)`.
   */
  update(table: 'workflows' | 'steps', columns: readonly string[], rows: number): string {
    return this.texts.get(`u|${table}|${columns.join(',')}|${rows}`, () => {
      const keys = table === 'workflows' ? ['k_id'] : ['k_wf', 'k_name', 'k_fenced', 'k_expected'];
      const alias = table === 'workflows' ? 'w' : 's';
      const names = [...keys, ...columns.map((_, i) => `c${i}`)];
      const row = `(${names.map(() => '?').join(', ')})`;
      const sets = columns.map((c, i) => `${quote(c)} = v.${quote(`c${i}`)}`);
      if (table === 'workflows') sets.push('version = version + 1');
      if (sets.length === 0) sets.push(`name = ${alias}.name`);
      const where =
        table === 'workflows'
          ? 'w.id = v."k_id"'
          : 's.workflow_id = v."k_wf" and s.name = v."k_name" and (not v."k_fenced" or s.lease_token is v."k_expected")';
      return (
        `with v(${names.map(quote).join(', ')}) as (values ${Array.from({ length: rows }, () => row).join(', ')}) ` +
        `update ${this.tables[table]} as ${alias} set ${sets.join(', ')} from v where ${where}`
      );
    });
  }

  /**
   * One workflow's update: `columns` from the parameters, then its id (and,
   * with `checkVersion`, the version it must still have); the version is raised.
   */
  updateWorkflow(columns: readonly string[], checkVersion: boolean): string {
    return this.texts.get(`uw|${columns.join(',')}|${checkVersion}`, () => {
      const sets = [...columns.map((c) => `${quote(c)} = ?`), 'version = version + 1'];
      return `update ${this.tables.workflows} set ${sets.join(', ')} where id = ?${checkVersion ? ' and version = ?' : ''}`;
    });
  }

  /**
   * One step's update: `columns` from the parameters, then its workflow id and
   * name (and, when `fenced`, the lease token it must still have).
   */
  updateStep(columns: readonly string[], fenced: boolean): string {
    return this.texts.get(`us|${columns.join(',')}|${fenced}`, () => {
      const sets = columns.length > 0 ? columns.map((c) => `${quote(c)} = ?`) : ['name = name'];
      return `update ${this.tables.steps} set ${sets.join(', ')} where workflow_id = ? and name = ?${fenced ? ' and lease_token is ?' : ''}`;
    });
  }
}

function quote(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}
