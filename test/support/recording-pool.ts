/**
 * A Kysely instance on a `pg` pool (with the store's `preparedStatements`)
 * whose connections report every statement they run: its text, its
 * parameters, and the driver's result once it arrives.
 */
import { Kysely, PostgresDialect } from 'kysely';
import pg from 'pg';
import { preparedStatements } from '../../src/kysely.js';

export interface RecordedStatement {
  text: string;
  values: unknown[] | undefined;
}

export function recordingKysely(
  url: string,
  onStatement: (statement: RecordedStatement, result: Promise<pg.QueryResult> | null) => void,
): Kysely<any> {
  const pool = new pg.Pool({ connectionString: url, max: 4 });
  pool.on('connect', (client) => {
    const query = client.query.bind(client) as (...args: unknown[]) => unknown;
    (client as unknown as { query: (...args: unknown[]) => unknown }).query = (...args: unknown[]) => {
      const [first, second] = args;
      const config = typeof first === 'object' && first !== null ? (first as { text?: string; values?: unknown[] }) : null;
      const text = config ? (config.text ?? '') : String(first);
      const values = config && 'values' in config ? config.values : Array.isArray(second) ? second : undefined;
      const result = query(...args);
      onStatement({ text, values }, result instanceof Promise ? (result as Promise<pg.QueryResult>) : null);
      return result;
    };
  });
  return new Kysely<any>({ dialect: new PostgresDialect({ pool: preparedStatements(pool) }) });
}
