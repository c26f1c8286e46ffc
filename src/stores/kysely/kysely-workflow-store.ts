import { CompiledQuery, sql, type Kysely, type RawBuilder } from 'kysely';
import type { Clock } from '../../core/clock.js';
import { isStepStatus, type StepStatus } from '../../core/step-status.js';
import { isWorkflowStatus, type WorkflowStatus } from '../../core/workflow-status.js';
import { ConflictError, NotFoundError, SagalineError, StaleLeaseError, StoreError } from '../../errors.js';
import type {
  ClaimedStep,
  ClaimRequest,
  CreateWorkflowInput,
  CreateWorkflowResult,
  HistoryRecord,
  NewHistoryEntry,
  StepPatch,
  StepRecord,
  StoredError,
  StoreListQuery,
  SubscribeOptions,
  TransactOptions,
  WorkflowPatch,
  WorkflowRecord,
  WorkflowStore,
  WorkflowTransaction,
} from '../../storage/workflow-store.js';
import { newStepRecord } from '../../storage/new-records.js';
import { checkedDate, claimHistoryEntry, copyRecords, normalizeHistory } from '../../storage/store-values.js';
import { CasWriter, cellParameter, HISTORY_COLUMNS, jsonText, pushHistoryCells, timeParameter, type CasItem } from './kysely-cas-write.js';
import { DEFAULT_MAX_BATCH, DEFAULT_MAX_BATCH_POSTGRES, DEFAULT_MAX_CONCURRENT_BATCHES, GroupCommitQueue, type BatchEntry } from './kysely-group-commit.js';
import { DatabaseClockEstimate } from './database-clock.js';
import { notificationChannel, PgWakeups } from './kysely-notifications.js';
import { WakeSender } from './pg-wake-sender.js';
import { PgCreateWriter, type PgCreateExtras, type PgCreateValues } from './pg-create-write.js';
import { STATEMENT_MARKER } from './pg-prepared-statements.js';
import { TableGrowth } from './pg-table-growth.js';
import { insertedWorkflowRecord, workflowInsertValues } from './workflow-insert.js';
import { SqliteWriteTexts } from './sqlite-write-texts.js';
import { resolveTables, type TableNames } from './kysely-tables.js';
import type { KyselyStoreDialect, KyselyWorkflowStoreConfig } from './kysely-workflow-store-config.js';

type Db = Kysely<any>;
type Row = Record<string, unknown>;

/** How a column is encoded: plain text or integer, a timestamp, or JSON. */
type ColumnKind = 'text' | 'int' | 'time' | 'json';

const PG_TYPES = { text: 'text', int: 'integer', time: 'timestamptz', json: 'jsonb' } as const satisfies Record<ColumnKind, string>;
/** The casts as SQL fragments, made once: a parameter is built on every call. */
const PG_CASTS = {
  text: sql.raw('text'),
  int: sql.raw(PG_TYPES.int),
  time: sql.raw(PG_TYPES.time),
  json: sql.raw(PG_TYPES.json),
} as const satisfies Record<ColumnKind, RawBuilder<unknown>>;

const STEP_COLUMNS = {
  status: ['status', 'text'],
  attempts: ['attempts', 'int'],
  retryCount: ['retry_count', 'int'],
  startedAt: ['started_at', 'time'],
  completedAt: ['completed_at', 'time'],
  dueAt: ['due_at', 'time'],
  leaseOwner: ['lease_owner', 'text'],
  leaseToken: ['lease_token', 'text'],
  leaseExpiresAt: ['lease_expires_at', 'time'],
  callbackTokenHash: ['callback_token_hash', 'text'],
  callbackResult: ['callback_result', 'json'],
  pollCount: ['poll_count', 'int'],
  pollDeadlineAt: ['poll_deadline_at', 'time'],
  output: ['output', 'json'],
  error: ['error', 'json'],
  completionSeq: ['completion_seq', 'int'],
} as const satisfies Record<keyof StepPatch, readonly [string, ColumnKind]>;

const WORKFLOW_COLUMNS = {
  status: ['status', 'text'],
  output: ['output', 'json'],
  error: ['error', 'json'],
  currentStep: ['current_step', 'text'],
  completedAt: ['completed_at', 'time'],
  retryCount: ['retry_count', 'int'],
} as const satisfies Record<keyof WorkflowPatch, readonly [string, ColumnKind]>;


/** Postgres claim statements per claim at most: the second and third take what changed under the one before. */
const CLAIM_ROUNDS = 3;

/** What one Postgres claim statement did: its claims, and how many candidates it left because their workflow changed meanwhile. */
interface PgClaimResult {
  claims: ClaimedStep[];
  changed: number;
}

/** Compare-and-set attempts of an optimistic transaction before it takes the lock. */
const OPTIMISTIC_ATTEMPTS = 5;

/** Workflows whose last written state a store remembers (the most recently written ones). */
const SNAPSHOT_CACHE_SIZE = 4096;

/**
 * The columns the store's own `ANALYZE` (the `analyze` option) gathers
 * statistics on: those its statements and the list filters select, join or
 * order by. Every `ANALYZE` also refreshes the tables' row and page counts.
 * The JSON, token and time columns that nothing filters on are left to
 * autovacuum: on a young database they took about three quarters of the
 * time of the store's analyses (with 3,200 workflows, 16,000 steps and
 * 41,600 history rows, 48 ms for these columns against 155-205 ms for all,
 * most of it on the step table's).
 */
const ANALYZED_COLUMNS = {
  workflows: ['id', 'tenant_id', 'type', 'service_slug', 'status', 'idempotency_key', 'created_at'],
  steps: ['workflow_id', 'name', 'position', 'status', 'due_at', 'lease_expires_at'],
  history: ['workflow_id', 'seq'],
} as const;

/** History rows per INSERT statement (well under both databases' parameter limits). */
const HISTORY_CHUNK = 500;

const CLAIMABLE_STEP_STATUSES: ReadonlySet<string> = new Set(['pending', 'running', 'waiting_callback', 'waiting_poll', 'compensating']);
const ACTIVE_WORKFLOW_STATUSES: ReadonlySet<string> = new Set(['pending', 'running', 'rolling_back']);
const CLAIMABLE_STEP_SQL = sql.raw([...CLAIMABLE_STEP_STATUSES].map((s) => `'${s}'`).join(', '));
const ACTIVE_WORKFLOW_SQL = sql.raw([...ACTIVE_WORKFLOW_STATUSES].map((s) => `'${s}'`).join(', '));

/**
 * Bind parameters per write statement of a batch: under both databases'
 * limits (65,535 on Postgres, 32,766 on SQLite) with room to spare.
 */
const MAX_STATEMENT_PARAMS = 16_000;

/** One column value ready for SQL: its kind and its encoded parameter. */
interface Cell {
  kind: ColumnKind;
  value: unknown;
}

/** A history row to insert, with its place in the workflow's history. */
interface HistoryRow {
  workflowId: string;
  seq: number;
  entry: NewHistoryEntry;
}

/** A batch's writes, grouped by the columns they set (each group one `UPDATE … FROM (VALUES …)` per chunk). */
interface BatchGroups {
  workflows: Map<string, { columns: string[]; rows: { id: string; cells: Map<string, Cell> }[] }>;
  steps: Map<string, { columns: string[]; rows: { workflowId: string; name: string; write: StepWrite }[] }>;
  history: HistoryRow[];
}

/** The merged writes of one step in a transaction. */
interface StepWrite {
  cells: Map<string, Cell>;
  /** The lease token read under the lock, checked again by the UPDATE when any write was fenced. */
  fence: { expected: string | null } | null;
}

/** Thrown through Kysely's transaction to roll it back, carrying the callback's own error. */
class CallbackError {
  constructor(readonly error: unknown) {}
}

/** A `transact` call waiting for its group-commit batch. */
interface TransactEntry extends BatchEntry {
  fn(tx: WorkflowTransaction): unknown;
  /** Called with `{ optimistic: true }`. */
  optimistic: boolean;
}

/**
 * A `createWorkflow` call waiting for its group-commit batch: on SQLite it
 * joins the batch's transaction, on Postgres the batch's create statement. It
 * is settled after the commit with the new workflow, or null when the
 * idempotency key was taken.
 */
interface CreateEntry extends BatchEntry {
  readonly kind: 'create';
  readonly input: CreateWorkflowInput;
  readonly createdAt: Date;
  readonly history: NewHistoryEntry[];
  /** Postgres: the create's values, collected before it was queued. */
  readonly values?: PgCreateValues;
}

/** A create queued on Postgres: its values were collected before it was queued. */
type PgCreateEntry = CreateEntry & { readonly values: PgCreateValues };

type QueuedEntry = TransactEntry | CreateEntry;

function isCreate(entry: QueuedEntry): entry is CreateEntry {
  return (entry as CreateEntry).kind === 'create';
}

/** A create queued on Postgres, checked to carry its values (`createPostgres` collects them before queueing). */
function pgCreateEntry(entry: CreateEntry): PgCreateEntry {
  if (!entry.values) throw new StoreError(`workflow ${entry.input.workflow.id}: a Postgres create was queued without its values`);
  return entry as PgCreateEntry;
}

/** How one call of a batch ended before the commit: its result, or its own error. */
type BatchOutcome = { ok: true; value: unknown; tx: KyselyTransaction } | { ok: false; error: unknown };

/** A workflow with its steps as of one version of its row. */
interface Snapshot {
  workflow: WorkflowRecord;
  historySeq: number;
  steps: StepRecord[];
  /** The workflow row's `xmin` (Postgres) or `version` column (SQLite). */
  version: string;
}

/** At most `size` snapshots, by workflow id; the least recently stored go first. */
class SnapshotCache {
  private readonly entries = new Map<string, Snapshot>();
  constructor(private readonly size: number) {}

  /**
   * Removes and returns the workflow's snapshot. Its records are the cache's
   * own (never handed to a callback): whoever takes one hands out copies.
   */
  take(workflowId: string): Snapshot | undefined {
    const found = this.entries.get(workflowId);
    if (found) this.entries.delete(workflowId);
    return found;
  }

  delete(workflowId: string): void {
    this.entries.delete(workflowId);
  }

  put(workflowId: string, snapshot: Snapshot): void {
    this.entries.delete(workflowId);
    this.entries.set(workflowId, snapshot);
    if (this.entries.size > this.size) this.entries.delete(this.entries.keys().next().value!);
  }
}

/** A workflow row read under its lock. */
interface LockedWorkflow {
  workflow: WorkflowRecord;
  historySeq: number;
  /** The row's `version` column. */
  version: string;
}

/** One part of a batch's writes, and the bind parameters it takes. */
interface WritePiece {
  sql: RawBuilder<unknown>;
  params: number;
  /** Step rows it must update (a fenced row whose lease changed is not updated). */
  stepRows: number;
  /** Names the step reported when the count falls short. */
  firstStep: [string, string] | null;
  /** Whether it is a data-modifying CTE whose updated rows are counted (`returning 1`). */
  counted: boolean;
}

/**
 * A {@link WorkflowStore} on Postgres or SQLite through the host's Kysely
 * instance. Create the tables first with {@link migrateToLatest}.
 *
 * - Postgres: a claim is one statement that locks due steps and their
 *   workflow rows with `FOR UPDATE OF s, w SKIP LOCKED` and returns the state
 *   it leaves (see {@link claimPostgresStatement}), and {@link transact} holds
 *   `SELECT … FOR UPDATE` on the workflow row, so several engine processes can
 *   share the database. With `{ optimistic: true }`, {@link transact} holds
 *   no lock: one statement reads, one compare-and-set statement writes (see
 *   {@link transactOptimistic}). Without a `clock`, every time comparison
 *   uses the database clock.
 * - SQLite: write transactions start with `BEGIN IMMEDIATE`, and the claim is
 *   one `UPDATE … RETURNING` statement. With `{ optimistic: true }`,
 *   {@link transact} starts from the state the store's last write left and
 *   compares the row's `version` instead of reading (see
 *   {@link transactRemembered}). The database must be in WAL mode with a
 *   positive `busy_timeout` (checked on first use, see {@link check}).
 *
 * A transaction's writes are buffered and flushed when its callback returns:
 * one write statement on Postgres, one statement per table and step on SQLite.
 * With {@link KyselyWorkflowStoreConfig.groupCommit}, concurrent transactions
 * on different workflows share one database transaction and one commit.
 * With {@link KyselyWorkflowStoreConfig.notifications} (Postgres), writes that
 * make work due send a `NOTIFY`, and {@link subscribe} listens for them.
 *
 * @example
 * ```ts
 * import { Kysely, PostgresDialect } from 'kysely';
 * import { KyselyWorkflowStore, migrateToLatest } from 'sagaline/kysely';
 *
 * const db = new Kysely<any>({ dialect: new PostgresDialect({ pool }) });
 * await migrateToLatest(db);
 * const engine = createEngine({ store: new KyselyWorkflowStore({ db }), workflows: [provisionService] });
 * ```
 */
export class KyselyWorkflowStore implements WorkflowStore {
  /** The SQL dialect in use (given, or detected from the Kysely adapter). */
  readonly dialect: KyselyStoreDialect;
  private readonly db: Db;
  private readonly tables: TableNames;
  private readonly clock: Clock | undefined;
  private readonly pg: boolean;
  private checked: Promise<void> | undefined;
  /** Postgres: whether claims run as one statement of their own (the server's default isolation is read committed, as far as seen). */
  private claimsOutsideTransaction = true;
  /** The `pg_notify` channel, when notifications are on. */
  private readonly notifyChannel: string | undefined;
  /** Sends the notifications after commits (notifications on, over a Kysely instance; see {@link wakeOthers}). */
  private readonly wakeSender: WakeSender | undefined;
  /** Transactions of this store that are to be followed by a notification once they commit (see {@link inTransaction}). */
  private readonly wakeOnCommit = new WeakSet<object>();
  private readonly batches: GroupCommitQueue<QueuedEntry> | undefined;
  /** The state this store's last optimistic write left, per workflow (see {@link transactOptimistic}). */
  private readonly written = new SnapshotCache(SNAPSHOT_CACHE_SIZE);
  /** Builds the compare-and-set writes of optimistic transactions (on first use). */
  private casWriter: CasWriter | undefined;
  /** Texts of the SQLite create and batch writes (on first use). */
  private sqliteTexts: SqliteWriteTexts | undefined;
  /** Builds the Postgres create statements (on first use). */
  private createWriter: PgCreateWriter | undefined;
  /** Postgres with `analyze`: when to analyze the tables (see {@link KyselyWorkflowStoreConfig.analyze}). */
  private readonly growth: TableGrowth | undefined;
  /** The database clock, from the statements that read it (Postgres without an injected clock). */
  private readonly databaseClock = new DatabaseClockEstimate();

