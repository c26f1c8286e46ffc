import Database from 'better-sqlite3';
import { Kysely, sql, SqliteDialect } from 'kysely';
import { afterEach, describe, expect, it } from 'vitest';
import { cachedStatements } from '../../src/stores/kysely/sqlite-statement-cache.js';

const open: Kysely<any>[] = [];
afterEach(async () => {
  while (open.length > 0) await open.pop()!.destroy();
});

/** A Kysely instance on an in-memory database through the cache, counting real prepares. */
function counted(maxStatements?: number) {
  const raw = new Database(':memory:');
  const prepares: string[] = [];
  const original = raw.prepare.bind(raw);
  const spy = Object.assign(raw, {
    prepare: (text: string) => {
      prepares.push(text);
      return original(text);
    },
  });
  const db = new Kysely<any>({ dialect: new SqliteDialect({ database: cachedStatements(spy, maxStatements ? { maxStatements } : {}) }) });
  open.push(db);
  return { db, prepares };
}

describe('cachedStatements', () => {
  it('prepares a statement text once and reuses it, with fresh parameters each time', async () => {
    const { db, prepares } = counted();
    await sql`create table t (id integer primary key, v text)`.execute(db);
    for (let i = 0; i < 5; i++) await sql`insert into t (id, v) values (${i}, ${`v${i}`})`.execute(db);
    const rows = await sql<{ id: number; v: string }>`select id, v from t where id >= ${3} order by id`.execute(db);
    expect(rows.rows).toEqual([
      { id: 3, v: 'v3' },
      { id: 4, v: 'v4' },
    ]);
    expect(prepares.filter((p) => p.startsWith('insert'))).toHaveLength(1);
  });

  it('keeps at most maxStatements, dropping the least recently used', async () => {
    const { db, prepares } = counted(2);
    const q = (n: number) => sql.raw(`select ${n} as n`).execute(db);
    await q(1);
    await q(2);
    await q(1); // 1 is now the most recent
    await q(3); // drops 2
    await q(1);
    await q(2);
    expect(prepares).toEqual(['select 1 as n', 'select 2 as n', 'select 3 as n', 'select 2 as n']);
  });

  it('does not hand out a statement that is still being iterated', () => {
    const raw = new Database(':memory:');
    raw.exec('create table t (id integer primary key); insert into t (id) values (1), (2), (3)');
    const cache = cachedStatements(raw);
    const text = 'select id from t order by id';
    const first = cache.prepare(text);
    const rows = first.iterate();
    expect(rows.next().value).toEqual({ id: 1 });
    const second = cache.prepare(text);
    expect(second).not.toBe(first);
    rows.return?.();
    // Done iterating: the cached one is free again.
    expect(cache.prepare(text)).toBe(first);
    expect(first.all()).toEqual([{ id: 1 }, { id: 2 }, { id: 3 }]);
    cache.close();
  });

  it('refuses what is not a database, and a bad limit', () => {
    expect(() => cachedStatements({} as never)).toThrow(/better-sqlite3/);
    expect(() => cachedStatements(new Database(':memory:'), { maxStatements: 0 })).toThrow(/maxStatements/);
  });
});
