import { CompiledQuery, sql, type Kysely } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { StoreListQuery, WorkflowRecord } from '../../src/storage/workflow-store.js';
import { migrateToLatest } from '../../src/stores/kysely/kysely-migrations.js';
import { KyselyWorkflowStore } from '../../src/stores/kysely/kysely-workflow-store.js';
import { createPostgresDatabase, createSqliteDatabase, type TestDatabase } from '../support/databases.js';

const WORKFLOWS = 100_000;
const TENANTS = 100;
const STATUSES = ['pending', 'running', 'completed', 'failed', 'rolling_back', 'rolled_back', 'rollback_failed'];
/** Creation times: one second apart, two workflows per second (ties are broken by id). */
const BASE_MS = Date.UTC(2025, 0, 1);

interface Dialect {
  name: 'postgres' | 'sqlite';
  open(): Promise<TestDatabase>;
  // Numbers are inlined as literals: better-sqlite3 binds every JS number as a REAL.
  /** Inserts WORKFLOWS rows in one statement: row i has tenant i % TENANTS, status i % 7, created at BASE + floor(i / 2) s. */
  fill(db: Kysely<any>): Promise<void>;
  /** The plan of a compiled query, as text. */
  explain(db: Kysely<any>, query: CompiledQuery): Promise<string>;
  /** A plan line that means a full scan of the workflows table. */
  fullScan: RegExp;
}

const dialects: Dialect[] = [
  {
    name: 'postgres',
    open: () => createPostgresDatabase(),
    async fill(db) {
      const statuses = sql.raw(`array[${STATUSES.map((s) => `'${s}'`).join(', ')}]`);
      await sql`
        insert into sagaline_workflows
          (id, tenant_id, type, service_slug, status, definition_version, input, created_at, updated_at)
        select
          'wf_' || lpad(i::text, 8, '0'),
          'tenant-' || (i % ${sql.lit(TENANTS)}),
          case i % 3 when 0 then 'provision' when 1 then 'deprovision' else 'resize' end,
          'svc-' || (i % 10),
          (${statuses})[i % 7 + 1],
          'v1',
          '{}'::jsonb,
          to_timestamp(${sql.lit(BASE_MS / 1000)}) + (i / 2) * interval '1 second',
          to_timestamp(${sql.lit(BASE_MS / 1000)}) + (i / 2) * interval '1 second'
        from generate_series(0, ${sql.lit(WORKFLOWS - 1)}) as i`.execute(db);
      await sql`analyze sagaline_workflows`.execute(db);
    },
    async explain(db, query) {
      const result = await db.executeQuery<Record<string, string>>(CompiledQuery.raw(`explain ${query.sql}`, [...query.parameters]));
      return result.rows.map((r) => r['QUERY PLAN']).join('\n');
    },
    fullScan: /Seq Scan on (\S+\.)?sagaline_workflows/,
  },
  {
    name: 'sqlite',
    open: () => createSqliteDatabase(),
    async fill(db) {
      const statuses = sql.raw(STATUSES.map((s, i) => `when ${i} then '${s}'`).join(' '));
      await sql`
        with recursive n(i) as (select 0 union all select i + 1 from n where i < ${sql.lit(WORKFLOWS - 1)})
        insert into sagaline_workflows
          (id, tenant_id, type, service_slug, status, definition_version, input, created_at, updated_at)
        select
          'wf_' || substr('00000000' || i, -8, 8),
          'tenant-' || (i % ${sql.lit(TENANTS)}),
          case i % 3 when 0 then 'provision' when 1 then 'deprovision' else 'resize' end,
          'svc-' || (i % 10),
          case i % 7 ${statuses} end,
          'v1',
          '{}',
          ${sql.lit(BASE_MS)} + (i / 2) * 1000,
          ${sql.lit(BASE_MS)} + (i / 2) * 1000
        from n`.execute(db);
      await sql`analyze`.execute(db);
    },
    async explain(db, query) {
      const result = await db.executeQuery<{ detail: string }>(CompiledQuery.raw(`explain query plan ${query.sql}`, [...query.parameters]));
      return result.rows.map((r) => r.detail).join('\n');
    },
    // `SCAN t USING INDEX i` walks an index in order; a bare `SCAN t` reads the whole table.
    fullScan: /SCAN sagaline_workflows(?! USING)/,
  },
];