  /**
   * Wake-ups from other processes: `listener` is called after a transaction
   * that made a step claimable commits (in any process whose store has
   * `notifications`), and, with `notifications.connect`, when the listening
   * connection is lost and again once another listens. Resolves once
   * `LISTEN` is in place (with `connect`, also when the first connection
   * failed: it is retried in the background), to an unsubscribe function.
   * Present only when the store was given `notifications: { listen }` or
   * `{ connect }` (Postgres); undefined otherwise. With `connect`, a lost
   * connection and each failed attempt to open another are reported to
   * `options.onError`, and listening again to `options.onResume` (an
   * engine logs them through its logger).
   */
  declare readonly subscribe?: (listener: () => void, options?: SubscribeOptions) => Promise<() => Promise<void>>;

  /** Creates a store over the host's Kysely instance or transaction; opens nothing. */
  constructor(config: KyselyWorkflowStoreConfig) {
    if (!config || !config.db) throw new TypeError('KyselyWorkflowStore needs a Kysely instance: new KyselyWorkflowStore({ db })');
    this.db = config.db;
    this.tables = resolveTables(config.db, config);
    this.dialect = this.tables.dialect;
    this.pg = this.dialect === 'postgres';
    this.clock = config.clock;
    const notifications = config.notifications;
    if (notifications) {
      if (!this.pg) throw new TypeError('the notifications option needs Postgres (LISTEN/NOTIFY)');
      this.notifyChannel = notificationChannel(this.tables.prefix, this.tables.schema);
      const { listen, connect } = notifications;
      if (listen && connect) throw new TypeError('give notifications.listen or notifications.connect, not both');
      if (connect !== undefined && typeof connect !== 'function') {
        throw new TypeError('notifications.connect must be a function that resolves to a connected pg.Client');
      }
      if (listen && (typeof listen.query !== 'function' || typeof listen.on !== 'function' || typeof listen.removeListener !== 'function')) {
        throw new TypeError('notifications.listen must be a connected pg.Client (query, on, removeListener)');
      }
      const onError = notifications.onError;
      if (onError !== undefined && typeof onError !== 'function') throw new TypeError('notifications.onError must be a function');
      if (!this.db.isTransaction) {
        this.wakeSender = new WakeSender(
          () => this.notify(),
          onError ?? ((error) => console.warn(`sagaline: a store notification could not be sent (other processes will find the work at their next poll): ${error.message}`)),
        );
      }
      const source = listen ? { listen } : connect ? { connect } : null;
      if (source) {
        const wakeups = new PgWakeups(source, this.notifyChannel);
        this.subscribe = (listener, options) => wakeups.subscribe(listener, options);
      }
    }
    if (this.pg && !this.db.isTransaction && config.analyze !== false) {
      this.growth = new TableGrowth({
        estimate: async () => {
          const rows = await this.rows(this.db, sql`select reltuples::float8 as rows from pg_class where oid = to_regclass(${this.tableSql('workflows')})`);
          return Number(rows[0]?.['rows'] ?? 0);
        },
        analyze: async () => {
          const tables = (Object.keys(ANALYZED_COLUMNS) as (keyof typeof ANALYZED_COLUMNS)[]).map(
            (table) => sql`${this.ref(table)} (${sql.join(ANALYZED_COLUMNS[table].map((c) => sql.id(c)))})`,
          );
          await sql`analyze ${sql.join(tables)}`.execute(this.db);
        },
      });
    }
    const group = config.groupCommit;
    if (group) {
      if (this.db.isTransaction) throw new TypeError('groupCommit needs a Kysely instance, not a Transaction: the store must own its commits');
      const defaultMaxBatch = this.pg ? DEFAULT_MAX_BATCH_POSTGRES : DEFAULT_MAX_BATCH;
      const maxBatch = group === true ? defaultMaxBatch : (group.maxBatch ?? defaultMaxBatch);
      // SQLite has one connection: its batches would only queue for it.
      const defaultConcurrent = this.pg ? DEFAULT_MAX_CONCURRENT_BATCHES : 1;
      const concurrent = group === true ? defaultConcurrent : (group.maxConcurrentBatches ?? defaultConcurrent);
      this.batches = new GroupCommitQueue<QueuedEntry>(maxBatch, (batch) => this.runBatches(batch), concurrent);
    }
  }

  /**
   * Checks the database once: the tables exist, and on SQLite that a file
   * database is in WAL mode and `busy_timeout` is positive. Runs by itself
   * before the first operation; call it at start-up to fail early.
   *
   * @throws StoreError naming the missing table or setting.
   */
  async check(): Promise<void> {
    await this.runChecks();
    this.checked = Promise.resolve();
  }

  private async runChecks(): Promise<void> {
    if (!this.pg) {
      const mode = String((await this.rows(this.db, sql`pragma journal_mode`))[0]?.['journal_mode'] ?? '').toLowerCase();
      const main = (await this.rows(this.db, sql`pragma database_list`)).find((r) => r['name'] === 'main');
      const isFile = typeof main?.['file'] === 'string' && main['file'] !== '';
      if (isFile && mode !== 'wal') {
        throw new StoreError(
          `SQLite journal_mode is "${mode}": KyselyWorkflowStore needs WAL on a file database (run PRAGMA journal_mode = WAL when opening it)`,
        );
      }
      const timeout = Number(Object.values((await this.rows(this.db, sql`pragma busy_timeout`))[0] ?? {})[0] ?? 0);
      if (isFile && !(timeout > 0)) {
        throw new StoreError(
          'SQLite busy_timeout is 0: KyselyWorkflowStore needs a positive busy_timeout (run PRAGMA busy_timeout = 5000, or pass { timeout } to better-sqlite3)',
        );
      }
    }
    try {
      await this.rows(this.db, sql`select 1 from ${this.tables.ref(this.tables.steps)} where 1 = 0`);
    } catch (err) {
      throw new StoreError(
        `the ${this.tables.steps} table is missing or unreadable: run migrateToLatest(db${this.tables.prefix === 'sagaline_' ? '' : ', { tablePrefix }'}) first`,
        { cause: err },
      );
    }
  }

  /**
   * The store's current time: the injected clock, else the database clock
   * (Postgres) or the system clock (SQLite). On Postgres the database clock
   * is read at most every few seconds: in between, the local clock corrected
   * by the offset the recent readings show, never ahead of the database's
   * clock and behind it by at most a round trip (see {@link DatabaseClockEstimate}).
   */
  async now(): Promise<Date> {
    if (this.clock) return new Date(this.clock.now());
    if (!this.pg) return new Date();
    if (this.knowsTime()) return new Date(this.databaseClock.at(Date.now()));
    return this.guard('now', async () => {
      const sent = Date.now();
      const rows = await this.rows(this.db, sql`select clock_timestamp() as now`);
      const now = toDate(rows[0]?.['now'])!;
      this.observeClock(now, sent);
      return now;
    });
  }

  /** Inserts a workflow with its steps and history atomically, or returns the existing one for the same `(tenantId, idempotencyKey)`. */
  async createWorkflow(input: CreateWorkflowInput): Promise<CreateWorkflowResult> {
    const w = input.workflow;
    if (!isWorkflowStatus(w.status)) throw new TypeError(`workflow ${w.id}: unknown status ${String(w.status)}`);
    const createdAt = checkedDate(w.createdAt, 'createdAt');
    if (createdAt === null) throw new TypeError(`workflow ${w.id}: createdAt is required`);
    const names = new Set<string>();
    for (const s of input.steps) {
      if (names.has(s.name)) throw new StoreError(`workflow ${w.id}: duplicate step ${s.name}`);
      names.add(s.name);
    }
    const history = input.history.map((e) => normalizeHistory(e, keepDetail));
    return this.guard('createWorkflow', async () => {
      try {
        const created = this.pg ? await this.createPostgres(input, createdAt, history) : await this.createSqlite(input, createdAt, history);
        if (created) return { created: true, workflow: created };
      } catch (err) {
        // A duplicate id is the caller's conflict, not a store failure.
        if ((await this.getWorkflowRow(this.db, w.id).catch(() => null)) !== null) throw new ConflictError(`workflow ${w.id} already exists`, { workflowId: w.id });
        throw err;
      }
      const existing = await this.rows(
        this.db,
        sql`select * from ${this.ref('workflows')} where tenant_id = ${w.tenantId} and idempotency_key = ${w.idempotencyKey}`,
      );
      if (!existing[0]) throw new StoreError(`workflow ${w.id}: idempotency conflict but no existing workflow was found`);
      return { created: false, workflow: this.toWorkflow(existing[0]) };
    });
  }

  /** The workflow, or null when the id is unknown. */
  async getWorkflow(id: string): Promise<WorkflowRecord | null> {
    return this.guard('getWorkflow', async () => {
      const row = await this.getWorkflowRow(this.db, id);
      return row ? this.toWorkflow(row) : null;
    });
  }

  /** Steps in definition order (empty for an unknown workflow). */
  async getSteps(workflowId: string): Promise<StepRecord[]> {
    return this.guard('getSteps', async () => (await this.getStepRows(this.db, workflowId)).map((r) => this.toStep(r)));
  }

  /** History in `seq` order (empty for an unknown workflow). */
  async getHistory(workflowId: string): Promise<HistoryRecord[]> {
    return this.guard('getHistory', async () => {
      const rows = await this.rows(this.db, sql`select * from ${this.ref('history')} where workflow_id = ${workflowId} order by seq`);
      return rows.map((r) => this.toHistory(r));
    });
  }

  /** Workflows matching the filters, newest first by `(createdAt, id)`, at most `limit`; runs {@link listWorkflowsQuery}. */
  async listWorkflows(query: StoreListQuery): Promise<WorkflowRecord[]> {
    if (!(Math.floor(query.limit) > 0)) return [];
    return this.guard('listWorkflows', async () => {
      const result = await this.db.executeQuery<Row>(this.listWorkflowsQuery(query));
      return result.rows.map((r) => this.toWorkflow(r));
    });
  }

  /**
   * The exact query {@link listWorkflows} runs, compiled: for `EXPLAIN`, logging
   * or tests. Filters are equalities on `tenant_id`, `status`, `type`,
   * `service_slug`, a `created_at` range (`createdAfter` inclusive,
   * `createdBefore` exclusive) and the keyset position `(created_at, id) < after`,
   * ordered by `created_at desc, id desc`; each filter has an index ending in
   * `(created_at, id)`.
   */
  listWorkflowsQuery(query: StoreListQuery): CompiledQuery<Row> {
    const base = this.tables.schema === undefined ? this.db : this.db.withSchema(this.tables.schema);
    let q = base.selectFrom(this.tables.workflows).selectAll();
    if (query.tenantId !== undefined) q = q.where('tenant_id', '=', query.tenantId);
    if (query.status !== undefined) q = q.where('status', '=', query.status);
    if (query.type !== undefined) q = q.where('type', '=', query.type);
    if (query.serviceSlug !== undefined) q = q.where('service_slug', '=', query.serviceSlug);
    if (query.createdAfter !== undefined) q = q.where('created_at', '>=', this.timeParam(query.createdAfter));
    if (query.createdBefore !== undefined) q = q.where('created_at', '<', this.timeParam(query.createdBefore));
    const after = query.after;
    if (after !== undefined) {
      const at = this.timeParam(after.createdAt);
      q = q.where((eb) => eb(eb.refTuple('created_at', 'id'), '<', eb.tuple(at, after.id)));
    }
    return q
      .orderBy('created_at', 'desc')
      .orderBy('id', 'desc')
      .limit(Math.max(1, Math.floor(query.limit)))
      .compile() as CompiledQuery<Row>;
  }

  /** Claims due steps under the claim rule of {@link WorkflowStore}; see the class notes for how each dialect does it. */
  async claimSteps(request: ClaimRequest): Promise<ClaimedStep[]> {
    const limit = Math.min(Math.floor(request.limit), request.tokens.length);
    if (!(limit > 0)) return [];
    if (!(request.leaseMs >= 0)) throw new TypeError('leaseMs must be a non-negative number');
    const tokens = request.tokens.slice(0, limit);
    return this.guard('claimSteps', async () => {
      if (this.pg) return this.claimPostgres(request, limit, tokens);
      const remember: Snapshot[] = [];
      const claims = await this.inTransaction((trx) => this.claimSqlite(trx, request, limit, tokens, remember));
      // Committed: the next optimistic write on these workflows starts from the state the claim left.
      if (!this.db.isTransaction) for (const snapshot of remember) this.written.put(snapshot.workflow.id, snapshot);
      return claims;
    });
  }

  /**
   * Runs `fn` holding the workflow's row lock (`SELECT … FOR UPDATE` on
   * Postgres, the write lock of `BEGIN IMMEDIATE` on SQLite) and flushes its
   * buffered writes when it resolves, in the same transaction. Errors thrown by
   * `fn` propagate unchanged and nothing is written.
   *
   * `fn` must not call the store: on SQLite the single connection is held
   * until the transaction ends, and under group commit the call would wait
   * for the batch that is waiting for `fn`.
   *
   * With `groupCommit`, the call joins the next batch (see
   * {@link KyselyWorkflowStoreConfig.groupCommit}); it resolves once the
   * batch has committed, and rejects with a `store` error, writing nothing,
   * when the batch fails to commit.
   *
   * @throws a `not_found` error for an unknown workflow; a `stale_lease` error
   *   when a fenced write finds another lease token (nothing is written then).
   */
  async transact<T>(workflowId: string, fn: (tx: WorkflowTransaction) => T | Promise<T>, options?: TransactOptions): Promise<T> {
    const batches = this.batches;
    if (batches) {
      return this.guard(
        'transact',
        () =>
          new Promise<T>((resolve, reject) =>
            batches.push({ key: workflowId, fn, optimistic: options?.optimistic === true, resolve: resolve as (value: unknown) => void, reject }),
          ),
      );
    }
    if (options?.optimistic === true && !this.db.isTransaction) {
      return this.guard('transact', () => (this.pg ? this.transactOptimistic(workflowId, fn) : this.transactRemembered(workflowId, fn)));
    }
    return this.guard('transact', () => this.transactLocked(workflowId, fn));
  }

