/**
 * Row types of the tables that {@link migrateToLatest} creates, for hosts that
 * want to query them with a typed Kysely instance.
 *
 * Timestamps are `timestamptz` on Postgres (read as `Date` by `pg`) and integer
 * epoch milliseconds on SQLite (so comparisons are exact). JSON columns are
 * `jsonb` on Postgres (read as parsed values) and JSON text on SQLite.
 *
 * @module
 */

/** A timestamp column as a driver returns it: `Date` (pg), epoch ms (SQLite), or text. */
export type StoredTimestamp = Date | number | string;

/** A JSON column as a driver returns it: a parsed value (pg `jsonb`) or JSON text (SQLite). */
export type StoredJson = unknown;

/** The `<prefix>workflows` table. */
export interface WorkflowsTable {
  id: string;
  tenant_id: string;
  type: string;
  service_slug: string | null;
  status: string;
  definition_version: string;
  input: StoredJson;
  output: StoredJson;
  error: StoredJson;
  idempotency_key: string | null;
  current_step: string | null;
  /** Sum of the steps' retry counts. */
  retry_count: number;
  /** The `seq` of the workflow's latest history row (history is numbered per workflow from 1). */
  last_history_seq: number;
  created_at: StoredTimestamp;
  updated_at: StoredTimestamp;
  completed_at: StoredTimestamp | null;
}

/** The `<prefix>steps` table; primary key `(workflow_id, name)`. */
export interface StepsTable {
  workflow_id: string;
  name: string;
  position: number;
  /** JSON array of step names. */
  depends_on: StoredJson;
  status: string;
  attempts: number;
  retry_count: number;
  max_attempts: number;
  started_at: StoredTimestamp | null;
  completed_at: StoredTimestamp | null;
  due_at: StoredTimestamp | null;
  lease_owner: string | null;
  lease_token: string | null;
  lease_expires_at: StoredTimestamp | null;
  callback_token_hash: string | null;
  callback_result: StoredJson;
  poll_count: number;
  poll_deadline_at: StoredTimestamp | null;
  output: StoredJson;
  error: StoredJson;
  completion_seq: number | null;
  /** The status the step had before its latest claim (the claim's `previousStatus`). */
  claimed_from_status: string | null;
  /** The lease owner the step had before its latest claim. */
  claimed_from_owner: string | null;
}

/** The `<prefix>history` table; primary key `(workflow_id, seq)`. */
export interface HistoryTable {
  workflow_id: string;
  /** 1, 2, 3… within the workflow. */
  seq: number;
  at: StoredTimestamp;
  kind: string;
  step_name: string | null;
  from_status: string | null;
  to_status: string | null;
  actor: string | null;
  reason: string | null;
  action: string | null;
  detail: StoredJson;
}

/**
 * The tables under a given prefix, for `Kysely<SagalineDatabase>` (default
 * prefix) or `Kysely<SagalineDatabase<'app_'>>`.
 *
 * @example
 * ```ts
 * const db = host.db as unknown as Kysely<SagalineDatabase>;
 * const stuck = await db.selectFrom('sagaline_steps').where('status', '=', 'running').selectAll().execute();
 * ```
 */
export type SagalineDatabase<TPrefix extends string = 'sagaline_'> = {
  [K in `${TPrefix}workflows`]: WorkflowsTable;
} & {
  [K in `${TPrefix}steps`]: StepsTable;
} & {
  [K in `${TPrefix}history`]: HistoryTable;
};