/** Row i's id and creation time, as `fill` made them. */
function idOf(i: number): string {
  return `wf_${String(i).padStart(8, '0')}`;
}

/** The expected ids of a query, newest first, computed from the generator's formulas. */
function expected(keep: (i: number) => boolean, limit: number): string[] {
  const out: string[] = [];
  for (let i = WORKFLOWS - 1; i >= 0 && out.length < limit; i--) if (keep(i)) out.push(idOf(i));
  return out;
}

describe.each(dialects)('list queries over $name with 100,000 workflows', (dialect) => {
  let database: TestDatabase;
  let store: KyselyWorkflowStore;

  beforeAll(async () => {
    database = await dialect.open();
    await migrateToLatest(database.db);
    await dialect.fill(database.db);
    store = new KyselyWorkflowStore({ db: database.db });
  });

  afterAll(async () => {
    await database?.cleanup();
  });

  async function pages(query: Omit<StoreListQuery, 'limit' | 'after'>, size: number, count: number): Promise<WorkflowRecord[][]> {
    const out: WorkflowRecord[][] = [];
    let after: StoreListQuery['after'];
    for (let p = 0; p < count; p++) {
      const page = await store.listWorkflows({ ...query, limit: size, ...(after ? { after } : {}) });
      out.push(page);
      const last = page[page.length - 1];
      if (!last) break;
      after = { createdAt: last.createdAt, id: last.id };
    }
    return out;
  }

  it('holds the generated workflows', async () => {
    const { rows } = await sql<{ n: number | string }>`select count(*) as n from sagaline_workflows`.execute(database.db);
    expect(Number(rows[0]?.n)).toBe(WORKFLOWS);
  });

  it('pages the unfiltered list newest first with the keyset cursor', async () => {
    const result = await pages({}, 50, 4);
    expect(result.map((p) => p.length)).toEqual([50, 50, 50, 50]);
    expect(result.flat().map((w) => w.id)).toEqual(expected(() => true, 200));
  });

  it('pages a tenant and status filter with the keyset cursor', async () => {
    const result = await pages({ tenantId: 'tenant-42', status: 'failed' }, 20, 3);
    // i % 100 == 42 and i % 7 == 3: one workflow in 700.
    const ids = result.flat().map((w) => w.id);
    expect(ids).toEqual(expected((i) => i % TENANTS === 42 && i % 7 === 3, 60));
    expect(result.flat().every((w) => w.tenantId === 'tenant-42' && w.status === 'failed')).toBe(true);
  });

  const plans: [string, StoreListQuery][] = [
    ['unfiltered, first page', { limit: 51 }],
    ['unfiltered, after a cursor', { limit: 51, after: { createdAt: new Date(BASE_MS + 25_000_000), id: idOf(50_001) } }],
    ['tenant and status, first page', { tenantId: 'tenant-42', status: 'failed', limit: 51 }],
    ['tenant and status, after a cursor', { tenantId: 'tenant-42', status: 'failed', limit: 51, after: { createdAt: new Date(BASE_MS + 25_000_000), id: idOf(50_001) } }],
    ['tenant', { tenantId: 'tenant-7', limit: 51 }],
    ['status', { status: 'running', limit: 51 }],
    ['type', { type: 'resize', limit: 51 }],
    ['service slug', { serviceSlug: 'svc-3', limit: 51 }],
    ['tenant and service slug', { tenantId: 'tenant-7', serviceSlug: 'svc-7', limit: 51 }],
    ['created range', { createdAfter: new Date(BASE_MS + 1_000_000), createdBefore: new Date(BASE_MS + 2_000_000), limit: 51 }],
  ];

  it.each(plans)('uses an index, never a full scan of the workflows table: %s', async (title, query) => {
    const plan = await dialect.explain(database.db, store.listWorkflowsQuery(query));
    if (process.env['SHOW_PLANS']) console.log(`${dialect.name} ${title}:\n${plan}`);
    expect(plan, plan).not.toMatch(dialect.fullScan);
    expect(plan, plan).toMatch(dialect.name === 'postgres' ? /Index (Only )?Scan/ : /USING (COVERING )?INDEX/);
  });
});
