import { Kysely, PostgresDialect, sql } from 'kysely';
import pg from 'pg';
import { afterEach, describe, expect, it } from 'vitest';
import { preparedStatements, STATEMENT_MARKER } from '../../src/stores/kysely/pg-prepared-statements.js';
import { createPostgresDatabase } from '../support/databases.js';

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  while (cleanups.length > 0) await cleanups.pop()!();
});

/** A Kysely instance on one connection through the wrapper, and what that connection has prepared. */
async function oneConnection(options?: Parameters<typeof preparedStatements>[1]) {
  const database = await createPostgresDatabase();
  cleanups.push(() => database.cleanup());
  const pool = new pg.Pool({ connectionString: database.url, max: 1 });
  const db = new Kysely<any>({ dialect: new PostgresDialect({ pool: preparedStatements(pool, options) }) });
  cleanups.push(() => db.destroy());
  const prepared = async () =>
    (await sql<{ statement: string }>`select statement from pg_prepared_statements order by prepare_time`.execute(db)).rows.map((r) => r.statement);
  return { db, prepared };
}

/** Runs `text` with `parameters` as Kysely runs a compiled query. */
function run<R>(db: Kysely<any>, text: string, parameters: unknown[]) {
  return db.executeQuery<R>({
    sql: text,
    parameters,
    query: { kind: 'RawNode', sqlFragments: [], parameters: [] } as never,
    queryId: { queryId: text },
  });
}

describe('preparedStatements', () => {
  it('prepares marked statements once per connection and leaves other queries unnamed', async () => {
    const { db, prepared } = await oneConnection();
    const text = `${STATEMENT_MARKER} select $1::int * 2 as n`;
    for (const n of [1, 2, 21]) expect((await run<{ n: number }>(db, text, [n])).rows).toEqual([{ n: n * 2 }]);
    expect((await run<{ n: number }>(db, 'select $1::int as unmarked', [5])).rows).toEqual([{ unmarked: 5 }]);
    expect(await prepared()).toEqual([text]);
  });

  it('runs statements unnamed past maxPerConnection, with the same results', async () => {
    const { db, prepared } = await oneConnection({ maxPerConnection: 2 });
    for (let round = 0; round < 2; round++) {
      for (let k = 0; k < 4; k++) expect((await run(db, `${STATEMENT_MARKER} select $1::int + ${k} as n`, [1])).rows).toEqual([{ n: 1 + k }]);
    }
    expect((await prepared()).length).toBe(2);
  });

  it('prepares a statement again when a migration changed the columns it returns', async () => {
    const { db, prepared } = await oneConnection();
    await sql`create table t (id int primary key)`.execute(db);
    await sql`insert into t values (1)`.execute(db);
    const text = `${STATEMENT_MARKER} select * from t where id = $1`;
    expect((await run(db, text, [1])).rows).toEqual([{ id: 1 }]);
    await sql`alter table t add column extra text default 'x'`.execute(db);
    // Postgres refuses the old prepared statement ("cached plan must not change result type"): prepared anew.
    expect((await run(db, text, [1])).rows).toEqual([{ id: 1, extra: 'x' }]);
    expect((await run(db, text, [1])).rows).toEqual([{ id: 1, extra: 'x' }]);
    expect((await prepared()).filter((s) => s === text)).toHaveLength(2);
  });

  it("hands Kysely one connection object per pooled client: the dialect's onCreateConnection runs once per connection, not per query", async () => {
    const database = await createPostgresDatabase();
    cleanups.push(() => database.cleanup());
    const pool = new pg.Pool({ connectionString: database.url, max: 2 });
    const created: number[] = [];
    const db = new Kysely<any>({
      dialect: new PostgresDialect({
        pool: preparedStatements(pool),
        onCreateConnection: async (connection) => {
          const { rows } = await connection.executeQuery<{ pid: number }>({
            sql: 'select pg_backend_pid() as pid',
            parameters: [],
            query: { kind: 'RawNode', sqlFragments: [], parameters: [] } as never,
            queryId: { queryId: 'pid' },
          });
          created.push(rows[0]!.pid);
        },
      }),
    });
    cleanups.push(() => db.destroy());
    const text = `${STATEMENT_MARKER} select $1::int as n`;
    // One after another, then two at a time: the pool opens at most its two connections.
    for (let n = 0; n < 10; n++) expect((await run<{ n: number }>(db, text, [n])).rows).toEqual([{ n }]);
    for (let n = 0; n < 10; n++) await Promise.all([run(db, text, [n]), sql`select pg_sleep(0.001)`.execute(db)]);
    expect(created.length).toBeGreaterThanOrEqual(1);
    expect(created.length).toBeLessThanOrEqual(2);
    expect(new Set(created).size).toBe(created.length);
  });

  it('refuses what is not a pool, and a bad limit', () => {
    expect(() => preparedStatements({} as never)).toThrow(/pg Pool/);
    expect(() => preparedStatements(new pg.Pool(), { maxPerConnection: -1 })).toThrow(/maxPerConnection/);
  });
});