  /**
   * SQLite, `{ optimistic: true }`: inside the write transaction (`BEGIN
   * IMMEDIATE`, which serializes writers anyway), `fn` runs on the state this
   * store's last committed write left, without reading it, and the write
   * compares the row's `version` with that state's: a workflow update that
   * matches no row means someone else wrote since, and nothing has been
   * written yet. An outcome without a write is checked by reading the version
   * alone. Either way, when the state was out of date, `fn` runs again on a
   * fresh read under the lock this transaction already holds. Without a
   * remembered state, this is {@link transactLocked}.
   *
   * Safe for the same reason as on Postgres: every write to a workflow's steps
   * also writes its workflow row, raising its version. A version is
   * remembered only once its write committed, so a rolled-back write can
   * never lend its number to another.
   */
  private async transactRemembered<T>(workflowId: string, fn: (tx: WorkflowTransaction) => T | Promise<T>): Promise<T> {
    const remembered = this.written.take(workflowId);
    if (!remembered) return this.transactLocked(workflowId, fn);
    let after: Snapshot | undefined;
    const result = await this.inTransaction(async (trx) => {
      const now = new Date(this.clock ? this.clock.now() : Date.now());
      // The callback gets its own copy: nothing it does reaches the remembered state.
      const view = copyRecords({ workflow: remembered.workflow, steps: remembered.steps });
      const tx = new KyselyTransaction(now, view.workflow, remembered.historySeq, view.steps, (kind, value) => this.encode(kind, value));
      let outcome: { ok: true; value: T } | { ok: false; error: unknown };
      try {
        outcome = { ok: true, value: await fn(tx) };
      } catch (err) {
        outcome = { ok: false, error: new CallbackError(err) };
      } finally {
        tx.close();
      }
      const stale = tx.hasWrites ? tx.staleError() : undefined;
      if (outcome.ok && tx.hasWrites && !stale) {
        if (await this.flush(trx, tx, remembered.version)) {
          after = { ...tx.afterImage(remembered), version: String(Number(remembered.version) + 1) };
          return outcome.value;
        }
      } else {
        const rows = await this.rows(trx, sql`select version from ${this.ref('workflows')} where id = ${workflowId}`);
        if (rows[0] !== undefined && String(rows[0]['version']) === remembered.version) {
          after = remembered;
          if (!outcome.ok) throw outcome.error;
          if (stale) throw stale;
          return outcome.value;
        }
      }
      // Out of date: decide again on what the lock shows now.
      const locked = await this.lockedBody(trx, workflowId, fn);
      after = locked.after;
      return locked.value;
    });
    if (after) this.written.put(workflowId, after);
    return result;
  }

  /**
   * Postgres, `{ optimistic: true }`: `fn` runs on a snapshot of the workflow
   * row and its steps taken without a lock, and one statement writes, only
   * while the row's `xmin` (the id of the transaction that last wrote it) is
   * the snapshot's. The snapshot is the state this store's last write left
   * (no read at all), else one statement reads it. One or two round trips and
   * no held lock, against five for {@link transactLocked}. An outcome without
   * a write (a value, an error, a stale fence) decided on a remembered
   * snapshot stands only once a read shows that snapshot was current.
   *
   * This is safe because every write to a workflow's steps also updates its
   * workflow row in the same transaction (claims, transactions and creation
   * do; a heartbeat's `lease_expires_at` is the one exception, and no
   * decision reads it), so an unchanged `xmin` means unchanged steps. On a
   * conflict `fn` runs again on a fresh snapshot; after
   * {@link OPTIMISTIC_ATTEMPTS} conflicts the call takes the lock instead.
   */
  private transactOptimistic<T>(workflowId: string, fn: (tx: WorkflowTransaction) => T | Promise<T>): Promise<T> {
    // A batch of one: the same rounds as a group-commit batch.
    return new Promise<T>((resolve, reject) => {
      const entry: TransactEntry = { key: workflowId, fn, optimistic: true, resolve: resolve as (value: unknown) => void, reject };
      this.runOptimisticBatch([entry]).catch(reject);
    });
  }

  /**
   * Writes the items' buffered writes in one statement (see
   * `kysely-cas-write.ts`), each workflow only if its row is still the
   * version read and its fences hold. Resolves to the new row versions of the
   * workflows written; the others were left untouched.
   */
  private async casWrite(items: CasItem[]): Promise<Map<string, string>> {
    this.casWriter ??= new CasWriter({
      workflows: this.tableSql('workflows'),
      steps: this.tableSql('steps'),
      history: this.tableSql('history'),
      workflowColumns: Object.values(WORKFLOW_COLUMNS).map(([column, kind]) => [column, PG_TYPES[kind]] as const),
      stepColumns: Object.values(STEP_COLUMNS).map(([column, kind]) => [column, PG_TYPES[kind]] as const),
      prefix: STATEMENT_MARKER,
    });
    const statement = this.casWriter.statement(items);
    const result = await this.db.executeQuery<Row>(CompiledQuery.raw(statement.sql, statement.parameters));
    return new Map(result.rows.map((r) => [String(r['id']), String(r['version'])]));
  }

  /** Records the database clock `databaseTime`, read by a statement sent at local time `sent` and answered now. */
  private observeClock(databaseTime: Date, sent: number): void {
    this.databaseClock.observe(databaseTime.getTime(), sent, Date.now());
  }

  /**
   * How far the database clock may be ahead of the times the store hands out
   * (see {@link WorkflowStore.clockSlackMs}): the estimate's uncertainty on
   * Postgres without an injected clock, else 0.
   */
  clockSlackMs(): number {
    return this.pg && !this.clock ? this.databaseClock.uncertainty() : 0;
  }

  /** Whether the store can tell the time without a round trip: an injected clock, or a recent reading of the database clock. */
  private knowsTime(): boolean {
    return this.clock !== undefined || this.databaseClock.knows(Date.now());
  }

  /**
   * The store's time without a round trip: the injected clock, else the local
   * clock corrected by the offset to the database clock last read (see
   * {@link knowsTime}), never earlier than `notBefore` (the workflow's last write).
   */
  private databaseNow(notBefore: Date): Date {
    const now = this.clock ? this.clock.now() : this.databaseClock.at(Date.now());
    return new Date(Math.max(now, notBefore.getTime()));
  }

  /** `fn` under the workflow's row lock, its writes flushed in the same transaction. */
  private async transactLocked<T>(workflowId: string, fn: (tx: WorkflowTransaction) => T | Promise<T>): Promise<T> {
    // Its write changes the row version: what an optimistic write remembered is out of date.
    this.written.delete(workflowId);
    let after: Snapshot | undefined;
    const result = await this.inTransaction(async (trx) => {
      const locked = await this.lockedBody(trx, workflowId, fn);
      after = locked.after;
      return locked.value;
    });
    // Remembered once committed, and only for a store that commits its own transactions.
    if (after && !this.db.isTransaction) this.written.put(workflowId, after);
    return result;
  }

  /**
   * Reads the workflow under its lock, runs `fn` and flushes its writes, in
   * `trx`. On SQLite, also returns the state the write leaves, for the next
   * write to start from (Postgres remembers only what its compare-and-set
   * writes leave: the version of a locked write is not read back).
   */
  private async lockedBody<T>(trx: Db, workflowId: string, fn: (tx: WorkflowTransaction) => T | Promise<T>): Promise<{ value: T; after?: Snapshot }> {
    const { workflow, historySeq, now, version } = await this.lockWorkflow(trx, workflowId);
    const steps = (await this.getStepRows(trx, workflowId)).map((r) => this.toStep(r));
    // The callback's records are its own to change: the remembered state starts from a copy.
    const base = this.pg ? undefined : copyRecords({ workflow, steps });
    const tx = new KyselyTransaction(now, workflow, historySeq, steps, (kind, value) => this.encode(kind, value));
    let value: T;
    try {
      value = await fn(tx);
    } catch (err) {
      throw new CallbackError(err);
    } finally {
      tx.close();
    }
    await this.flush(trx, tx);
    if (!base) return { value };
    const after = tx.hasWrites ? { ...tx.afterImage(base), version: String(version + 1) } : { ...base, historySeq, version: String(version) };
    return { value, after };
  }

  /** Heartbeat: `leaseExpiresAt = now + leaseMs` if `leaseToken` is still the step's lease token. */
  async extendLease(workflowId: string, stepName: string, leaseToken: string, leaseMs: number): Promise<boolean> {
    return this.guard('extendLease', async () => {
      const result = await sql`
        update ${this.ref('steps')} set lease_expires_at = ${this.leaseExpirySql(leaseMs)}
        where workflow_id = ${workflowId} and name = ${stepName} and lease_token = ${leaseToken}`.execute(this.db);
      return Number(result.numAffectedRows ?? 0) > 0;
    });
  }

  /** The earliest `dueAt` of a claimable step (ignoring leases), or null. */
  async nextDueAt(): Promise<Date | null> {
    return this.guard('nextDueAt', async () => {
      const rows = await this.rows(
        this.db,
        sql`
          select s.due_at from ${this.ref('steps')} s join ${this.ref('workflows')} w on w.id = s.workflow_id
          where s.due_at is not null and s.status in (${CLAIMABLE_STEP_SQL}) and w.status in (${ACTIVE_WORKFLOW_SQL})
          order by s.due_at limit 1`,
      );
      return rows[0] ? toDate(rows[0]['due_at']) : null;
    });
  }

  // --- create ------------------------------------------------------------------

  /**
   * One statement: the workflow insert, and the step and history inserts only
   * when it inserted. With group commit, the create joins the next batch,
   * whose creates go out in one statement (see {@link runCreateBatch}).
   */
  private async createPostgres(input: CreateWorkflowInput, createdAt: Date, history: NewHistoryEntry[]): Promise<WorkflowRecord | null> {
    // Collected (and the input checked) before queueing: bad input fails its own call, never a batch.
    const values = this.pgCreateValues(input, createdAt, history);
    const batches = this.batches;
    if (batches) {
      return new Promise<WorkflowRecord | null>((resolve, reject) =>
        batches.push({ kind: 'create', key: input.workflow.id, input, createdAt, history, values, resolve: resolve as (value: unknown) => void, reject }),
      );
    }
    return this.createAlone(input, createdAt, values);
  }

  /** One create in its own statement; null when its idempotency key is taken. */
  private async createAlone(input: CreateWorkflowInput, createdAt: Date, values: PgCreateValues): Promise<WorkflowRecord | null> {
    const statement = this.pgCreates().single(values, this.pgCreateExtras());
    const result = await this.db.executeQuery<Row>(CompiledQuery.raw(statement.sql, statement.parameters));
    const row = result.rows[0];
    if (!row) return null;
    if (values.wakes) await this.wakeOthers();
    return this.createdRecord(String(row['row_version']), input, createdAt, values);
  }

  /**
   * The workflow a create's statement inserted (the statement returns only its
   * id and row version: the rest is what the create sent), remembered for the
   * next write (see {@link transactOptimistic}).
   */
  private createdRecord(rowVersion: string, input: CreateWorkflowInput, createdAt: Date, values: PgCreateValues): WorkflowRecord {
    const workflow = insertedWorkflowRecord(input, createdAt, values.workflow);
    if (!this.db.isTransaction) this.rememberCreated(workflow, input, createdAt, input.history.length, rowVersion);
    this.growth?.created();
    return workflow;
  }

  /**
   * Waits for a background `ANALYZE` (see {@link KyselyWorkflowStoreConfig.analyze})
   * and the notifications on their way to end. The store owns no connection.
   */
  async close(): Promise<void> {
    await this.growth?.idle();
    await this.wakeSender?.idle();
  }

  /**
   * Postgres, group commit: the creates of a batch in one statement, one
   * commit. A create whose idempotency key is taken settles with null (the
   * caller then reads the workflow that has it). When the statement fails
   * on the server it wrote nothing, and each create runs again alone, in
   * order, so that only the one at fault (a duplicate id, say) fails; any
   * other failure (the connection lost) fails them all, as it would a
   * create alone.
   */
  private async runCreateBatch(entries: PgCreateEntry[]): Promise<void> {
    const alone = (entry: PgCreateEntry) => this.createAlone(entry.input, entry.createdAt, entry.values).then(entry.resolve, entry.reject);
    if (entries.length === 1) return alone(entries[0]!);
    const statement = this.pgCreates().batch(entries.map((e) => e.values), this.pgCreateExtras());
    let rows: Row[];
    try {
      rows = (await this.db.executeQuery<Row>(CompiledQuery.raw(statement.sql, statement.parameters))).rows;
    } catch (err) {
      if (!isServerError(err)) throw err;
      // In arrival order, as the batch would have inserted them: of two creates with one idempotency key, the first wins.
      for (const entry of entries) await alone(entry);
      return;
    }
    const byId = new Map(rows.map((r) => [String(r['id']), r]));
    const waking: (() => void)[] = [];
    for (const entry of entries) {
      const row = byId.get(entry.input.workflow.id);
      const created = row ? this.createdRecord(String(row['row_version']), entry.input, entry.createdAt, entry.values) : null;
      // A create that leaves work for others is settled once its notification is sent.
      if (created && entry.values.wakes) waking.push(() => entry.resolve(created));
      else entry.resolve(created);
    }
    await this.settleAfterWake(waking);
  }

  /** A create's values for {@link PgCreateWriter}, its input checked. */
  private pgCreateValues(input: CreateWorkflowInput, createdAt: Date, history: NewHistoryEntry[]): PgCreateValues {
    // The steps' values first: they check each step's dueAt and claim.
    const steps = input.steps.map((s) => this.stepValues(s, createdAt));
    // With notifications on: an active workflow with a step due and not claimed by its creator (due later, too: a wake-up too many
    // costs a claim, one too few a poll interval).
    const wakes =
      this.notifyChannel !== undefined &&
      ACTIVE_WORKFLOW_STATUSES.has(input.workflow.status) &&
      input.steps.some((s) => !s.claim && s.dueAt !== null);
    return {
      wakes,
      workflow: workflowInsertValues(input, this.timeParam(createdAt)),
      steps,
      history: history.map((h, i) => {
        const cells: unknown[] = [];
        pushHistoryCells(cells, h);
        return { seq: i + 1, at: h.at ? this.timeParam(h.at) : null, cells };
      }),
    };
  }

  private pgCreateExtras(): PgCreateExtras {
    return { now: this.clock ? this.timeParam(new Date(this.clock.now())) : undefined };
  }

  /** The create statements' builder (on first use). */
  private pgCreates(): PgCreateWriter {
    this.createWriter ??= new PgCreateWriter({
      workflows: this.tableSql('workflows'),
      steps: this.tableSql('steps'),
      history: this.tableSql('history'),
      stepColumns: STEP_INSERT_COLUMNS.map(([column, kind]) => [column, PG_TYPES[kind]] as const),
      clock: this.clock !== undefined,
      prefix: STATEMENT_MARKER,
    });
    return this.createWriter;
  }

  /**
   * SQLite: one transaction; with group commit, the batch's (see
   * {@link runBatch}), so that concurrent creates and result writes share one
   * commit.
   */
  private async createSqlite(input: CreateWorkflowInput, createdAt: Date, history: NewHistoryEntry[]): Promise<WorkflowRecord | null> {
    const batches = this.batches;
    if (batches) {
      return new Promise<WorkflowRecord | null>((resolve, reject) =>
        batches.push({ kind: 'create', key: input.workflow.id, input, createdAt, history, resolve: resolve as (value: unknown) => void, reject }),
      );
    }
    const workflow = await this.inTransaction((trx) => this.insertSqlite(trx, input, createdAt, history));
    if (workflow && !this.db.isTransaction) this.rememberCreated(workflow, input, createdAt, history.length, '0');
    return workflow;
  }

