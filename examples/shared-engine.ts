/**
 * The engine the framework examples share: the provision_service workflow on
 * an embedded SQLite file (swap in a Postgres `Kysely` for several processes).
 */
import Database from 'better-sqlite3';
import { Kysely, SqliteDialect } from 'kysely';
import { createEngine } from '../src/index.js';
import { cachedStatements, KyselyWorkflowStore, migrateToLatest } from '../src/kysely.js';
import { FakeCloud, provisionServiceWorkflow } from './provision-service-workflow.js';

export async function createExampleEngine(file = 'sagaline-example.sqlite') {
  const sqlite = new Database(file);
  sqlite.pragma('journal_mode = WAL');
  sqlite.pragma('busy_timeout = 5000');
  const db = new Kysely<any>({ dialect: new SqliteDialect({ database: cachedStatements(sqlite) }) });
  await migrateToLatest(db);
  const engine = createEngine({ store: new KyselyWorkflowStore({ db }), workflows: [provisionServiceWorkflow(new FakeCloud())] });
  engine.startWorker();
  return { engine, db };
}

/** A stand-in for the host's own authentication: verify your session or JWT here. */
export function authenticateBearer(request: Request): { subject: string; scopes: string[]; tenantId?: string } | null {
  const token = /^Bearer (\S+)$/.exec(request.headers.get('authorization') ?? '')?.[1];
  if (token === process.env.ADMIN_TOKEN) return { subject: 'ops', scopes: ['admin:provisioning'] };
  if (token?.startsWith('tenant-')) return { subject: token, scopes: [], tenantId: token.slice('tenant-'.length) };
  return null;
}
