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
  return { tx, version };
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

describe('CasWriter on Postgres: one workflow', () => {
  const wide = new CasWriter({
    workflows: '"sagaline_workflows"',
    steps: '"sagaline_steps"',
    history: '"sagaline_history"',
    workflowColumns: [
      ['current_step', 'text'],
      ['retry_count', 'integer'],
    ],
    stepColumns: [
      ['status', 'text'],
      ['attempts', 'integer'],
      ['output', 'jsonb'],
    ],
    prefix: '/* sagaline */',
  });

  /** Workflow `n`'s write: step `a` completes (fenced by `expected`), `b` gets `bCells`, two history entries. */
  function single(n: number, version: string, expected: string | null, bCells: Record<string, unknown>): CasItem {
    const tx: CasTransaction = {
      now: new Date('2026-01-02T03:04:05.000Z'),
      workflowId: `wf_${n}`,
      historySeq: 10,
      workflowCells: new Map([['current_step', { value: 'b' }]]),
      stepWrites: new Map([
        ['a', { cells: new Map<string, { value: unknown }>([['status', { value: 'completed' }], ['output', { value: '{"ok":true}' }]]), fence: { expected } }],
        ['b', { cells: new Map(Object.entries(bCells).map(([k, v]) => [k, { value: v }])), fence: null }],
      ]),
      history: [
        { kind: 'step', stepName: 'a', from: 'running', to: 'completed', actor: null, reason: null, action: null, detail: null },
        { kind: 'note', stepName: 'b', from: null, to: null, actor: 'op', reason: 'why', action: 'a note', detail: { x: 1 }, at: new Date('2026-01-01T00:00:00.000Z') },
      ],
    };
    return { tx, version };
  }

  /** Runs `item` in a transaction that is rolled back; returns what it returned and the rows it left. */
  async function runSingle(item: CasItem) {
    const statement = wide.statement([item]);
    const id = item.tx.workflowId;
    await client.query('begin');
    try {
      const result = await client.query<{ id: string; version: string }>(statement.sql, statement.parameters);
      const workflow = (await client.query(`select current_step, retry_count, last_history_seq, updated_at from sagaline_workflows where id = $1`, [id])).rows[0];
      const steps = (await client.query(`select name, status, attempts, output, lease_token from sagaline_steps where workflow_id = $1 order by name`, [id])).rows;
      const history = (await client.query(`select seq, at, kind, step_name, actor, reason, action, detail from sagaline_history where workflow_id = $1 order by seq`, [id])).rows;
      return { returned: result.rows, workflow, steps, history, statement };
    } finally {
      await client.query('rollback');
    }
  }

  it('writes the columns each row sets, and only those, when the version and the fence hold', async () => {
    const version = (await versions([101])).get(101)!;
    const { returned, workflow, steps, history } = await runSingle(single(101, version, 'lease-101-a', { attempts: 7 }));
    expect(returned).toHaveLength(1);
    expect(returned[0]!.id).toBe('wf_101');
    expect(returned[0]!.version).not.toBe(version);
    expect(workflow).toMatchObject({ current_step: 'b', retry_count: 0, last_history_seq: 12 });
    expect((workflow!.updated_at as Date).toISOString()).toBe('2026-01-02T03:04:05.000Z');
    // `a` keeps its lease (not set by the write); `b` keeps its status and output.
    expect(steps).toEqual([
      { name: 'a', status: 'completed', attempts: 0, output: { ok: true }, lease_token: 'lease-101-a' },
      { name: 'b', status: 'running', attempts: 7, output: null, lease_token: 'lease-101-b' },
    ]);
    expect(history.map((h) => [h.seq, h.kind, h.step_name, h.actor, h.reason, h.action, h.detail, (h.at as Date).toISOString()])).toEqual([
      [11, 'step', 'a', null, null, null, null, '2026-01-02T03:04:05.000Z'],
      [12, 'note', 'b', 'op', 'why', 'a note', { x: 1 }, '2026-01-01T00:00:00.000Z'],
    ]);
  });

  it('sends no parameter for a null or for the transaction’s time, and writes them as if it did', async () => {
    const writer = new CasWriter({
      workflows: '"sagaline_workflows"',
      steps: '"sagaline_steps"',
      history: '"sagaline_history"',
      workflowColumns: [
        ['current_step', 'text'],
        ['completed_at', 'timestamptz'],
      ],
      stepColumns: [
        ['status', 'text'],
        ['lease_token', 'text'],
        ['started_at', 'timestamptz'],
        ['completed_at', 'timestamptz'],
        ['output', 'jsonb'],
      ],
          prefix: '/* sagaline */',
    });
    const now = new Date('2026-01-02T03:04:05.000Z');
    const earlier = new Date('2025-12-31T23:59:59.000Z');
    const version = (await versions([106])).get(106)!;
    const cells = (entries: [string, unknown][]) => new Map(entries.map(([k, v]) => [k, { value: v }]));
    const tx: CasTransaction = {
      now,
      workflowId: 'wf_106',
      historySeq: 4,
      workflowCells: cells([
        ['current_step', null],
        ['completed_at', now],
      ]),
      stepWrites: new Map([
        [
          'a',
          {
            cells: cells([
              ['status', 'completed'],
              ['lease_token', null],
              ['completed_at', now],
              ['started_at', earlier],
              ['output', '{"v":1}'],
            ]),
            fence: { expected: 'lease-106-a' },
          },
        ],
        ['b', { cells: cells([['output', null]]), fence: null }],
      ]),
      history: [
        { kind: 'step', stepName: 'a', from: 'running', to: 'completed', actor: null, reason: null, action: null, detail: null },
        { kind: 'note', stepName: null, from: null, to: null, actor: 'op', reason: null, action: 'a note', detail: null, at: now },
        { kind: 'note', stepName: 'b', from: null, to: null, actor: null, reason: 'why', action: null, detail: { x: 1 }, at: earlier },
      ],
    };
    const statement = writer.statement([{ tx, version }]);
    // The key, the version, the time (once), the sequence number; then only values that are neither null nor that time.
    expect(statement.parameters.slice(0, 4)).toEqual(['wf_106', version, '2026-01-02T03:04:05.000Z', 7]);
    const rest = statement.parameters.slice(4);
    expect(rest).not.toContain(null);
    expect(rest).not.toContain('2026-01-02T03:04:05.000Z');
    expect(rest).toContain('2025-12-31T23:59:59.000Z');

    await client.query('begin');
    try {
      await client.query(`update sagaline_steps set output = '{"old":true}' where workflow_id = 'wf_106' and name = 'b'`);
      await client.query(`update sagaline_workflows set current_step = 'a' where id = 'wf_106'`);
      const v = (await client.query<{ v: string }>(`select xmin::text as v from sagaline_workflows where id = 'wf_106'`)).rows[0]!.v;
      const written = writer.statement([{ tx, version: v }]);
      expect((await client.query(written.sql, written.parameters)).rows).toHaveLength(1);
      const workflow = (await client.query(`select current_step, completed_at, updated_at, last_history_seq from sagaline_workflows where id = 'wf_106'`)).rows[0];
      expect(workflow).toEqual({ current_step: null, completed_at: now, updated_at: now, last_history_seq: 7 });
      const steps = (await client.query(`select name, status, lease_token, started_at, completed_at, output from sagaline_steps where workflow_id = 'wf_106' order by name`)).rows;
      expect(steps).toEqual([
        { name: 'a', status: 'completed', lease_token: null, started_at: earlier, completed_at: now, output: { v: 1 } },
        { name: 'b', status: 'running', lease_token: 'lease-106-b', started_at: null, completed_at: null, output: null },
      ]);
      const history = (await client.query(`select seq, at, kind, step_name, from_status, to_status, actor, reason, action, detail from sagaline_history where workflow_id = 'wf_106' order by seq`)).rows;
      expect(history).toEqual([
        { seq: 5, at: now, kind: 'step', step_name: 'a', from_status: 'running', to_status: 'completed', actor: null, reason: null, action: null, detail: null },
        { seq: 6, at: now, kind: 'note', step_name: null, from_status: null, to_status: null, actor: 'op', reason: null, action: 'a note', detail: null },
        { seq: 7, at: earlier, kind: 'note', step_name: 'b', from_status: null, to_status: null, actor: null, reason: 'why', action: null, detail: { x: 1 } },
      ]);
    } finally {
      await client.query('rollback');
    }
  });

  it('writes nothing when the fence fails or the version is not the one read', async () => {
    const version = (await versions([102])).get(102)!;
    for (const item of [single(102, version, 'someone-else', { attempts: 7 }), single(102, String(Number(version) + 1), 'lease-102-a', { attempts: 7 })]) {
      const { returned, workflow, steps, history } = await runSingle(item);
      expect(returned).toEqual([]);
      expect(workflow).toMatchObject({ current_step: null, last_history_seq: 0 });
      expect(steps.map((s) => [s.name, s.status, s.attempts])).toEqual([
        ['a', 'running', 0],
        ['b', 'running', 0],
      ]);
      expect(history).toEqual([]);
    }
  });

  it('fences on "no lease" with a null expectation', async () => {
    await client.query('begin');
    try {
      await client.query(`update sagaline_steps set lease_token = null where workflow_id = 'wf_103' and name = 'a'`);
      const version = (await client.query<{ v: string }>(`select xmin::text as v from sagaline_workflows where id = 'wf_103'`)).rows[0]!.v;
      const held = wide.statement([single(103, version, null, {})]);
      expect((await client.query(held.sql, held.parameters)).rows).toHaveLength(1);
    } finally {
      await client.query('rollback');
    }
  });

  it('shares a text between writes that set the same columns, and never notifies: the store sends notifications after the commit', async () => {
    const version = (await versions([104])).get(104)!;
    const one = wide.statement([single(104, version, 'x', { attempts: 1 })]);
    const same = wide.statement([single(105, version, 'y', { attempts: 2 })]);
    const other = wide.statement([single(104, version, 'x', { status: 'pending' })]);
    expect(same.sql).toBe(one.sql);
    expect(other.sql).not.toBe(one.sql);
    const batch = wide.statement([single(104, version, 'x', { attempts: 1 }), single(105, version, 'y', { status: 'pending' })]);
    for (const statement of [one, other, batch]) expect(statement.sql).not.toContain('notify');

    // A notification sent in the write's transaction would make its commit wait for every other notifying commit.
    const listener = new pg.Client({ connectionString: database.url });
    await listener.connect();
    try {
      const heard: string[] = [];
      listener.on('notification', (m) => heard.push(m.channel));
      await listener.query('listen sagaline_wake');
      const waking = wide.statement([single(104, version, 'lease-104-a', { attempts: 1 })]);
      // Autocommit: it commits, and writes what it should.
      expect((await client.query(waking.sql, waking.parameters)).rows).toHaveLength(1);
      expect((await client.query(`select attempts from sagaline_steps where workflow_id = 'wf_104' and name = 'b'`)).rows).toEqual([{ attempts: 1 }]);
      // The server sends pending notifications before it answers a query on the listening session.
      await listener.query('select 1');
      expect(heard).toEqual([]);
    } finally {
      await listener.end();
    }
  });
});
