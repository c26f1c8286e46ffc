/**
 * The workflow row a create inserts, shared by every create statement of the
 * Kysely store (SQLite's, and Postgres' for one create or many): its columns,
 * the values a create collects for it, and the constants the rest start at.
 *
 * @module
 */
import type { CreateWorkflowInput, WorkflowRecord } from '../../storage/workflow-store.js';
import { newWorkflowRecord } from '../../storage/new-records.js';
import { jsonText } from './kysely-cas-write.js';

/** The columns of a workflow insert, in the order {@link workflowInsertCells} fills them. */
export const WORKFLOW_INSERT_COLUMNS =
  'id, tenant_id, type, service_slug, status, definition_version, input, output, error, idempotency_key, current_step, retry_count, last_history_seq, created_at, updated_at, completed_at';

/** The values a create collects, by column name, in the order of {@link workflowInsertValues}. */
export const WORKFLOW_VALUE_COLUMNS = [
  'id',
  'tenant_id',
  'type',
  'service_slug',
  'status',
  'definition_version',
  'input',
  'idempotency_key',
  'last_history_seq',
  'created_at',
] as const;

/**
 * The SQL of each of {@link WORKFLOW_INSERT_COLUMNS}, given the SQL of each
 * collected value (placeholders, or column names of a row source): a new
 * workflow has no output, error or current step, no retries and no end, and
 * is updated when it is created.
 */
export function workflowInsertCells(values: readonly string[]): string {
  if (values.length !== WORKFLOW_VALUE_COLUMNS.length) throw new TypeError(`a workflow insert takes ${WORKFLOW_VALUE_COLUMNS.length} values, got ${values.length}`);
  const [id, tenant, type, slug, status, version, input, idempotency, historySeq, created] = values;
  return [id, tenant, type, slug, status, version, input, 'null', 'null', idempotency, 'null', '0', historySeq, created, created, 'null'].join(', ');
}

/** A create's values for {@link WORKFLOW_VALUE_COLUMNS}, `created` already encoded for the database. */
export function workflowInsertValues(input: CreateWorkflowInput, created: unknown): unknown[] {
  const w = input.workflow;
  return [w.id, w.tenantId, w.type, w.serviceSlug ?? null, w.status, w.definitionVersion, jsonText(w.input), w.idempotencyKey ?? null, input.history.length, created];
}

const INPUT_VALUE = WORKFLOW_VALUE_COLUMNS.indexOf('input');

/**
 * The workflow record a create inserted, as a read of the row would return
 * it, from what the create sent: `values` from {@link workflowInsertValues},
 * whose input (JSON text) is parsed afresh, so that the record shares nothing
 * with the caller's object.
 */
export function insertedWorkflowRecord(input: CreateWorkflowInput, createdAt: Date, values: readonly unknown[]): WorkflowRecord {
  const inputText = values[INPUT_VALUE] as string | null;
  return newWorkflowRecord(input.workflow, inputText === null ? null : (JSON.parse(inputText) as unknown), createdAt);
}