  /** The inserts of a create on SQLite, in `trx`: the workflow, or null (and nothing inserted) when its idempotency key is taken. */
  private async insertSqlite(trx: Db, input: CreateWorkflowInput, createdAt: Date, history: NewHistoryEntry[]): Promise<WorkflowRecord | null> {
    const w = input.workflow;
    const texts = this.sqliteWrites();
    const created = createdAt.getTime();
    const values = workflowInsertValues(input, created);
    // The insert returns the new row's id only: the record is built from what was sent, as on Postgres.
    // created_at, then updated_at.
    const rows = await this.rawRows(trx, texts.createWorkflow(), [...values, created]);
    if (rows.length === 0) return null;
    if (input.steps.length > 0) {
      const parameters: unknown[] = [];
      for (const s of input.steps) {
        parameters.push(w.id);
        for (const value of this.stepValues(s, createdAt)) parameters.push(value);
      }
      await this.rawRows(trx, texts.insert('steps', STEP_INSERT_COLUMN_LIST, input.steps.length), parameters);
    }
    await this.insertHistorySqlite(
      trx,
      history.map((entry, i) => ({ workflowId: w.id, seq: i + 1, entry })),
      this.clock ? this.clock.now() : Date.now(),
    );
    return insertedWorkflowRecord(input, createdAt, values);
  }

  /** SQLite: history rows, at most {@link HISTORY_CHUNK} per statement; `defaultAtMs` is the time of entries without their own. */
  private async insertHistorySqlite(trx: Db, rows: HistoryRow[], defaultAtMs: number): Promise<void> {
    const texts = this.sqliteWrites();
    for (const part of chunk(rows, HISTORY_CHUNK)) {
      const parameters: unknown[] = [];
      for (const { workflowId, seq, entry: h } of part) {
        parameters.push(workflowId, seq, h.at ? h.at.getTime() : defaultAtMs);
        pushHistoryCells(parameters, h);
      }
      await this.rawRows(trx, texts.insert('history', HISTORY_COLUMNS, part.length), parameters);
    }
  }

  /**
   * SQLite: one transaction's writes (see {@link flush}): the workflow row (only
   * at `expectVersion`, when given: false when it has another), each step
   * (fenced ones only while their lease token holds), then the history.
   */
  private async flushSqlite(
    trx: Db,
    tx: KyselyTransaction,
    history: HistoryRow[],
    stepWrites: [string, StepWrite][],
    expectVersion: string | undefined,
  ): Promise<boolean> {
    const texts = this.sqliteWrites();
    const workflowId = tx.workflowId;
    const columns = ['updated_at', ...tx.workflowCells.keys()];
    const parameters: unknown[] = [tx.now.getTime(), ...[...tx.workflowCells.values()].map((cell) => cell.value)];
    if (history.length > 0) {
      columns.push('last_history_seq');
      parameters.push(tx.historySeq + history.length);
    }
    parameters.push(workflowId);
    if (expectVersion !== undefined) parameters.push(Number(expectVersion));
    const matched = await trx.executeQuery(CompiledQuery.raw(texts.updateWorkflow(columns, expectVersion !== undefined), parameters));
    if (expectVersion !== undefined && Number(matched.numAffectedRows ?? 0) !== 1) return false;
    for (const [name, write] of stepWrites) {
      const stepParameters = [...[...write.cells.values()].map((cell) => cell.value), workflowId, name];
      if (write.fence) stepParameters.push(write.fence.expected);
      const result = await trx.executeQuery(CompiledQuery.raw(texts.updateStep([...write.cells.keys()], write.fence !== null), stepParameters));
      if (Number(result.numAffectedRows ?? 0) !== 1) throw staleLease(workflowId, name);
    }
    await this.insertHistorySqlite(trx, history, tx.now.getTime());
    return true;
  }

  /** SQLite: the writes of a group-commit batch (see {@link flushBatch}), one statement per group and chunk. */
  private async flushBatchSqlite(trx: Db, groups: BatchGroups, now: Date): Promise<void> {
    const texts = this.sqliteWrites();
    for (const group of groups.workflows.values()) {
      for (const rows of chunk(group.rows, Math.floor(MAX_STATEMENT_PARAMS / (group.columns.length + 1)))) {
        const parameters: unknown[] = [];
        for (const r of rows) {
          parameters.push(r.id);
          for (const c of group.columns) parameters.push(r.cells.get(c)!.value);
        }
        await this.rawRows(trx, texts.update('workflows', group.columns, rows.length), parameters);
      }
    }
    for (const group of groups.steps.values()) {
      for (const rows of chunk(group.rows, Math.floor(MAX_STATEMENT_PARAMS / (group.columns.length + 4)))) {
        const parameters: unknown[] = [];
        for (const { workflowId, name, write } of rows) {
          parameters.push(workflowId, name, write.fence !== null ? 1 : 0, write.fence?.expected ?? null);
          for (const c of group.columns) parameters.push(write.cells.get(c)!.value);
        }
        const result = await trx.executeQuery(CompiledQuery.raw(texts.update('steps', group.columns, rows.length), parameters));
        // A fenced row whose lease changed is not updated: the batch is stale.
        if (Number(result.numAffectedRows ?? 0) !== rows.length) throw staleLease(rows[0]!.workflowId, rows[0]!.name);
      }
    }
    await this.insertHistorySqlite(trx, groups.history, now.getTime());
  }

  private sqliteWrites(): SqliteWriteTexts {
    this.sqliteTexts ??= new SqliteWriteTexts({ workflows: this.tableSql('workflows'), steps: this.tableSql('steps'), history: this.tableSql('history') });
    return this.sqliteTexts;
  }

  private async rawRows(db: Db, text: string, parameters: unknown[]): Promise<Row[]> {
    return (await db.executeQuery<Row>(CompiledQuery.raw(text, parameters))).rows;
  }

  /** What a create inserted, committed: the first optimistic write on it needs no read. */
  private rememberCreated(workflow: WorkflowRecord, input: CreateWorkflowInput, createdAt: Date, historySeq: number, version: string): void {
    const steps = input.steps.map((s) => newStepRecord(workflow.id, { ...s, dependsOn: [...s.dependsOn] }, createdAt)).sort((a, b) => a.position - b.position);
    this.written.put(workflow.id, { ...copyRecords({ workflow, steps }), historySeq, version });
  }

  /** A new step's values, in {@link STEP_INSERT_COLUMNS} order; with `claim`, as a claim at `createdAt` leaves it. */
  private stepValues(s: CreateWorkflowInput['steps'][number], createdAt: Date): unknown[] {
    const claim = s.claim;
    if (claim) {
      for (const field of ['workerId', 'leaseToken', 'callbackTokenHash'] as const) {
        if (typeof claim[field] !== 'string' || claim[field] === '') throw new TypeError(`claim.${field} must be a non-empty string`);
      }
      if (checkedDate(claim.leaseExpiresAt, 'leaseExpiresAt') === null) throw new TypeError('claim.leaseExpiresAt is required');
    }
    const dueAt = checkedDate(s.dueAt, 'dueAt');
    return [
      s.name,
      s.position,
      JSON.stringify([...s.dependsOn]),
      claim ? 'running' : 'pending',
      s.maxAttempts,
      dueAt === null ? null : this.timeParam(dueAt),
      claim ? 1 : 0,
      claim ? this.timeParam(createdAt) : null,
      claim?.workerId ?? null,
      claim?.leaseToken ?? null,
      claim ? this.timeParam(claim.leaseExpiresAt) : null,
      claim?.callbackTokenHash ?? null,
    ];
  }

  // --- claims ------------------------------------------------------------------

  /**
   * Claims on Postgres: one statement that claims and returns the state the
   * claim leaves, outside a transaction of the store's own where it can (see
   * {@link claimPostgresStatement}). Candidates whose workflow changed while
   * the statement was running are left to a second statement, with the
   * tokens not yet taken.
   */
  private async claimPostgres(request: ClaimRequest, limit: number, tokens: ClaimRequest['tokens']): Promise<ClaimedStep[]> {
    const claims: ClaimedStep[] = [];
    let left = tokens;
    for (let round = 0; round < CLAIM_ROUNDS && left.length > 0; round++) {
      const result = await this.claimPostgresRound(request, Math.min(limit - claims.length, left.length), left);
      claims.push(...result.claims);
      if (result.changed === 0 || claims.length >= limit) break;
      const taken = new Set(result.claims.map((c) => c.steps.find((s) => s.name === c.stepName)?.leaseToken));
      left = left.filter((t) => !taken.has(t.leaseToken));
    }
    return claims;
  }

  /** One claim statement: in the host's transaction, on its own, or (under a stricter default isolation) in a read-committed transaction. */
  private async claimPostgresRound(request: ClaimRequest, limit: number, tokens: ClaimRequest['tokens']): Promise<PgClaimResult> {
    // The host's transaction, at its isolation: as every other statement of the store in it.
    if (this.db.isTransaction) return this.claimPostgresStatement(this.db, request, limit, tokens, false);
    if (this.claimsOutsideTransaction) {
      const alone = await this.claimPostgresStatement(this.db, request, limit, tokens, true);
      if (alone) return alone;
      this.claimsOutsideTransaction = false;
    }
    return this.inTransaction((trx) => this.claimPostgresStatement(trx, request, limit, tokens, false));
  }

  /**
   * The claim statement: locks due steps with their workflow rows (skipping
   * locked ones), claims them, writes their history and returns, for each
   * claimed workflow, the workflow and all its steps as the claim left them.
   *
   * The claimed steps and workflow rows are returned by the writes
   * themselves. The workflow's other steps are read from the statement's
   * snapshot, which is current only if nothing committed a change to them
   * between the snapshot and the lock. Every write of the store that changes
   * a step's state also updates its workflow row (all but a heartbeat, which
   * moves only a running step's lease expiry), so a workflow row whose locked
   * version is the one the snapshot shows vouches for its steps. Candidates
   * whose workflow row changed in between are not claimed (they count in
   * `changed`), as a second statement sees them afresh.
   *
   * That takes read committed isolation: the locks of a read-committed
   * statement take the newest version of a row, where a stricter isolation
   * fails. With `outsideTransaction`, the statement runs on its own at the
   * server's default isolation, and claims nothing (returning null) unless
   * that is read committed.
   */
  private claimPostgresStatement(
    db: Db,
    request: ClaimRequest,
    limit: number,
    tokens: ClaimRequest['tokens'],
    outsideTransaction: true,
  ): Promise<PgClaimResult | null>;
  private claimPostgresStatement(
    db: Db,
    request: ClaimRequest,
    limit: number,
    tokens: ClaimRequest['tokens'],
    outsideTransaction: false,
  ): Promise<PgClaimResult>;
  private async claimPostgresStatement(
    db: Db,
    request: ClaimRequest,
    limit: number,
    tokens: ClaimRequest['tokens'],
    outsideTransaction: boolean,
  ): Promise<PgClaimResult | null> {
    const now = this.nowSql(undefined);
    const steps = this.ref('steps');
    const workflows = this.ref('workflows');
    const isolation = outsideTransaction ? sql`and current_setting('transaction_isolation') = 'read committed'` : sql``;
    const sent = Date.now();
    const rows = await this.rows(
      db,
      sql`
      with due as materialized (
        select s.workflow_id, s.name, s.status, s.lease_owner, s.due_at, s.position,
          w.status as workflow_status, w.last_history_seq, w.xmin as locked_version
        from ${steps} s join ${workflows} w on w.id = s.workflow_id
        where s.due_at is not null and s.due_at <= ${now}
          and (s.lease_expires_at is null or s.lease_expires_at <= ${now})
          and s.status in (${CLAIMABLE_STEP_SQL})
          and w.status in (${ACTIVE_WORKFLOW_SQL})
          ${isolation}
        order by s.due_at
        limit ${limit}
        for update of s, w skip locked
      ),
      current_due as (
        select due.* from due join ${workflows} w on w.id = due.workflow_id and w.xmin = due.locked_version
      ),
      numbered as (
        select d.*, row_number() over (order by d.due_at, d.workflow_id, d.position) as rn from current_due d
      ),
      tokens as (
        select t.lease_token, t.callback_token_hash, t.rn
        from unnest(${tokens.map((t) => t.leaseToken)}::text[], ${tokens.map((t) => t.callbackTokenHash)}::text[])
          with ordinality as t(lease_token, callback_token_hash, rn)
      ),
      claimed as (
        update ${steps} s set
          lease_owner = ${request.workerId},
          lease_token = tokens.lease_token,
          lease_expires_at = ${this.leaseExpirySql(request.leaseMs)},
          claimed_from_status = s.status,
          claimed_from_owner = s.lease_owner,
          status = case when s.status = 'pending' then 'running' else s.status end,
          attempts = case when s.status in ('pending', 'running', 'compensating') then s.attempts + 1 else s.attempts end,
          retry_count = case when s.status = 'running' then s.retry_count + 1 else s.retry_count end,
          started_at = case when s.status in ('pending', 'running') then ${now} else s.started_at end,
          callback_token_hash = case when s.status in ('pending', 'running') then tokens.callback_token_hash else s.callback_token_hash end,
          callback_result = case when s.status = 'pending' then null else s.callback_result end
        from numbered n join tokens on tokens.rn = n.rn
        where s.workflow_id = n.workflow_id and s.name = n.name
        returning s.workflow_id, s.name, s.attempts, n.status as previous_status, n.lease_owner as previous_owner,
          n.workflow_status, n.last_history_seq, n.rn, to_json(s) as step_row
      ),
      new_history as (
        select x.*, x.base + row_number() over (partition by x.workflow_id order by x.rn, x.sub) as seq
        from (
          select workflow_id, min(last_history_seq) as base, min(rn) as rn, 0 as sub, 'workflow' as kind,
            null::text as step_name, 'pending' as from_status, 'running' as to_status, null::text as action,
            null::jsonb as detail
          from claimed where workflow_status = 'pending' group by workflow_id
          union all
          select workflow_id, last_history_seq, rn, 1, 'step', name, 'pending', 'running', null, null
          from claimed where previous_status = 'pending'
          union all
          select workflow_id, last_history_seq, rn, 1, 'note', name, null, null, 'lease_reclaimed',
            jsonb_build_object('previousLeaseOwner', previous_owner, 'attempt', attempts)
          from claimed where previous_status = 'running'
        ) x
      ),
      history as (
        insert into ${this.ref('history')} (workflow_id, seq, at, kind, step_name, from_status, to_status, action, detail)
        select workflow_id, seq, ${now}, kind, step_name, from_status, to_status, action, detail from new_history
      ),
      workflow_updates as (
        update ${workflows} w set
          status = case when w.status = 'pending' then 'running' else w.status end,
          retry_count = w.retry_count + c.reclaims,
          last_history_seq = coalesce(h.seq, w.last_history_seq),
          version = w.version + 1,
          updated_at = ${now}
        from (
          select workflow_id, (count(*) filter (where previous_status = 'running'))::integer as reclaims
          from claimed group by workflow_id
        ) c
        left join (select workflow_id, max(seq) as seq from new_history group by workflow_id) h on h.workflow_id = c.workflow_id
        where w.id = c.workflow_id
        returning w.id, w.xmin::text as row_version, to_json(w) as workflow_row
      )
      select
        current_setting('transaction_isolation') as isolation,
        ((select count(*) from due) - (select count(*) from current_due))::integer as changed,
        ${now} as now,
        (select coalesce(json_agg(json_build_object('workflow_id', workflow_id, 'name', name, 'previous_status', previous_status) order by rn), '[]'::json)
          from claimed) as claims,
        (select coalesce(json_agg(workflow_row), '[]'::json) from workflow_updates) as workflows,
        (select coalesce(json_object_agg(id, row_version), '{}'::json) from workflow_updates) as versions,
        (select coalesce(json_agg(step_row), '[]'::json) from (
          select step_row from claimed
          union all
          select to_json(s) from ${steps} s
          where s.workflow_id in (select workflow_id from claimed)
            and not exists (select 1 from claimed c where c.workflow_id = s.workflow_id and c.name = s.name)
        ) all_steps) as steps`,
    );
    const row = rows[0]!;
    if (outsideTransaction && row['isolation'] !== 'read committed') return null;
    const claimedRows = parseJsonRows(row['claims']);
    const changed = Number(row['changed'] ?? 0);
    if (claimedRows.length === 0) return { claims: [], changed };
    const claimedAt = toDate(row['now'])!;
    if (!this.clock) this.observeClock(claimedAt, sent);
    const workflowRows = parseJsonRows(row['workflows']);
    const claims = this.assembleClaims(
      claimedRows.map((r) => ({ workflowId: String(r['workflow_id']), name: String(r['name']), previous: r['previous_status'] as StepStatus })),
      workflowRows,
      parseJsonRows(row['steps']),
      claimedAt,
    );
    if (!this.db.isTransaction) {
      // The state the claim left, as of the row versions it wrote: an optimistic write on it needs no read.
      const versions = (row['versions'] ?? {}) as Record<string, string>;
      const historySeqs = new Map(workflowRows.map((r) => [String(r['id']), Number(r['last_history_seq'] ?? 0)]));
      for (const c of claims) {
        const version = versions[c.workflow.id];
        const historySeq = historySeqs.get(c.workflow.id);
        if (version === undefined || historySeq === undefined) continue;
        this.written.put(c.workflow.id, { ...copyRecords(c), historySeq, version });
      }
    }
    return { claims, changed };
  }

