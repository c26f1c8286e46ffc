/**
 * The demo: an HTTP server with the admin and tenant API, on an embedded
 * SQLite file, running the `provision_service` workflow with a background
 * worker. It seeds workflows for three tenants (completed, failed at a step,
 * waiting for a callback) and prints ready-to-paste curl commands.
 *
 *   npm run demo            # PORT=3000 by default
 */
import { mkdirSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { serve } from '@hono/node-server';
import Database from 'better-sqlite3';
import { Kysely, SqliteDialect } from 'kysely';
import { createEngine, type WorkflowDetail } from '../src/index.js';
import { createAdminHandler } from '../src/fetch.js';
import { cachedStatements, KyselyWorkflowStore, migrateToLatest } from '../src/kysely.js';
import { FakeCloud, provisionServiceWorkflow } from './provision-service-workflow.js';

const port = Number(process.env.PORT ?? 3000);
if (!Number.isInteger(port) || port < 1 || port > 65535) {
  console.error(`PORT must be a port number, got ${JSON.stringify(process.env.PORT)}`);
  process.exit(1);
}

/** Why the demo cannot listen on the port, said plainly (another demo may be running on it and its file). */
function cannotListen(err: NodeJS.ErrnoException): never {
  const reason = err.code === 'EADDRINUSE' ? 'the port is in use (another demo?)' : err.message;
  console.error(`Cannot listen on 127.0.0.1:${port}: ${reason}. Pick another port: PORT=3001 npm run demo`);
  process.exit(1);
}

// Checked before the SQLite file is replaced, so that a second demo leaves a running one's file alone.
await new Promise<void>((resolve) => {
  const probe = createServer();
  probe.once('error', cannotListen);
  probe.listen(port, '127.0.0.1', () => probe.close(() => resolve()));
});

const dir = join(process.cwd(), '.sagaline');
const file = join(dir, 'demo.sqlite');
mkdirSync(dir, { recursive: true });
for (const suffix of ['', '-wal', '-shm']) rmSync(file + suffix, { force: true });

const sqlite = new Database(file);
sqlite.pragma('journal_mode = WAL');
sqlite.pragma('busy_timeout = 5000');
sqlite.pragma('synchronous = FULL');
const db = new Kysely<any>({ dialect: new SqliteDialect({ database: cachedStatements(sqlite) }) });
await migrateToLatest(db);

const cloud = new FakeCloud();
const vendorTokens = new Map<string, string>();
const lockedDns = new Set<string>();
const workflow = provisionServiceWorkflow(cloud, (workflowId, token) => vendorTokens.set(workflowId, token), lockedDns);
const store = new KyselyWorkflowStore({ db });
const engine = createEngine({ store, workflows: [workflow], concurrency: 8, idlePollMs: 250 });

// Ids lead with their creation time, so workflows started together share a prefix: show the random tail.
const short = (id: string) => `wf_…${id.slice(-8)}`;
const print = (line: string) => console.log(`  ${new Date().toISOString().slice(11, 23)}  ${line}`);
engine.events.on('workflow:started', (e) => print(`workflow ${short(e.workflowId)} started (${e.tenantId})`));
engine.events.on('step:started', (e) => print(`${short(e.workflowId)} ${e.stepName}: running (attempt ${e.attempt})`));
engine.events.on('step:completed', (e) => print(`${short(e.workflowId)} ${e.stepName}: completed`));
engine.events.on('step:retry_scheduled', (e) => print(`${short(e.workflowId)} ${e.stepName}: retry in ${e.delayMs} ms (${e.error.message})`));
engine.events.on('step:failed', (e) => print(`${short(e.workflowId)} ${e.stepName}: failed (${e.error.code})`));
engine.events.on('step:waiting_callback', (e) => print(`${short(e.workflowId)} ${e.stepName}: waiting for a callback`));
engine.events.on('step:waiting_poll', (e) => print(`${short(e.workflowId)} ${e.stepName}: polling`));
engine.events.on('step:skipped', (e) => print(`${short(e.workflowId)} ${e.stepName}: skipped (${e.reason})`));
engine.events.on('step:compensated', (e) => print(`${short(e.workflowId)} ${e.stepName}: compensated`));
engine.events.on('step:compensation_failed', (e) => print(`${short(e.workflowId)} ${e.stepName}: compensation failed`));
for (const name of ['workflow:completed', 'workflow:failed', 'workflow:force_completed', 'workflow:rolling_back', 'workflow:rolled_back', 'workflow:rollback_failed'] as const) {
  engine.events.on(name, (e) => print(`workflow ${short(e.workflowId)}: ${name.slice('workflow:'.length)}`));
}

// Demo principals. A real host verifies its own session or JWT here.
const ADMIN_TOKEN = 'demo-admin-token';
const principals: Record<string, { subject: string; scopes: string[]; tenantId?: string }> = {
  [ADMIN_TOKEN]: { subject: 'ops@example.com', scopes: ['admin:provisioning'] },
  'demo-acme-token': { subject: 'dev@acme.test', scopes: [], tenantId: 'acme' },
  'demo-globex-token': { subject: 'dev@globex.test', scopes: [], tenantId: 'globex' },
  'demo-initech-token': { subject: 'dev@initech.test', scopes: [], tenantId: 'initech' },
};
const handler = createAdminHandler(engine, {
  authenticate: (request) => {
    const match = /^Bearer (\S+)$/.exec(request.headers.get('authorization') ?? '');
    return (match && principals[match[1]!]) ?? null;
  },
});

engine.startWorker();

async function waitFor(id: string, ok: (d: WorkflowDetail) => boolean): Promise<WorkflowDetail> {
  for (let i = 0; i < 400; i++) {
    const d = await engine.get(id);
    if (ok(d)) return d;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`seed workflow ${id} did not reach the expected state`);
}
const stepStatus = (d: WorkflowDetail, name: string) => d.steps.find((s) => s.name === name)?.status;

console.log('\nSeeding demo workflows…');
// acme: runs to completion (the vendor calls back at once).
const completed = await engine.start('provision_service', { tenantId: 'acme', serviceSlug: 'web', input: { plan: 'pro', serviceName: 'acme-web' } });
await waitFor(completed.id, (d) => stepStatus(d, 'vendor_account') === 'waiting_callback');
await engine.completeCallback(vendorTokens.get(completed.id)!, { status: 'success', endpoint: 'https://vendor.example/acme', credentials: { api_key: 'sk_live_acme' } });
await waitFor(completed.id, (d) => d.status === 'completed');
// globex: DNS zone locked → register_dns fails for good; unlocked afterwards so retry-step succeeds.
lockedDns.add('globex-api');
const failed = await engine.start('provision_service', { tenantId: 'globex', serviceSlug: 'api', input: { plan: 'starter', serviceName: 'globex-api' } });
await waitFor(failed.id, (d) => d.status === 'failed');
lockedDns.delete('globex-api');
// initech: stuck waiting for the vendor's callback.
const waiting = await engine.start('provision_service', { tenantId: 'initech', serviceSlug: 'billing', input: { plan: 'enterprise', serviceName: 'initech-billing' } });
await waitFor(waiting.id, (d) => stepStatus(d, 'vendor_account') === 'waiting_callback' && stepStatus(d, 'issue_cert') === 'completed');
// initech: a second one stuck on the vendor, for force-complete.
const stuck = await engine.start('provision_service', { tenantId: 'initech', serviceSlug: 'reports', input: { plan: 'starter', serviceName: 'initech-reports' } });
await waitFor(stuck.id, (d) => stepStatus(d, 'vendor_account') === 'waiting_callback');

const server = serve({ fetch: handler, port, hostname: '127.0.0.1' });
server.once('error', cannotListen);
await new Promise<void>((resolve) => server.once('listening', () => resolve()));
const base = `http://127.0.0.1:${port}/api/v1`;
const auth = `-H 'Authorization: Bearer ${ADMIN_TOKEN}'`;
console.log(`
sagaline demo listening on http://127.0.0.1:${port}  (SQLite file: ${file})
Admin token: ${ADMIN_TOKEN}   Tenant tokens: demo-acme-token, demo-globex-token, demo-initech-token

List every workflow (all tenants):
  curl -s ${auth} '${base}/admin/provisioning/workflows'

Retry the failed step of globex's workflow (the DNS zone is unlocked now):
  curl -s -X POST ${auth} -H 'Content-Type: application/json' -d '{"reason":"zone unlocked"}' '${base}/admin/provisioning/workflows/${failed.id}/retry-step/register_dns'

Deliver the vendor callback initech is waiting for:
  curl -s -X POST -H 'Content-Type: application/json' -d '{"callback_token":"${vendorTokens.get(waiting.id)}","status":"success","endpoint":"https://vendor.example/initech","credentials":{"api_key":"sk_live_initech"}}' '${base}/provisioning/callback'

Force-complete initech's other stuck workflow:
  curl -s -X POST ${auth} -d '{"reason":"vendor account made by hand"}' -H 'Content-Type: application/json' '${base}/admin/provisioning/workflows/${stuck.id}/force-complete'

Roll back acme's completed workflow (compensations run in reverse order):
  curl -s -X POST ${auth} '${base}/admin/provisioning/workflows/${completed.id}/rollback'

See one workflow with its steps and history, as the tenant:
  curl -s -H 'Authorization: Bearer demo-acme-token' '${base}/provisioning/workflows/${completed.id}'

OpenAPI document:  curl -s '${base}/openapi.json'
Press Ctrl-C to stop.
`);

let stopping = false;
const shutdown = async () => {
  if (stopping) return;
  stopping = true;
  console.log('\nStopping: waiting for running steps…');
  server.close();
  await engine.stop();
  await db.destroy();
  console.log('Stopped.');
  process.exit(0);
};
process.on('SIGINT', () => void shutdown());
process.on('SIGTERM', () => void shutdown());
