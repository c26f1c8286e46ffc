import { sql } from 'kysely';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CasWriter, type CasItem, type CasTransaction } from '../../src/stores/kysely/kysely-cas-write.js';
import { migrateToLatest } from '../../src/stores/kysely/kysely-migrations.js';
import { createPostgresDatabase, type PostgresTestDatabase } from '../support/databases.js';

/**
 * The compare-and-set statement of a group-commit batch, planned as a prepared
 * statement's generic plan would be while the tables are still small (a few
 * hundred workflows): whatever joins the plan takes, it reads each table at
 * most once, not once per workflow of the batch.
 */
const WORKFLOWS = 400;
const STEPS = ['a', 'b'];
const BATCH = 32;

let database: PostgresTestDatabase;
let client: pg.Client;

beforeAll(async () => {
  database = await createPostgresDatabase();
  await migrateToLatest(database.db);
  await sql`
    insert into sagaline_workflows (id, tenant_id, type, status, definition_version, created_at, updated_at)
    select 'wf_' || i, 't', 'x', 'running', '1', now(), now() from generate_series(1, ${sql.lit(WORKFLOWS)}) as i`.execute(database.db);
  await sql`
    insert into sagaline_steps (workflow_id, name, position, depends_on, status, max_attempts, lease_token)
    select 'wf_' || i, s.name, s.position, '[]'::jsonb, 'running', 3, 'lease-' || i || '-' || s.name
    from generate_series(1, ${sql.lit(WORKFLOWS)}) as i,
      (values ${sql.join(STEPS.map((name, position) => sql`(${sql.lit(name)}, ${sql.lit(position)})`))}) as s(name, position)`.execute(
    database.db,
  );
  client = new pg.Client({ connectionString: database.url });
  await client.connect();
});

afterAll(async () => {
  await client?.end();
  await database?.cleanup();
});

const writer = new CasWriter({
  workflows: '"sagaline_workflows"',
  steps: '"sagaline_steps"',
  history: '"sagaline_history"',
  workflowColumns: [['current_step', 'text']],
  stepColumns: [['status', 'text']],
  channel: undefined,
  prefix: '/* sagaline */',
});

/** A batch item for workflow `n`: completes step `a` fenced by its lease (`expected`) and writes one history entry. */
function item(n: number, version: string, expected: string): CasItem {
  const tx: CasTransaction = {
    now: new Date(),
    workflowId: `wf_${n}`,
    historySeq: 0,
    workflowCells: new Map([['current_step', { value: 'b' }]]),
    stepWrites: new Map([['a', { cells: new Map([['status', { value: 'completed' }]]), fence: { expected } }]]),
    history: [{ kind: 'step', stepName: 'a', from: 'running', to: 'completed', actor: null, reason: null, action: null, detail: null }],
  };
  return { tx, version, wakes: false };
}

/** Sequential scans and the tuples they read, by table, as this session's statistics count them so far. */
async function scans(): Promise<Map<string, { scans: number; tuples: number }>> {
  const { rows } = await client.query<{ relname: string; seq_scan: string; seq_tup_read: string }>(
    `select relname, seq_scan, seq_tup_read from pg_stat_xact_user_tables where relname in ('sagaline_workflows', 'sagaline_steps')`,
  );
  return new Map(rows.map((r) => [r.relname, { scans: Number(r.seq_scan), tuples: Number(r.seq_tup_read) }]));
}

/**
 * Runs the batch's statement with a generic plan, in a transaction that is
 * rolled back; returns what it wrote and the sequential scans it made, by
 * table (the session's counters can include earlier statements, so the
 * difference is taken).
 */
async function runBatch(items: CasItem[]): Promise<{ written: string[]; seqScans: Record<string, number>; tuplesRead: Record<string, number> }> {
  const statement = writer.statement(items);
  await client.query('begin');
  try {
    await client.query('set local plan_cache_mode = force_generic_plan');
    const before = await scans();
    const result = await client.query<{ id: string }>({ name: `cas_${items.length}`, text: statement.sql, values: statement.parameters });
    const after = await scans();
    const seqScans: Record<string, number> = {};
    const tuplesRead: Record<string, number> = {};
    for (const [table, { scans: n, tuples }] of after) {
      seqScans[table] = n - (before.get(table)?.scans ?? 0);
      tuplesRead[table] = tuples - (before.get(table)?.tuples ?? 0);
    }
    return { written: result.rows.map((r) => r.id).sort(), seqScans, tuplesRead };
  } finally {
    await client.query('rollback');
  }
}

async function versions(ids: number[]): Promise<Map<number, string>> {
  const { rows } = await client.query<{ id: string; version: string }>(`select id, xmin::text as version from sagaline_workflows where id = any($1)`, [
    ids.map((n) => `wf_${n}`),
  ]);
  return new Map(rows.map((r) => [Number(r.id.slice(3)), r.version]));
}

describe('CasWriter on Postgres', () => {
  it('checks a batch’s fences reading each table at most once, and writes only the workflows whose fences hold', async () => {
    const ids = Array.from({ length: BATCH }, (_, i) => i + 1);
    const version = await versions(ids);
    // Every fourth workflow's fence expects a lease its step no longer holds.
    const lost = new Set(ids.filter((n) => n % 4 === 0));
    const items = ids.map((n) => item(n, version.get(n)!, lost.has(n) ? 'someone-else' : `lease-${n}-a`));
    const { written, seqScans, tuplesRead } = await runBatch(items);
    expect(written).toEqual(ids.filter((n) => !lost.has(n)).map((n) => `wf_${n}`).sort());
    // A full scan of a table, if the plan takes one, happens once for the batch.
    expect(seqScans['sagaline_steps'] ?? 0).toBeLessThanOrEqual(1);
    expect(tuplesRead['sagaline_steps'] ?? 0).toBeLessThanOrEqual(WORKFLOWS * STEPS.length);
    expect(seqScans['sagaline_workflows'] ?? 0).toBeLessThanOrEqual(1);
    expect(tuplesRead['sagaline_workflows'] ?? 0).toBeLessThanOrEqual(WORKFLOWS);
  });
});