  /** Claims on SQLite; `remember` receives the state the claim leaves of each workflow, for after the commit. */
  private async claimSqlite(
    trx: Db,
    request: ClaimRequest,
    limit: number,
    tokens: ClaimRequest['tokens'],
    remember: Snapshot[],
  ): Promise<ClaimedStep[]> {
    const nowMs = this.clock ? this.clock.now() : Date.now();
    const now = new Date(nowMs);
    const steps = this.ref('steps');
    const workflows = this.ref('workflows');
    const tokenJson = JSON.stringify(tokens.map((t) => [t.leaseToken, t.callbackTokenHash]));
    // One UPDATE … RETURNING: SQLite's RETURNING sees only the new row, so the
    // claim records what it replaced in claimed_from_status / claimed_from_owner.
    const claimedRows = await this.rows(
      trx,
      sql`
      with due as (
        select s.workflow_id, s.name, s.due_at, s.position
        from ${steps} s join ${workflows} w on w.id = s.workflow_id
        where s.due_at is not null and s.due_at <= ${nowMs}
          and (s.lease_expires_at is null or s.lease_expires_at <= ${nowMs})
          and s.status in (${CLAIMABLE_STEP_SQL})
          and w.status in (${ACTIVE_WORKFLOW_SQL})
        order by s.due_at
        limit ${limit}
      ),
      numbered as (
        select workflow_id, name, row_number() over (order by due_at, workflow_id, position) - 1 as rn from due
      )
      update ${steps} set
        lease_owner = ${request.workerId},
        lease_token = json_extract(${tokenJson}, '$[' || numbered.rn || '][0]'),
        lease_expires_at = ${nowMs + request.leaseMs},
        claimed_from_status = status,
        claimed_from_owner = lease_owner,
        status = case when status = 'pending' then 'running' else status end,
        attempts = case when status in ('pending', 'running', 'compensating') then attempts + 1 else attempts end,
        retry_count = case when status = 'running' then retry_count + 1 else retry_count end,
        started_at = case when status in ('pending', 'running') then ${nowMs} else started_at end,
        callback_token_hash = case when status in ('pending', 'running')
          then json_extract(${tokenJson}, '$[' || numbered.rn || '][1]') else callback_token_hash end,
        callback_result = case when status = 'pending' then null else callback_result end
      from numbered
      where ${steps}.workflow_id = numbered.workflow_id and ${steps}.name = numbered.name
      returning workflow_id, name, attempts, lease_token, claimed_from_status, claimed_from_owner`,
    );
    if (claimedRows.length === 0) return [];
    const order = new Map(tokens.map((t, i) => [t.leaseToken, i]));
    claimedRows.sort((a, b) => (order.get(String(a['lease_token'])) ?? 0) - (order.get(String(b['lease_token'])) ?? 0));

    const ids = [...new Set(claimedRows.map((r) => String(r['workflow_id'])))];
    const before = await this.rows(trx, sql`select id, status, last_history_seq from ${workflows} where id in (${sql.join(ids)})`);
    const state = new Map(
      before.map((r) => [String(r['id']), { pending: r['status'] === 'pending', seq: Number(r['last_history_seq']), reclaims: 0 }]),
    );
    const history: HistoryRow[] = [];
    const append = (workflowId: string, entry: NewHistoryEntry): void => {
      const w = state.get(workflowId)!;
      history.push({ workflowId, seq: ++w.seq, entry });
    };
    for (const r of claimedRows) {
      const workflowId = String(r['workflow_id']);
      const name = String(r['name']);
      const w = state.get(workflowId);
      if (!w) throw new StoreError(`claimed step ${name} of workflow ${workflowId} has no workflow row`);
      if (w.pending) {
        w.pending = false;
        append(workflowId, claimHistoryEntry('workflow', null, 'pending', 'running'));
      }
      if (r['claimed_from_status'] === 'pending') {
        append(workflowId, claimHistoryEntry('step', name, 'pending', 'running'));
      } else if (r['claimed_from_status'] === 'running') {
        w.reclaims++;
        append(workflowId, {
          ...claimHistoryEntry('note', name, null, null),
          action: 'lease_reclaimed',
          detail: { previousLeaseOwner: r['claimed_from_owner'] ?? null, attempt: Number(r['attempts']) },
        });
      }
    }
    for (const [id, w] of state) {
      await sql`
        update ${workflows} set
          status = case when status = 'pending' then 'running' else status end,
          retry_count = retry_count + ${w.reclaims},
          last_history_seq = ${w.seq},
          version = version + 1,
          updated_at = ${nowMs}
        where id = ${id}`.execute(trx);
    }
    await this.insertHistorySqlite(trx, history, nowMs);
    const workflowRows = await this.rows(trx, sql`select * from ${workflows} where id in (${sql.join(ids)})`);
    const stepRows = await this.rows(
      trx,
      sql`select * from ${steps} where workflow_id in (${sql.join(ids)}) order by workflow_id, position`,
    );
    const claims = this.assembleClaims(
      claimedRows.map((r) => ({ workflowId: String(r['workflow_id']), name: String(r['name']), previous: r['claimed_from_status'] as StepStatus })),
      workflowRows,
      stepRows,
      now,
    );
    const rows = new Map(workflowRows.map((r) => [String(r['id']), r]));
    const seen = new Set<string>();
    for (const c of claims) {
      const row = rows.get(c.workflow.id);
      if (!row || seen.has(c.workflow.id)) continue;
      seen.add(c.workflow.id);
      remember.push({
        ...copyRecords(c),
        historySeq: Number(row['last_history_seq'] ?? 0),
        version: String(Number(row['version'] ?? 0)),
      });
    }
    return claims;
  }

  private assembleClaims(
    claimed: { workflowId: string; name: string; previous: StepStatus }[],
    workflowRows: Row[],
    stepRows: Row[],
    now: Date,
  ): ClaimedStep[] {
    const workflows = new Map(workflowRows.map((r) => [String(r['id']), r]));
    const stepsByWorkflow = new Map<string, Row[]>();
    for (const r of stepRows) {
      const id = String(r['workflow_id']);
      let list = stepsByWorkflow.get(id);
      if (!list) stepsByWorkflow.set(id, (list = []));
      list.push(r);
    }
    return claimed.map((c) => {
      const row = workflows.get(c.workflowId);
      if (!row) throw new StoreError(`claimed step ${c.name} of workflow ${c.workflowId} has no workflow row`);
      const steps = (stepsByWorkflow.get(c.workflowId) ?? []).map((r) => this.toStep(r)).sort((a, b) => a.position - b.position);
      return { workflow: this.toWorkflow(row), steps, stepName: c.name, previousStatus: c.previous, now: new Date(now.getTime()) };
    });
  }

  // --- transactions ---------------------------------------------------------------

  /** Reads the workflow under its row lock, and the store's time once the lock is held. */
  private async lockWorkflow(trx: Db, workflowId: string): Promise<{ workflow: WorkflowRecord; historySeq: number; now: Date; version: number }> {
    let row: Row | undefined;
    let now: Date;
    if (this.pg) {
      // clock_timestamp() in the outer query is evaluated after the lock is granted.
      const clockSql = this.clock ? sql`null` : sql`clock_timestamp()`;
      row = (
        await this.rows(
          trx,
          sql`select w.*, ${clockSql} as locked_at from (select * from ${this.ref('workflows')} where id = ${workflowId} for update) w`,
        )
      )[0];
      now = this.clock ? new Date(this.clock.now()) : (toDate(row?.['locked_at']) ?? new Date());
    } else {
      // BEGIN IMMEDIATE already holds the database's write lock.
      row = (await this.getWorkflowRow(trx, workflowId)) ?? undefined;
      now = new Date(this.clock ? this.clock.now() : Date.now());
    }
    if (!row) throw new NotFoundError(`workflow ${workflowId} not found`, { workflowId });
    return { workflow: this.toWorkflow(row), historySeq: Number(row['last_history_seq'] ?? 0), now, version: Number(row['version'] ?? 0) };
  }

  /**
   * Applies a transaction's buffered writes: one statement on Postgres; per
   * table and step on SQLite. With `expectVersion` (SQLite), only if the
   * workflow row still has that version: false, with nothing written, if not.
   */
  private async flush(trx: Db, tx: KyselyTransaction, expectVersion?: string): Promise<boolean> {
    if (!tx.hasWrites) return true;
    const stale = tx.staleError();
    if (stale) throw stale;
    const workflowId = tx.workflowId;
    const history: HistoryRow[] = tx.history.map((entry, i) => ({ workflowId, seq: tx.historySeq + i + 1, entry }));
    // A write with no column (an empty patch) matters only for its fence.
    const stepWrites = [...tx.stepWrites].filter(([, write]) => write.cells.size > 0 || write.fence !== null);
    if (!this.pg) return this.flushSqlite(trx, tx, history, stepWrites, expectVersion);

    const now = this.param('time', this.timeParam(tx.now));
    const workflowSets = [sql`updated_at = ${now}`, sql`version = version + 1`, ...[...tx.workflowCells].map(([column, cell]) => sql`${sql.ref(column)} = ${this.param(cell.kind, cell.value)}`)];
    if (history.length > 0) workflowSets.push(sql`last_history_seq = ${this.param('int', tx.historySeq + history.length)}`);
    const workflowUpdate = sql`update ${this.ref('workflows')} set ${sql.join(workflowSets)} where id = ${workflowId}`;

    // Postgres: every write in one statement of data-modifying CTEs. Steps with
    // the same set of changed columns share one UPDATE … FROM (VALUES …).
    const ctes: RawBuilder<unknown>[] = [sql`wf as (${workflowUpdate})`];
    const groups = new Map<string, [string, StepWrite][]>();
    for (const entry of stepWrites) {
      const key = [...entry[1].cells.keys()].sort().join(',');
      let group = groups.get(key);
      if (!group) groups.set(key, (group = []));
      group.push(entry);
    }
    const counters: RawBuilder<unknown>[] = [];
    let g = 0;
    for (const group of groups.values()) {
      const columns = [...group[0]![1].cells.keys()].sort();
      const values = group.map(([name, write]) => {
        const cells = columns.map((c) => {
          const cell = write.cells.get(c)!;
          return this.param(cell.kind, cell.value);
        });
        return sql`(${sql.join([sql`${name}::text`, sql`${write.fence !== null}::boolean`, sql`${write.fence?.expected ?? null}::text`, ...cells])})`;
      });
      const alias = sql.id(`g${g}`);
      const names = sql.join(['k_name', 'k_fenced', 'k_expected', ...columns.map((_, i) => `c${i}`)].map((c) => sql.id(c)));
      const sets = columns.map((c, i) => sql`${sql.ref(c)} = v.${sql.id(`c${i}`)}`);
      if (sets.length === 0) sets.push(sql`name = s.name`);
      ctes.push(sql`
        ${alias} as (
          update ${this.ref('steps')} s set ${sql.join(sets)}
          from (values ${sql.join(values)}) as v(${names})
          where s.workflow_id = ${workflowId} and s.name = v.k_name
            and (not v.k_fenced or s.lease_token is not distinct from v.k_expected)
          returning 1
        )`);
      counters.push(sql`(select count(*) from ${alias})`);
      g++;
    }
    if (history.length > 0) ctes.push(sql`hist as (${this.historyInsertSql(history, now)})`);
    const total = counters.length > 0 ? sql.join(counters, sql` + `) : sql`0`;
    const rows = await this.rows(trx, sql`with ${sql.join(ctes)} select (${total})::integer as updated`);
    if (Number(rows[0]?.['updated'] ?? 0) !== stepWrites.length) {
      const missing = stepWrites.find(([, w]) => w.fence !== null)?.[0] ?? stepWrites[0]?.[0] ?? '';
      throw staleLease(workflowId, missing);
    }
    if (this.wakesOthers(tx)) await this.wakeOthersOnCommit(trx);
    return true;
  }


  // --- group commit ------------------------------------------------------------------

