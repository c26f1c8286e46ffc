/**
 * The array literals the Postgres store sends for a group-commit batch's
 * creates (one array per column, unnested into rows): whatever the values,
 * Postgres reads back exactly the array that was meant.
 */
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { arrayLiteral } from '../../src/stores/kysely/pg-create-write.js';
import { createPostgresDatabase, type PostgresTestDatabase } from '../support/databases.js';

let database: PostgresTestDatabase;
let client: pg.Client;

beforeAll(async () => {
  database = await createPostgresDatabase();
  client = new pg.Client({ connectionString: database.url });
  await client.connect();
});

afterAll(async () => {
  await client?.end();
  await database?.cleanup();
});

/** The array Postgres reads from the literal of `values`, cast to `type[]`, as `pg` returns it. */
async function roundTrip(values: unknown[], type: string): Promise<unknown> {
  const { rows } = await client.query<{ a: unknown }>(`select $1::${type}[] as a`, [arrayLiteral(values)]);
  return rows[0]!.a;
}

describe('arrayLiteral', () => {
  it('keeps text as it is: quotes, backslashes, braces, commas, spaces, NULL as a word, empty and non-ASCII', async () => {
    const values = ['plain', 'with "quotes"', 'back\\slash', 'both \\"', '{braces}', 'a,b', '  spaced  ', 'NULL', 'null', '', 'é ☃ 𝄞', 'line\nbreak', '\\'];
    expect(await roundTrip(values, 'text')).toEqual(values);
    // Each value alone, so that the fast path (a column that needs no escaping) is taken where it can be.
    for (const value of values) expect(await roundTrip([value], 'text')).toEqual([value]);
  });

  it('writes null and undefined as NULL, and an empty array as {}', async () => {
    expect(await roundTrip(['a', null, 'b', undefined], 'text')).toEqual(['a', null, 'b', null]);
    expect(await roundTrip([null], 'text')).toEqual([null]);
    expect(await roundTrip([], 'text')).toEqual([]);
    expect(arrayLiteral([])).toBe('{}');
  });

  it('writes numbers, dates, JSON text and objects as the column types read them', async () => {
    expect(await roundTrip([0, -3, 2_147_483_647, null], 'integer')).toEqual([0, -3, 2_147_483_647, null]);
    const at = new Date(Date.UTC(2026, 0, 2, 3, 4, 5, 678));
    expect(await roundTrip([at, at.toISOString(), null], 'timestamptz')).toEqual([at, at, null]);
    const json = { quote: 'say "hi"', slash: 'a\\b', nested: [1, { x: null }] };
    expect(await roundTrip([JSON.stringify(json), null, '"text"'], 'jsonb')).toEqual([json, null, 'text']);
    expect(await roundTrip([json], 'jsonb')).toEqual([json]);
    expect(await roundTrip([true, false], 'boolean')).toEqual([true, false]);
  });
});
