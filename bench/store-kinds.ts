/**
 * The store kinds a bench run can measure: the memory store, and the Kysely
 * store on SQLite and on Postgres, each also with `groupCommit: true`
 * (concurrent `transact` calls share one database transaction).
 */
import type { StoreDatabase, StoreKind } from './results.js';

/** Every kind, in the order the bench runs them (and the default `--stores`). */
export const STORE_KINDS: readonly StoreKind[] = ['memory', 'sqlite', 'sqlite-group', 'postgres', 'postgres-group'];

/** The databases, in the order the bench measures them. */
export const DATABASES: readonly StoreDatabase[] = ['memory', 'sqlite', 'postgres'];

export function isStoreKind(value: string): value is StoreKind {
  return (STORE_KINDS as readonly string[]).includes(value);
}

/** The database a kind runs on (its raw baseline, and where its transactions are counted). */
export function databaseOf(kind: StoreKind): StoreDatabase {
  return kind === 'sqlite-group' ? 'sqlite' : kind === 'postgres-group' ? 'postgres' : kind;
}

/** Whether the kind's Kysely store batches concurrent `transact` calls (`groupCommit: true`). */
export function usesGroupCommit(kind: StoreKind): boolean {
  return kind === 'sqlite-group' || kind === 'postgres-group';
}

/** The kind as the table names it: `sqlite`, `postgres + group commit`, … */
export function kindLabel(kind: StoreKind): string {
  return usesGroupCommit(kind) ? `${databaseOf(kind)} + group commit` : kind;
}

/** The kind as part of a database or file name (letters, digits and underscores). */
export function kindSlug(kind: StoreKind): string {
  return kind.replace(/-/g, '_');
}