  /**
   * A group-commit batch: on Postgres, the creates in one statement, the
   * optimistic calls by compare-and-set (one statement, no lock held) and the
   * others in one locked transaction, side by side (they are on different
   * workflows); elsewhere all in one locked transaction.
   */
  private async runBatches(batch: QueuedEntry[]): Promise<void> {
    if (!this.pg) {
      // A result write alone in its batch (low load) is written as without group commit: from the remembered state.
      const only = batch.length === 1 ? batch[0]! : undefined;
      if (only && !isCreate(only) && only.optimistic) return this.transactRemembered(only.key, only.fn).then(only.resolve, only.reject);
      // Everything else, creates included, in one locked transaction.
      return this.runBatch(batch);
    }
    // Side by side, each on its own connection: they are on different workflows.
    const creates: PgCreateEntry[] = [];
    const optimistic: TransactEntry[] = [];
    const locked: TransactEntry[] = [];
    for (const entry of batch) {
      if (isCreate(entry)) creates.push(pgCreateEntry(entry));
      else (entry.optimistic ? optimistic : locked).push(entry);
    }
    const groups: [QueuedEntry[], () => Promise<void>][] = [];
    if (creates.length > 0) groups.push([creates, () => this.runCreateBatch(creates)]);
    if (optimistic.length > 0) groups.push([optimistic, () => this.runOptimisticBatch(optimistic)]);
    if (locked.length > 0) groups.push([locked, () => this.runBatch(locked)]);
    const outcomes = await Promise.allSettled(groups.map(([, run]) => run()));
    // A group that failed fails only its own unsettled calls (settling twice is ignored).
    outcomes.forEach((outcome, i) => {
      if (outcome.status === 'rejected') for (const entry of groups[i]![0]) entry.reject(outcome.reason);
    });
  }

  /**
   * Postgres: runs one batch of `transact` calls as optimistic transactions
   * (see {@link transactOptimistic}) whose writes go out in one
   * compare-and-set statement, one commit. A call whose workflow changed since
   * its snapshot runs again, with the others that lost, on fresh snapshots
   * read in one statement; after {@link OPTIMISTIC_ATTEMPTS} rounds the rest
   * take the lock one by one. Each call is settled once its outcome is
   * committed (or known to be nothing).
   */
  private async runOptimisticBatch(batch: TransactEntry[]): Promise<void> {
    let pending = batch;
    /** Snapshots read for the next round (the check of a remembered one). */
    let prefetched = new Map<string, Snapshot & { now: Date }>();
    for (let round = 0; round < OPTIMISTIC_ATTEMPTS && pending.length > 0; round++) {
      const snapshots = new Map<TransactEntry, Snapshot & { now: Date; remembered: boolean }>();
      const toRead: string[] = [];
      for (const entry of pending) {
        const ready = prefetched.get(entry.key);
        const remembered = !ready && round === 0 && this.knowsTime() ? this.written.take(entry.key) : undefined;
        if (ready) snapshots.set(entry, { ...ready, remembered: false });
        else if (remembered) snapshots.set(entry, { ...remembered, now: this.databaseNow(remembered.workflow.updatedAt), remembered: true });
        else toRead.push(entry.key);
      }
      prefetched = new Map();
      if (toRead.length > 0) {
        const read = await this.readSnapshots(toRead);
        for (const entry of pending) {
          if (snapshots.has(entry)) continue;
          const found = read.get(entry.key);
          if (found) snapshots.set(entry, { ...found, remembered: false });
          else entry.reject(new NotFoundError(`workflow ${entry.key} not found`, { workflowId: entry.key }));
        }
      }
      const retry: TransactEntry[] = [];
      const writes: { entry: TransactEntry; tx: KyselyTransaction; value: unknown }[] = [];
      /** Outcomes decided on a remembered snapshot without a write: they stand only if it was current. */
      const unverified: { entry: TransactEntry; settle: () => void }[] = [];
      await Promise.all(
        [...snapshots].map(async ([entry, snapshot]) => {
          // The callback gets its own copy: what it does to the records it is handed (or passes on, such
          // as step outputs) must not reach the state this store remembers.
          const view = copyRecords({ workflow: snapshot.workflow, steps: snapshot.steps });
          const tx = new KyselyTransaction(snapshot.now, view.workflow, snapshot.historySeq, view.steps, (kind, value) =>
            this.encode(kind, value),
          );
          let settle: () => void;
          try {
            const value = await entry.fn(tx);
            const stale = tx.hasWrites ? tx.staleError() : undefined;
            if (tx.hasWrites && !stale) {
              // A write is checked by the compare-and-set itself.
              writes.push({ entry, tx, value });
              return;
            }
            settle = stale ? () => entry.reject(stale) : () => entry.resolve(value);
          } catch (err) {
            settle = () => entry.reject(new CallbackError(err));
          } finally {
            tx.close();
          }
          if (snapshot.remembered) unverified.push({ entry, settle });
          else settle();
        }),
      );
      if (unverified.length > 0) {
        // Was the remembered state current? If so the outcome stands; if not, decide again on what was just read.
        const read = await this.readSnapshots(unverified.map((u) => u.entry.key));
        for (const { entry, settle } of unverified) {
          const fresh = read.get(entry.key);
          if (!fresh) {
            entry.reject(new NotFoundError(`workflow ${entry.key} not found`, { workflowId: entry.key }));
          } else if (fresh.version !== snapshots.get(entry)!.version) {
            prefetched.set(entry.key, fresh);
            retry.push(entry);
          } else {
            this.written.put(entry.key, { workflow: fresh.workflow, historySeq: fresh.historySeq, steps: fresh.steps, version: fresh.version });
            settle();
          }
        }
      }
      if (writes.length > 0) {
        const versions = await this.casWrite(
          writes.map(({ tx, entry }) => ({ tx, version: snapshots.get(entry)!.version })),
        );
        const waking: (() => void)[] = [];
        for (const { entry, tx, value } of writes) {
          const version = versions.get(entry.key);
          if (version === undefined) {
            retry.push(entry);
            continue;
          }
          this.written.put(entry.key, { ...tx.afterImage(snapshots.get(entry)!), version });
          // A winner that leaves work for others is settled once its notification is sent (a loser's writes were not made: it runs again).
          if (this.wakesOthers(tx)) waking.push(() => entry.resolve(value));
          else entry.resolve(value);
        }
        await this.settleAfterWake(waking);
      }
      pending = retry;
    }
    for (const entry of pending) await this.transactLocked(entry.key, entry.fn).then(entry.resolve, entry.reject);
  }

  /** Snapshots of workflows in one statement, each from the statement's one snapshot; unknown ids are left out. */
  private async readSnapshots(ids: string[]): Promise<Map<string, Snapshot & { now: Date }>> {
    const clockSql = this.clock ? sql`null` : sql`clock_timestamp()`;
    const sent = Date.now();
    const rows = await this.rows(
      this.db,
      sql`select w.*, w.xmin::text as row_version, ${clockSql} as read_at,
        (select coalesce(json_agg(s order by s.position), '[]'::json) from ${this.ref('steps')} s where s.workflow_id = w.id) as steps_json
      from ${this.ref('workflows')} w where w.id = any(${ids}::text[])`,
    );
    const out = new Map<string, Snapshot & { now: Date }>();
    // One reading per statement: the latest row's clock, which bounds the offset most tightly.
    let latest: Date | null = null;
    for (const row of rows) {
      let now: Date;
      if (this.clock) now = new Date(this.clock.now());
      else {
        now = toDate(row['read_at']) ?? new Date();
        if (!latest || now > latest) latest = now;
      }
      out.set(String(row['id']), {
        workflow: this.toWorkflow(row),
        historySeq: Number(row['last_history_seq'] ?? 0),
        steps: parseJsonRows(row['steps_json']).map((r) => this.toStep(r)),
        now,
        version: String(row['row_version']),
      });
    }
    if (latest) this.observeClock(latest, sent);
    return out;
  }

  /**
   * Runs one batch of `transact` calls in one database transaction and
   * settles every call after it ends: results only once committed.
   */
  private async runBatch(batch: QueuedEntry[]): Promise<void> {
    const creates = batch.filter(isCreate);
    const transacts = batch.filter((e): e is TransactEntry => !isCreate(e));
    // Taken out: the batch's writes change the row versions. On SQLite, a remembered state is
    // used once the batch's lock shows it current, and the batch's writes are remembered after its commit.
    const remembered = new Map<string, Snapshot>();
    for (const entry of transacts) {
      const found = this.written.take(entry.key);
      if (found && !this.pg) remembered.set(entry.key, found);
    }
    /** Per call: the state its writes apply to, to remember after the commit (SQLite). */
    let bases: (Snapshot | undefined)[] = [];
    let created: ({ ok: true; workflow: WorkflowRecord | null } | { ok: false; error: unknown })[] = [];
    let outcomes: BatchOutcome[] = [];
    try {
      await this.inTransaction(async (trx) => {
        created = [];
        // A create alone in its batch needs no savepoint: its failure is the transaction's.
        if (batch.length === 1 && creates.length === 1) {
          created.push({ ok: true, workflow: await this.insertSqlite(trx, creates[0]!.input, creates[0]!.createdAt, creates[0]!.history) });
        } else {
          for (const entry of creates) created.push(await this.createInBatch(trx, entry));
        }
        if (transacts.length === 0) return;
        const current = await this.currentRemembered(trx, remembered);
        const { locked, now } = await this.lockWorkflows(
          trx,
          transacts.flatMap((e) => (current.has(e.key) ? [] : [e.key])),
        );
        const steps = await this.readSteps(trx, [...locked.keys()]);
        bases = [];
        outcomes = await Promise.all(
          transacts.map(async (entry, i): Promise<BatchOutcome> => {
            let found: LockedWorkflow | undefined = locked.get(entry.key);
            let stepRecords = steps.get(entry.key) ?? [];
            const known = current.get(entry.key);
            if (known) {
              // The callback gets its own copy: nothing it does reaches the remembered state.
              const view = copyRecords({ workflow: known.workflow, steps: known.steps });
              found = { workflow: view.workflow, historySeq: known.historySeq, version: known.version };
              stepRecords = view.steps;
              bases[i] = known;
            } else if (found && !this.pg) {
              bases[i] = { ...copyRecords({ workflow: found.workflow, steps: stepRecords }), historySeq: found.historySeq, version: found.version };
            }
            if (!found) return { ok: false, error: new NotFoundError(`workflow ${entry.key} not found`, { workflowId: entry.key }) };
            const tx = new KyselyTransaction(now, found.workflow, found.historySeq, stepRecords, (kind, value) => this.encode(kind, value));
            try {
              const value = await entry.fn(tx);
              const stale = tx.hasWrites ? tx.staleError() : undefined;
              return stale ? { ok: false, error: stale } : { ok: true, value, tx };
            } catch (err) {
              return { ok: false, error: new CallbackError(err) };
            } finally {
              tx.close();
            }
          }),
        );
        const writes = outcomes.flatMap((o) => (o.ok && o.tx.hasWrites ? [o.tx] : []));
        await this.flushBatch(trx, writes, now);
      });
    } catch (err) {
      // Nothing of the batch was written. A call that failed on its own keeps its own error.
      creates.forEach((entry, i) => {
        const outcome = created[i];
        entry.reject(outcome && !outcome.ok ? outcome.error : err);
      });
      transacts.forEach((entry, i) => {
        const outcome = outcomes[i];
        entry.reject(outcome && !outcome.ok ? outcome.error : err);
      });
      return;
    }
    creates.forEach((entry, i) => {
      const outcome = created[i]!;
      if (!outcome.ok) return entry.reject(outcome.error);
      const workflow = outcome.workflow;
      if (workflow) this.rememberCreated(workflow, entry.input, entry.createdAt, entry.history.length, '0');
      entry.resolve(workflow);
    });
    transacts.forEach((entry, i) => {
      const outcome = outcomes[i]!;
      const base = bases[i];
      // Remembered once committed, and only for a store that commits its own transactions.
      if (outcome.ok && base && !this.db.isTransaction) {
        const after = outcome.tx.hasWrites ? { ...outcome.tx.afterImage(base), version: String(Number(base.version) + 1) } : base;
        this.written.put(entry.key, after);
      }
      if (outcome.ok) entry.resolve(outcome.value);
      else entry.reject(outcome.error);
    });
  }

  /**
   * SQLite, inside a batch's `BEGIN IMMEDIATE`: the remembered states that are
   * still current, checked by reading the workflows' `version` alone. No one
   * can write before the batch commits, so a matching version means the
   * remembered workflow and steps are exactly what a read would return.
   */
  private async currentRemembered(trx: Db, remembered: Map<string, Snapshot>): Promise<Map<string, Snapshot>> {
    const current = new Map<string, Snapshot>();
    if (remembered.size === 0) return current;
    const ids = [...remembered.keys()];
    const rows = await this.rows(trx, sql`select id, version from ${this.ref('workflows')} where id in (${sql.join(ids)})`);
    for (const row of rows) {
      const id = String(row['id']);
      const snapshot = remembered.get(id);
      if (snapshot && String(row['version']) === snapshot.version) current.set(id, snapshot);
    }
    return current;
  }

  /** A create inside a batch's transaction (SQLite), under a savepoint: one that fails leaves nothing behind, and the batch goes on. */
  private async createInBatch(trx: Db, entry: CreateEntry): Promise<{ ok: true; workflow: WorkflowRecord | null } | { ok: false; error: unknown }> {
    await sql`savepoint sagaline_create`.execute(trx);
    try {
      const workflow = await this.insertSqlite(trx, entry.input, entry.createdAt, entry.history);
      await sql`release sagaline_create`.execute(trx);
      return { ok: true, workflow };
    } catch (error) {
      await sql`rollback to sagaline_create`.execute(trx);
      await sql`release sagaline_create`.execute(trx);
      return { ok: false, error };
    }
  }

  /**
   * Locks a batch's workflow rows in one statement, in id order (so that two
   * batches never wait on each other in a cycle), and reads the store's time
   * once every lock is held.
   */
  private async lockWorkflows(trx: Db, ids: string[]): Promise<{ locked: Map<string, LockedWorkflow>; now: Date }> {
    const sorted = [...new Set(ids)].sort();
    let rows: Row[];
    let now: Date;
    if (sorted.length === 0) {
      rows = [];
      now = new Date(this.clock ? this.clock.now() : Date.now());
    } else if (this.pg) {
      // Rows leave the locking subquery one at a time: the last row's clock_timestamp() follows every lock.
      const clockSql = this.clock ? sql`null` : sql`clock_timestamp()`;
      rows = await this.rows(
        trx,
        sql`select w.*, ${clockSql} as locked_at
          from (select * from ${this.ref('workflows')} where id = any(${sorted}::text[]) order by id for update) w`,
      );
      const last = rows.reduce<Date | null>((max, r) => {
        const at = toDate(r['locked_at']);
        return at && (!max || at > max) ? at : max;
      }, null);
      // Without rows no transaction is handed out, and the time is not used.
      now = this.clock ? new Date(this.clock.now()) : (last ?? new Date());
    } else {
      // BEGIN IMMEDIATE already holds the database's write lock.
      rows = await this.rows(trx, sql`select * from ${this.ref('workflows')} where id in (${sql.join(sorted)})`);
      now = new Date(this.clock ? this.clock.now() : Date.now());
    }
    const locked = new Map<string, LockedWorkflow>();
    for (const row of rows) {
      locked.set(String(row['id']), { workflow: this.toWorkflow(row), historySeq: Number(row['last_history_seq'] ?? 0), version: String(row['version'] ?? 0) });
    }
    return { locked, now };
  }

