/**
 * Server-side prepared statements for the Kysely store on Postgres, through
 * the pool handed to Kysely's `PostgresDialect`.
 *
 * Kysely sends every query as an unnamed statement, so Postgres parses and
 * plans it on every call; for the store's statements (data-modifying CTEs)
 * planning costs more than running them. {@link preparedStatements} wraps a
 * `pg` pool so that the store's statements (and only those: they start with
 * {@link STATEMENT_MARKER}) are sent as named statements, which `pg` parses
 * once per connection and then only binds and executes. Every other query
 * passes through unchanged.
 */

/** The comment the store's statements start with; the wrapper prepares only these. */
export const STATEMENT_MARKER = '/* sagaline */';

/** What Kysely's `PostgresDialect` needs of a pool client (structurally `pg.PoolClient`). */
interface PoolClientLike {
  query(...args: any[]): any;
  release(destroy?: boolean | Error): void;
}

/** What Kysely's `PostgresDialect` needs of a pool (structurally `pg.Pool`). */
interface PoolLike {
  connect(): Promise<PoolClientLike>;
  end(): Promise<void>;
}

/** Options of {@link preparedStatements}. */
export interface PreparedStatementsOptions {
  /**
   * Statements prepared per connection at most (default 256); past it, new
   * statement texts run unnamed. The store's statements come in a bounded
   * number of shapes (a few dozen for a workload), so this only guards the
   * server's memory.
   */
  maxPerConnection?: number;
}

const DEFAULT_MAX_PER_CONNECTION = 256;
/** Statement names by text, shared by the pool's connections; a text evicted and seen again gets a new name. */
const NAMES_CACHE_SIZE = 4096;

/**
 * Wraps a `pg` pool for Kysely's `PostgresDialect` so that the workflow
 * store's statements run as prepared statements (parsed and planned once per
 * connection). Queries that are not the store's pass through unchanged.
 *
 * @example
 * ```ts
 * import pg from 'pg';
 * import { Kysely, PostgresDialect } from 'kysely';
 * import { KyselyWorkflowStore, preparedStatements } from 'sagaline/kysely';
 *
 * const pool = new pg.Pool({ connectionString });
 * const db = new Kysely<any>({ dialect: new PostgresDialect({ pool: preparedStatements(pool) }) });
 * const store = new KyselyWorkflowStore({ db });
 * ```
 */
export function preparedStatements<P extends PoolLike>(pool: P, options: PreparedStatementsOptions = {}): PoolLike {
  const max = options.maxPerConnection ?? DEFAULT_MAX_PER_CONNECTION;
  if (!Number.isInteger(max) || max < 0) throw new TypeError('preparedStatements: maxPerConnection must be a non-negative integer');
  if (!pool || typeof pool.connect !== 'function') throw new TypeError('preparedStatements needs a pg Pool (with connect())');
  const names = new Map<string, string>();
  let counter = 0;
  const nameOf = (text: string): string => {
    let name = names.get(text);
    if (name === undefined) {
      name = `sagaline_${(++counter).toString(36)}`;
      if (names.size >= NAMES_CACHE_SIZE) names.delete(names.keys().next().value!);
      names.set(text, name);
    }
    return name;
  };
  /**
   * One wrapper per pooled client, handed out on every checkout of that client: Kysely keeps its
   * connection object (and calls the dialect's `onCreateConnection`) per client object, so a new
   * wrapper per checkout would look like a new connection every time. The wrapper holds the names the
   * client has prepared (pg keeps the statements for the connection's life).
   */
  const wrappers = new WeakMap<PoolClientLike, PoolClientLike>();
  const wrap = (client: PoolClientLike): PoolClientLike => {
    const own = new Set<string>();
    return {
      query(...args: any[]): any {
        const [text, values] = args;
        if (typeof text === 'string' && text.startsWith(STATEMENT_MARKER) && Array.isArray(values) && values.length > 0) {
          const name = nameOf(text);
          if (own.has(name) || own.size < max) {
            own.add(name);
            return (client.query({ name, text, values }) as Promise<unknown>).catch((err: unknown) => {
              if (!isStalePlan(err)) throw err;
              // A table changed under the statement (a migration added a column): prepare the text
              // again under a new name, for every connection. Inside a transaction the retry fails
              // with the aborted transaction, and the caller's next attempt uses the new name.
              if (names.get(text) === name) names.delete(text);
              const fresh = nameOf(text);
              own.add(fresh);
              return client.query({ name: fresh, text, values }) as Promise<unknown>;
            });
          }
        }
        return client.query(...args);
      },
      release(destroy?: boolean | Error) {
        client.release(destroy);
      },
    };
  };
  return {
    async connect() {
      const client = await pool.connect();
      let wrapper = wrappers.get(client);
      if (!wrapper) wrappers.set(client, (wrapper = wrap(client)));
      return wrapper;
    },
    end: () => pool.end(),
  };
}

/** Postgres refusing a prepared statement whose result columns changed since it was prepared. */
function isStalePlan(err: unknown): boolean {
  const e = err as { code?: unknown; message?: unknown } | null;
  return e?.code === '0A000' && typeof e.message === 'string' && e.message.includes('cached plan must not change result type');
}