  /** The steps of several workflows, each list in definition order. */
  private async readSteps(trx: Db, ids: string[]): Promise<Map<string, StepRecord[]>> {
    const byWorkflow = new Map<string, StepRecord[]>(ids.map((id) => [id, []]));
    if (ids.length === 0) return byWorkflow;
    const where = this.pg ? sql`workflow_id = any(${ids}::text[])` : sql`workflow_id in (${sql.join(ids)})`;
    const rows = await this.rows(trx, sql`select * from ${this.ref('steps')} where ${where} order by workflow_id, position`);
    for (const row of rows) byWorkflow.get(String(row['workflow_id']))?.push(this.toStep(row));
    return byWorkflow;
  }

  /**
   * Applies the buffered writes of a batch's transactions: workflows and steps
   * grouped by the set of columns they change, each group one
   * `UPDATE … FROM (VALUES …)`, and one history insert. On Postgres they are
   * data-modifying CTEs of one statement (more only past the parameter limit),
   * followed by one notification once the batch commits; on SQLite, one statement
   * each, built as text (see {@link flushBatchSqlite}).
   */
  private async flushBatch(trx: Db, txs: KyselyTransaction[], now: Date): Promise<void> {
    if (txs.length === 0) return;
    const nowCell: Cell = { kind: 'time', value: this.encode('time', now) };
    const workflowGroups: BatchGroups['workflows'] = new Map();
    const stepGroups: BatchGroups['steps'] = new Map();
    const history: HistoryRow[] = [];
    let wakes = false;
    for (const tx of txs) {
      const id = tx.workflowId;
      const cells = new Map<string, Cell>([['updated_at', nowCell], ...tx.workflowCells]);
      if (tx.history.length > 0) cells.set('last_history_seq', { kind: 'int', value: tx.historySeq + tx.history.length });
      tx.history.forEach((entry, i) => history.push({ workflowId: id, seq: tx.historySeq + i + 1, entry }));
      addToGroup(workflowGroups, [...cells.keys()].sort(), { id, cells });
      for (const [name, write] of tx.stepWrites) {
        // A write with no column (an empty patch) matters only for its fence.
        if (write.cells.size === 0 && write.fence === null) continue;
        addToGroup(stepGroups, [...write.cells.keys()].sort(), { workflowId: id, name, write });
      }
      wakes ||= this.wakesOthers(tx);
    }
    if (!this.pg) return this.flushBatchSqlite(trx, { workflows: workflowGroups, steps: stepGroups, history }, now);

    // Postgres: the pieces as data-modifying CTEs.
    const pieces: WritePiece[] = [];
    for (const group of workflowGroups.values()) {
      for (const rows of chunk(group.rows, Math.floor(MAX_STATEMENT_PARAMS / (group.columns.length + 1)))) {
        const values = rows.map((r) => this.valuesRow([sql`${r.id}`, ...group.columns.map((c) => this.cellSql(r.cells.get(c)!))]));
        const piece = this.updateFromValues('workflows', group.columns, ['k_id'], values, sql`w.id = v.k_id`);
        pieces.push({ ...piece, params: rows.length * (group.columns.length + 1) });
      }
    }
    for (const group of stepGroups.values()) {
      const perRow = group.columns.length + 4;
      for (const rows of chunk(group.rows, Math.floor(MAX_STATEMENT_PARAMS / perRow))) {
        const values = rows.map(({ workflowId, name, write }) =>
          this.valuesRow([
            sql`${workflowId}`,
            sql`${name}`,
            sql`${write.fence !== null}::boolean`,
            sql`${write.fence?.expected ?? null}::text`,
            ...group.columns.map((c) => this.cellSql(write.cells.get(c)!)),
          ]),
        );
        const where = sql`s.workflow_id = v.k_wf and s.name = v.k_name and (not v.k_fenced or s.lease_token is not distinct from v.k_expected)`;
        const piece = this.updateFromValues('steps', group.columns, ['k_wf', 'k_name', 'k_fenced', 'k_expected'], values, where);
        pieces.push({ ...piece, params: rows.length * perRow, stepRows: rows.length, firstStep: [rows[0]!.workflowId, rows[0]!.name] });
      }
    }
    const nowSql = this.param('time', this.timeParam(now));
    for (const rows of chunk(history, HISTORY_CHUNK)) {
      pieces.push({ sql: this.historyInsertSql(rows, nowSql), params: rows.length * HISTORY_COLUMNS.length, stepRows: 0, firstStep: null, counted: false });
    }

    // Pack the pieces into as few statements as the parameter limit allows.
    const statements: WritePiece[][] = [[]];
    let params = 0;
    for (const piece of pieces) {
      if (params + piece.params > MAX_STATEMENT_PARAMS && statements[statements.length - 1]!.length > 0) {
        statements.push([]);
        params = 0;
      }
      statements[statements.length - 1]!.push(piece);
      params += piece.params;
    }
    for (let i = 0; i < statements.length; i++) {
      const group = statements[i]!;
      const ctes = group.map((piece, j) => sql`${sql.id(`p${j}`)} as (${piece.sql})`);
      const counted = group.flatMap((piece, j) => (piece.counted ? [sql`(select count(*) from ${sql.id(`p${j}`)})`] : []));
      const total = counted.length > 0 ? sql.join(counted, sql` + `) : sql`0`;
      const rows = await this.rows(trx, sql`with ${sql.join(ctes)} select (${total})::integer as updated`);
      const expected = group.reduce((n, piece) => n + piece.stepRows, 0);
      if (Number(rows[0]?.['updated'] ?? 0) !== expected) throw batchStale(group.find((piece) => piece.stepRows > 0) ?? group[0]!);
    }
    if (wakes) await this.wakeOthersOnCommit(trx);
  }

  /** `UPDATE <table> SET … FROM (VALUES …)`: the workflows (`w`) or steps (`s`) named by the key columns. */
  private updateFromValues(
    table: 'workflows' | 'steps',
    columns: string[],
    keys: string[],
    values: RawBuilder<unknown>[],
    where: RawBuilder<unknown>,
  ): Omit<WritePiece, 'params'> {
    const alias = table === 'workflows' ? 'w' : 's';
    const names = [...keys, ...columns.map((_, i) => `c${i}`)].map((c) => sql.id(c));
    const sets = columns.map((c, i) => sql`${sql.ref(c)} = v.${sql.id(`c${i}`)}`);
    if (table === 'workflows') sets.push(sql`version = version + 1`);
    if (sets.length === 0) sets.push(sql`name = ${sql.id(alias)}.name`);
    const target = sql`${this.ref(table)} as ${sql.id(alias)}`;
    const countable = table === 'steps';
    // (SQLite's batch writes are built as text: see flushBatchSqlite.)
    const query = sql`update ${target} set ${sql.join(sets)} from (values ${sql.join(values)}) as v(${sql.join(names)})
          where ${where}${countable ? sql` returning 1` : sql``}`;
    return { sql: query, stepRows: 0, firstStep: null, counted: countable };
  }

  private valuesRow(cells: RawBuilder<unknown>[]): RawBuilder<unknown> {
    return sql`(${sql.join(cells)})`;
  }

  private cellSql(cell: Cell): RawBuilder<unknown> {
    return this.param(cell.kind, cell.value);
  }

  /**
   * After a committed write that leaves work for other processes (notifications
   * on): over a Kysely instance, a notification sent after it (see
   * {@link WakeSender}: shared with the writes that commit while one is on its
   * way); over a host's transaction, a notification in that transaction, to
   * be delivered when the host commits. Resolves once it is sent, so a write
   * that waits for it leaves nothing running behind it; a failed send is
   * reported to `notifications.onError`, not to the write, which has
   * committed.
   */
  private async wakeOthers(): Promise<void> {
    if (this.notifyChannel === undefined) return;
    if (this.wakeSender) return this.wakeSender.wake();
    await this.notify();
  }

  /** One `pg_notify` on the store's channel, in a statement of its own. */
  private async notify(): Promise<void> {
    await this.db.executeQuery(CompiledQuery.raw(`${STATEMENT_MARKER} select pg_notify($1::text, '')`, [this.notifyChannel]));
  }

  /** Whether `tx`'s writes are to be followed by a notification: notifications are on and they leave work for others. */
  private wakesOthers(tx: KyselyTransaction): boolean {
    return this.notifyChannel !== undefined && tx.wakes();
  }

  /** Runs `settle` for each call in `waking` once the notification its writes asked for is sent (see {@link wakeOthers}). */
  private async settleAfterWake(waking: (() => void)[]): Promise<void> {
    if (waking.length === 0) return;
    await this.wakeOthers();
    for (const settle of waking) settle();
  }

  /** {@link wakeOthers} once `trx`, a transaction of {@link inTransaction}, has committed. */
  private async wakeOthersOnCommit(trx: Db): Promise<void> {
    if (this.notifyChannel === undefined) return;
    if (this.db.isTransaction) return this.wakeOthers();
    this.wakeOnCommit.add(trx);
  }

  // --- history -----------------------------------------------------------------

  /** A multi-row history insert. */
  private historyInsertSql(rows: HistoryRow[], defaultAt: RawBuilder<unknown>): RawBuilder<unknown> {
    const values = rows.map(
      ({ workflowId, seq, entry }) =>
        sql`(${sql.join([this.param('text', workflowId), this.param('int', seq), ...this.historyCells(entry, defaultAt)])})`,
    );
    return sql`insert into ${this.ref('history')} (${HISTORY_COLUMN_LIST}) values ${sql.join(values)}`;
  }

  /** The cells of one history row after `(workflow_id, seq)`, in {@link HISTORY_COLUMNS} order. */
  private historyCells(h: NewHistoryEntry, defaultAt: RawBuilder<unknown>): RawBuilder<unknown>[] {
    return [
      h.at ? this.param('time', this.timeParam(h.at)) : defaultAt,
      this.param('text', h.kind),
      this.param('text', h.stepName),
      this.param('text', h.from),
      this.param('text', h.to),
      this.param('text', h.actor),
      this.param('text', h.reason),
      this.param('text', h.action),
      this.param('json', jsonText(h.detail)),
    ];
  }

  // --- plumbing ------------------------------------------------------------------

  /**
   * Runs `body` in a transaction: the store's own, or the host's when the store
   * was given a `Transaction` (which should then be read committed on Postgres).
   * SQLite transactions begin IMMEDIATE, so the write lock is taken (waiting
   * through busy_timeout) before anything is read.
   */
  private async inTransaction<T>(body: (trx: Db) => Promise<T>): Promise<T> {
    if (this.db.isTransaction) return body(this.db);
    // Read committed whatever the server default: each statement must see what
    // committed before it (the steps read after the workflow lock is granted).
    if (this.pg) {
      let transaction: Db | undefined;
      const result = await this.db
        .transaction()
        .setIsolationLevel('read committed')
        .execute((trx) => {
          transaction = trx;
          return body(trx);
        });
      // Committed: the notification its writes asked for (see wakeOthersOnCommit), before the caller hears of the commit.
      if (transaction && this.wakeOnCommit.delete(transaction)) await this.wakeSender?.wake();
      return result;
    }
    return this.db.connection().execute(async (conn) => {
      await sql`begin immediate`.execute(conn);
      let result: T;
      try {
        result = await body(conn);
      } catch (err) {
        await sql`rollback`.execute(conn).catch(() => undefined);
        throw err;
      }
      await sql`commit`.execute(conn);
      return result;
    });
  }

  /** Checks the database on first use, and turns driver errors into {@link StoreError}s. */
  private async guard<T>(operation: string, body: () => Promise<T>): Promise<T> {
    try {
      if (!this.checked) {
        const check = this.runChecks();
        this.checked = check;
        check.catch(() => {
          if (this.checked === check) this.checked = undefined;
        });
      }
      await this.checked;
      return await body();
    } catch (err) {
      if (err instanceof CallbackError) throw err.error;
      if (err instanceof SagalineError || err instanceof TypeError) throw err;
      const message = err instanceof Error ? err.message : String(err);
      throw new StoreError(`${operation} failed: ${message}`, { cause: err });
    }
  }

  /**
   * Runs a statement and returns its rows. On Postgres the text starts with
   * {@link STATEMENT_MARKER}, so a pool wrapped with `preparedStatements`
   * runs it as a prepared statement.
   */
  private async rows(db: Db, query: RawBuilder<unknown>): Promise<Row[]> {
    const marked = this.pg ? sql`${sql.raw(STATEMENT_MARKER)} ${query}` : query;
    return (await marked.execute(db)).rows as Row[];
  }

  private async getWorkflowRow(db: Db, id: string): Promise<Row | null> {
    const rows = await this.rows(db, sql`select * from ${this.ref('workflows')} where id = ${id}`);
    return rows[0] ?? null;
  }

  private async getStepRows(db: Db, workflowId: string): Promise<Row[]> {
    return this.rows(db, sql`select * from ${this.ref('steps')} where workflow_id = ${workflowId} order by position`);
  }

  /** A table's name as SQL text (quoted, schema-qualified where the store has a schema), for statements built as text. */
  private tableSql(table: 'workflows' | 'steps' | 'history'): string {
    return sql`${this.ref(table)}`.compile(this.db).sql;
  }

  private ref(table: 'workflows' | 'steps' | 'history'): RawBuilder<unknown> {
    return this.tables.ref(this.tables[table]);
  }

  /**
   * A value as a parameter, cast on Postgres so that its type never depends
   * on inference; there a cell's `Date` goes as text ({@link cellParameter}),
   * as the compare-and-set writes send it.
   */
  private param(kind: ColumnKind, value: unknown): RawBuilder<unknown> {
    if (!this.pg) return sql`${value}`;
    return sql`${cellParameter(value)}::${PG_CASTS[kind]}`;
  }

  /** The store's time in SQL: the injected clock as a parameter, the statement's time on Postgres, else the JS clock. */
  private nowSql(offsetMs: number | undefined): RawBuilder<unknown> {
    const offset = offsetMs ?? 0;
    if (this.clock) return this.param('time', this.timeParam(new Date(this.clock.now() + offset)));
    if (!this.pg) return sql`${Date.now() + offset}`;
    return offset === 0 ? sql`statement_timestamp()` : sql`(statement_timestamp() + ${offset}::double precision * interval '1 millisecond')`;
  }

  private leaseExpirySql(leaseMs: number): RawBuilder<unknown> {
    if (!(leaseMs >= 0)) throw new TypeError('leaseMs must be a non-negative number');
    return this.nowSql(leaseMs);
  }

  /**
   * A time as a statement parameter. SQLite: epoch milliseconds. Postgres: ISO
   * text (see {@link timeParameter}). Not for a transaction's cells, which
   * {@link encode} makes and {@link decodeCell} reads back.
   */
  private timeParam(date: Date): unknown {
    return this.pg ? timeParameter(date) : date.getTime();
  }

  /**
   * A value as a transaction's cell, which becomes a parameter and is decoded
   * back into the remembered state ({@link decodeCell}). Times stay `Date`s
   * on Postgres (the compare-and-set write makes them parameters).
   */
  private encode(kind: ColumnKind, value: unknown): unknown {
    if (value === null || value === undefined) return null;
    switch (kind) {
      case 'time':
        return this.pg ? (value as Date) : (value as Date).getTime();
      case 'json':
        return jsonText(value);
      default:
        return value;
    }
  }

  private decodeJson(value: unknown): unknown {
    if (value === null || value === undefined) return null;
    // pg parses json/jsonb itself; SQLite returns the JSON text.
    return !this.pg && typeof value === 'string' ? (JSON.parse(value) as unknown) : value;
  }

  private toWorkflow(r: Row): WorkflowRecord {
    return {
      id: String(r['id']),
      tenantId: String(r['tenant_id']),
      type: String(r['type']),
      serviceSlug: (r['service_slug'] as string | null) ?? null,
      status: r['status'] as WorkflowStatus,
      definitionVersion: String(r['definition_version']),
      input: this.decodeJson(r['input']),
      output: this.decodeJson(r['output']),
      error: this.decodeJson(r['error']) as StoredError | null,
      idempotencyKey: (r['idempotency_key'] as string | null) ?? null,
      currentStep: (r['current_step'] as string | null) ?? null,
      retryCount: Number(r['retry_count'] ?? 0),
      createdAt: toDate(r['created_at'])!,
      updatedAt: toDate(r['updated_at'])!,
      completedAt: toDate(r['completed_at']),
    };
  }

  private toStep(r: Row): StepRecord {
    return {
      workflowId: String(r['workflow_id']),
      name: String(r['name']),
      position: Number(r['position']),
      dependsOn: (this.decodeJson(r['depends_on']) as string[] | null) ?? [],
      status: r['status'] as StepStatus,
      attempts: Number(r['attempts']),
      retryCount: Number(r['retry_count']),
      maxAttempts: Number(r['max_attempts']),
      startedAt: toDate(r['started_at']),
      completedAt: toDate(r['completed_at']),
      dueAt: toDate(r['due_at']),
      leaseOwner: (r['lease_owner'] as string | null) ?? null,
      leaseToken: (r['lease_token'] as string | null) ?? null,
      leaseExpiresAt: toDate(r['lease_expires_at']),
      callbackTokenHash: (r['callback_token_hash'] as string | null) ?? null,
      callbackResult: this.decodeJson(r['callback_result']),
      pollCount: Number(r['poll_count']),
      pollDeadlineAt: toDate(r['poll_deadline_at']),
      output: this.decodeJson(r['output']),
      error: this.decodeJson(r['error']) as StoredError | null,
      completionSeq: r['completion_seq'] === null || r['completion_seq'] === undefined ? null : Number(r['completion_seq']),
    };
  }

  private toHistory(r: Row): HistoryRecord {
    return {
      seq: Number(r['seq']),
      workflowId: String(r['workflow_id']),
      at: toDate(r['at'])!,
      kind: r['kind'] as HistoryRecord['kind'],
      stepName: (r['step_name'] as string | null) ?? null,
      from: (r['from_status'] as string | null) ?? null,
      to: (r['to_status'] as string | null) ?? null,
      actor: (r['actor'] as string | null) ?? null,
      reason: (r['reason'] as string | null) ?? null,
      action: (r['action'] as string | null) ?? null,
      detail: this.decodeJson(r['detail']),
    };
  }
}

/** A step insert's columns after `workflow_id`, with the kinds of their values (see `stepValues`). */
const STEP_INSERT_COLUMNS: readonly (readonly [column: string, kind: ColumnKind])[] = [
  ['name', 'text'],
  ['position', 'int'],
  ['depends_on', 'json'],
  ['status', 'text'],
  ['max_attempts', 'int'],
  ['due_at', 'time'],
  ['attempts', 'int'],
  ['started_at', 'time'],
  ['lease_owner', 'text'],
  ['lease_token', 'text'],
  ['lease_expires_at', 'time'],
  ['callback_token_hash', 'text'],
];
/** The columns of a step insert, the workflow id first. */
const STEP_INSERT_COLUMN_LIST = ['workflow_id', ...STEP_INSERT_COLUMNS.map(([column]) => column)];
const HISTORY_COLUMN_LIST = sql.raw(HISTORY_COLUMNS.join(', '));

/**
 * The transaction handed to `fn`: the snapshot read under the lock, and a
 * buffer of writes. Fences are checked against the snapshot as the writes
 * would apply (the lock keeps the rows from changing), and again by the UPDATE.
 */
class KyselyTransaction implements WorkflowTransaction {
  readonly workflowCells = new Map<string, Cell>();
  readonly stepWrites = new Map<string, StepWrite>();
  readonly history: NewHistoryEntry[] = [];
  hasWrites = false;
  private closed = false;
  private stale: StaleLeaseError | undefined;
  /**
   * What the writes read of each step as the snapshot had it, taken before the
   * callback runs: the records are the callback's to change (see `WorkflowTransaction`).
   */
  private readonly stepsBefore: Map<string, Pick<StepRecord, SnapshotStepField>>;
  readonly workflowId: string;
  /** The workflow's status in the snapshot. */
  private readonly statusBefore: WorkflowStatus;
  /** The workflow fields written, decoded as a read would return them. */
  private readonly workflowAfter: Record<string, unknown> = {};
  /**
   * The step fields written, per step, decoded as a read would return them;
   * with `stepsBefore`, what the writes leave of each step's lease and claimability.
   */
  private readonly stepsAfter = new Map<string, Partial<StepRecord>>();

  constructor(
    readonly now: Date,
    readonly workflow: WorkflowRecord,
    /** The workflow's `last_history_seq` read under the lock. */
    readonly historySeq: number,
    readonly steps: readonly StepRecord[],
    private readonly encode: (kind: ColumnKind, value: unknown) => unknown,
  ) {
    this.stepsBefore = new Map(
      steps.map((s) => [s.name, { status: s.status, attempts: s.attempts, dueAt: s.dueAt, leaseToken: s.leaseToken, leaseExpiresAt: s.leaseExpiresAt }]),
    );
    this.workflowId = workflow.id;
    this.statusBefore = workflow.status;
  }

  updateWorkflow(patch: WorkflowPatch): void {
    this.assertOpen();
    if (patch.status !== undefined && !isWorkflowStatus(patch.status)) throw new TypeError(`unknown workflow status ${String(patch.status)}`);
    const cells = toCells(patch, WORKFLOW_COLUMNS, this.encode);
    for (const [column, cell, field] of cells) {
      this.workflowCells.set(column, cell);
      this.workflowAfter[field] = decodeCell(cell);
    }
    this.hasWrites = true;
  }

  updateStep(name: string, patch: StepPatch, options?: { expectLeaseToken?: string | null }): void {
    this.assertOpen();
    const step = this.stepsBefore.get(name);
    if (!step) {
      throw new NotFoundError(`step ${name} not found in workflow ${this.workflowId}`, { workflowId: this.workflowId, stepName: name });
    }
    if (patch.status !== undefined && !isStepStatus(patch.status)) throw new TypeError(`unknown step status ${String(patch.status)}`);
    const cells = toCells(patch, STEP_COLUMNS, this.encode);
    let write = this.stepWrites.get(name);
    if (!write) this.stepWrites.set(name, (write = { cells: new Map(), fence: null }));
    const expected = options?.expectLeaseToken;
    if (expected !== undefined) {
      const current = this.stepAfter(name, 'leaseToken');
      if (current !== expected && !this.stale) {
        this.stale = new StaleLeaseError(
          `step ${name} of workflow ${this.workflowId}: lease token ${String(current)} is not the expected ${String(expected)}`,
          { workflowId: this.workflowId, stepName: name, status: step.status, attempts: step.attempts },
        );
      }
      write.fence ??= { expected: step.leaseToken };
    }
    let after = this.stepsAfter.get(name);
    if (!after) this.stepsAfter.set(name, (after = {}));
    for (const [column, cell, field] of cells) {
      write.cells.set(column, cell);
      (after as Record<string, unknown>)[field] = decodeCell(cell);
    }
    this.hasWrites = true;
  }

  /**
   * Whether the writes leave work for any worker: a written step claimable at
   * `now` (due, in a claimable status, its lease free) of an active workflow,
   * or a workflow made active again. A step made due and leased in the same
   * transaction (a chained claim) is nobody else's work.
   */
  wakes(): boolean {
    const status = (this.workflowAfter['status'] as WorkflowStatus | undefined) ?? this.statusBefore;
    if (!ACTIVE_WORKFLOW_STATUSES.has(status)) return false;
    if (!ACTIVE_WORKFLOW_STATUSES.has(this.statusBefore)) return true;
    const now = this.now.getTime();
    for (const name of this.stepsAfter.keys()) {
      const dueAt = this.stepAfter(name, 'dueAt');
      const leaseExpiresAt = this.stepAfter(name, 'leaseExpiresAt');
      if (dueAt === null || dueAt.getTime() > now || !CLAIMABLE_STEP_STATUSES.has(this.stepAfter(name, 'status'))) continue;
      if (leaseExpiresAt !== null && leaseExpiresAt.getTime() > now) continue;
      return true;
    }
    return false;
  }

  /** Field `field` of step `name` (a step of the snapshot) as the writes leave it: the value written, else the snapshot's. */
  private stepAfter<K extends SnapshotStepField>(name: string, field: K): StepRecord[K] {
    const written = this.stepsAfter.get(name)?.[field];
    return written !== undefined ? (written as StepRecord[K]) : (this.stepsBefore.get(name)![field] as StepRecord[K]);
  }

  appendHistory(entries: NewHistoryEntry[]): void {
    this.assertOpen();
    const normalized = entries.map((e) => normalizeHistory(e, keepDetail));
    this.history.push(...normalized);
    this.hasWrites = true;
  }

  /**
   * The workflow and steps as the buffered writes leave `base` (the snapshot
   * this transaction's records were copied from, which the callback never
   * saw), with `updatedAt` at this transaction's time and the written values
   * decoded afresh, as a read after the commit would return them.
   */
  afterImage(base: Pick<Snapshot, 'workflow' | 'steps'>): Omit<Snapshot, 'version'> {
    const workflow = { ...base.workflow, ...this.workflowAfter, updatedAt: this.now } as WorkflowRecord;
    const steps = base.steps.map((s) => {
      const after = this.stepsAfter.get(s.name);
      return after ? ({ ...s, ...after } as StepRecord) : s;
    });
    return { workflow, historySeq: this.historySeq + this.history.length, steps };
  }

  /** The first fence that failed, if any. */
  staleError(): StaleLeaseError | undefined {
    return this.stale;
  }

  close(): void {
    this.closed = true;
  }

  private assertOpen(): void {
    if (this.closed) {
      throw new StoreError(`the transaction on workflow ${this.workflowId} has already ended; writes must happen inside the callback`);
    }
  }
}

/** The step fields a transaction keeps from its snapshot, for its fences and `wakes()`. */
type SnapshotStepField = 'status' | 'attempts' | 'dueAt' | 'leaseToken' | 'leaseExpiresAt';

/** A patch's columns with their encoded values, and the record field each came from. */
function toCells(
  patch: object,
  columns: Record<string, readonly [string, ColumnKind]>,
  encode: (kind: ColumnKind, value: unknown) => unknown,
): [column: string, cell: Cell, field: string][] {
  const cells: [string, Cell, string][] = [];
  // Keys, not entries: no pair array per field (this runs for every write).
  for (const key of Object.keys(patch)) {
    const value = (patch as Record<string, unknown>)[key];
    // `undefined` leaves the column as it is, as in a partial SQL update.
    if (value === undefined) continue;
    const column = columns[key];
    if (!column) throw new TypeError(`${key} cannot be updated`);
    const [name, kind] = column;
    if (kind === 'time') checkedDate(value, key);
    cells.push([name, { kind, value: encode(kind, value) }, key]);
  }
  return cells;
}

/** An encoded cell back as a record field: what reading the column returns (JSON parsed afresh, a new Date). */
function decodeCell(cell: Cell): unknown {
  const value = cell.value;
  if (value === null || value === undefined) return null;
  if (cell.kind === 'json') return JSON.parse(value as string) as unknown;
  if (cell.kind === 'time') return value instanceof Date ? new Date(value.getTime()) : new Date(Number(value));
  return value;
}

function addToGroup<R>(groups: Map<string, { columns: string[]; rows: R[] }>, columns: string[], row: R): void {
  const key = columns.join(',');
  let group = groups.get(key);
  if (!group) groups.set(key, (group = { columns, rows: [] }));
  group.rows.push(row);
}

function chunk<T>(items: T[], size: number): T[][] {
  const out: T[][] = [];
  const n = Math.max(1, size);
  for (let i = 0; i < items.length; i += n) out.push(items.slice(i, i + n));
  return out;
}

/** A fenced step write that found another lease token under the lock: the whole batch is rolled back. */
function batchStale(piece: WritePiece): StaleLeaseError {
  const [workflowId, stepName] = piece.firstStep ?? ['', ''];
  return staleLease(workflowId, stepName);
}

/**
 * An error the server sent for a statement (a `pg` error with a SQLSTATE and
 * a severity): the statement failed and wrote nothing. Anything else (a lost
 * connection) leaves unknown whether it committed.
 */
function isServerError(err: unknown): boolean {
  const e = err as { code?: unknown; severity?: unknown } | null;
  return typeof e?.code === 'string' && /^[0-9A-Z]{5}$/.test(e.code) && typeof e.severity === 'string';
}

function staleLease(workflowId: string, stepName: string): StaleLeaseError {
  return new StaleLeaseError(`step ${stepName} of workflow ${workflowId}: the lease changed before the write was applied`, {
    workflowId,
    stepName,
  });
}





/** A timestamp as returned by the driver (Date, epoch ms, or ISO text from JSON) as a Date. */
function toDate(value: unknown): Date | null {
  if (value === null || value === undefined) return null;
  if (value instanceof Date) return value;
  if (typeof value === 'number' || typeof value === 'bigint') return new Date(Number(value));
  const text = String(value);
  return new Date(/^-?\d+$/.test(text) ? Number(text) : text);
}

function parseJsonRows(value: unknown): Row[] {
  if (value === null || value === undefined) return [];
  return (typeof value === 'string' ? JSON.parse(value) : value) as Row[];
}

/** History details are kept as given (encoded to JSON text when written). */
function keepDetail(value: unknown): unknown {
  return value ?? null;
}
