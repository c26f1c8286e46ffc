/**
 * The HTTP contract suite: every route, envelope and error of the admin and
 * tenant API (DESIGN §7), run against any binding through a fetch-like
 * function. It drives a real engine over the memory store with a manual clock.
 *
 * @example
 * ```ts
 * import { runHttpContract } from 'sagaline/testing';
 * import { honoAdmin } from 'sagaline/hono';
 *
 * runHttpContract('hono', (engine, options) => {
 *   const app = honoAdmin(engine, options);
 *   return (request) => Promise.resolve(app.request(request));
 * });
 * ```
 *
 * @module
 */
import { beforeEach, describe, expect, it } from 'vitest';
import { z } from 'zod';
import type { AdminPrincipal } from '../admin/admin-config.js';
import { createManualClock, type ManualClock } from '../core/clock.js';
import { defineWorkflow, step } from '../core/define-workflow.js';
import type { Logger } from '../core/logger.js';
import type { WorkflowEngineApi } from '../engine/engine-types.js';
import { createEngine } from '../engine/workflow-engine.js';
import type { AdminHandlerOptions } from '../http/fetch/admin-handler-config.js';
import { MemoryWorkflowStore } from '../stores/memory/memory-workflow-store.js';

/** A fetch-like app: `Request` in, `Response` out. */
export type HttpContractApp = (request: Request) => Promise<Response>;

/** Builds the app under test from an engine and handler options. */
export type MakeHttpContractApp = (
  engine: WorkflowEngineApi,
  options: AdminHandlerOptions<AdminPrincipal>,
) => HttpContractApp | Promise<HttpContractApp>;

/** One request and its response, as the suite saw it. */
export interface HttpExchange {
  method: string;
  /** The path requested (no query). */
  path: string;
  status: number;
  headers: Headers;
  /** The parsed JSON body (or the text, when it is not JSON). */
  body: unknown;
}

/** Options of {@link runHttpContract}. */
export interface HttpContractOptions {
  /**
   * Where the app serves the API: the mount path and prefix together.
   * @default '/api/v1'
   */
  basePath?: string;
  /** Called with every exchange, e.g. to check bodies against the OpenAPI document. */
  onExchange?: (exchange: HttpExchange) => void | Promise<void>;
  /** Cases this binding cannot support, by test name, with the reason. */
  skip?: Record<string, string>;
}

/** The principals the suite authenticates, by bearer token. */
export const CONTRACT_PRINCIPALS: Record<string, AdminPrincipal> = {
  admin: { subject: 'ops-alice', scopes: ['admin:provisioning'] },
  'tenant-a': { subject: 'user-a', tenantId: 'tenant_a', scopes: ['provisioning:read'] },
  'tenant-b': { subject: 'user-b', tenantId: 'tenant_b', scopes: [] },
  'no-tenant': { subject: 'user-x', scopes: [] },
};

const SECRET_OUTPUT = {
  database_id: 'db_1',
  host: 'db.internal',
  password: 'hunter2',
  credentials: { username: 'app', api_key: 'k-123' },
  nested: [{ access_token: 'tok-1', region: 'eu' }],
};

function contractWorkflows(tokens: Map<string, string>) {
  const provision = defineWorkflow({
    name: 'contract_provision',
    input: z.object({ plan: z.string(), fail: z.boolean().default(false) }),
    steps: {
      create_database: step({ run: async () => SECRET_OUTPUT, compensate: async () => {} }),
      configure: step({
        dependsOn: ['create_database'],
        retry: { maximumAttempts: 1 },
        run: async (ctx) => {
          if ((ctx.input as { fail: boolean }).fail) throw new Error('configure failed');
          return { configured: true };
        },
        compensate: async () => {},
      }),
    },
  });
  const callback = defineWorkflow({
    name: 'contract_callback',
    input: z.object({ plan: z.string() }),
    steps: {
      vendor_account: step({
        retry: { maximumAttempts: 1 },
        run: (ctx) => {
          tokens.set(ctx.workflowId, ctx.callbackToken);
          return ctx.waitForCallback({ timeoutMs: 60_000 });
        },
      }),
    },
  });
  return [provision, callback];
}

interface CallOptions {
  token?: string;
  json?: unknown;
  body?: string | Uint8Array;
  headers?: Record<string, string>;
}

interface CallResult {
  status: number;
  headers: Headers;
  body: any;
}

const WORKFLOW_KEYS = [
  'completed_at',
  'created_at',
  'current_step',
  'error',
  'id',
  'retry_count',
  'service_slug',
  'status',
  'tenant_id',
  'type',
  'updated_at',
];
const DETAIL_KEYS = [...WORKFLOW_KEYS, 'history', 'input', 'output', 'steps'].sort();
const STEP_KEYS = [
  'completed_at',
  'depends_on',
  'error',
  'max_retries',
  'name',
  'next_attempt_at',
  'next_poll_at',
  'output',
  'poll_count',
  'retry_count',
  'started_at',
  'status',
];
const ISO_UTC = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$/;

/**
 * Registers the HTTP contract suite for one binding. `makeApp` receives the
 * engine and the handler options to pass on; it may be called several times
 * per test (e.g. once with `readOnly: true`).
 */
export function runHttpContract(name: string, makeApp: MakeHttpContractApp, contractOptions: HttpContractOptions = {}): void {
  const base = contractOptions.basePath ?? '/api/v1';
  const skips = contractOptions.skip ?? {};
  const test = (title: string, fn: () => Promise<void>) => {
    const reason = skips[title];
    if (reason !== undefined) it.skip(`${title} (skipped: ${reason})`, fn);
    else it(title, fn);
  };

  describe(`HTTP contract: ${name}`, () => {
    let clock: ManualClock;
    let engine: ReturnType<typeof createEngine>;
    let tokens: Map<string, string>;
    let logged: { message: string; context: Record<string, unknown> | undefined }[];
    let app: HttpContractApp;

    const logger: Logger = {
      debug: () => {},
      info: () => {},
      warn: () => {},
      error: (message, context) => logged.push({ message, context }),
    };
    const authenticate = (request: Request): AdminPrincipal | null => {
      const match = /^Bearer (.+)$/.exec(request.headers.get('authorization') ?? '');
      return (match && CONTRACT_PRINCIPALS[match[1]!]) || null;
    };
    const options = (extra: Partial<AdminHandlerOptions<AdminPrincipal>> = {}): AdminHandlerOptions<AdminPrincipal> => ({
      authenticate,
      logger,
      ...extra,
    });

    async function call(target: HttpContractApp, method: string, path: string, opts: CallOptions = {}): Promise<CallResult> {
      const headers = new Headers(opts.headers);
      if (opts.token) headers.set('authorization', `Bearer ${opts.token}`);
      let body: string | Uint8Array | undefined = opts.body;
      if (opts.json !== undefined) {
        body = JSON.stringify(opts.json);
        if (!headers.has('content-type')) headers.set('content-type', 'application/json');
      }
      const init: RequestInit = { method, headers };
      if (body !== undefined) init.body = body as BodyInit;
      const request = new Request(`http://localhost${base}${path}`, init);
      const response = await target(request);
      const text = await response.text();
      let parsed: unknown = text;
      try {
        parsed = JSON.parse(text);
      } catch {
        // Not JSON: kept as text, and the assertions below say so.
      }
      const pathname = new URL(request.url).pathname;
      await contractOptions.onExchange?.({ method, path: pathname, status: response.status, headers: response.headers, body: parsed });
      return { status: response.status, headers: response.headers, body: parsed as any };
    }
    const get = (path: string, opts?: CallOptions) => call(app, 'GET', path, opts);
    const post = (path: string, opts?: CallOptions) => call(app, 'POST', path, opts);

    async function start(type: 'contract_provision' | 'contract_callback', tenantId: string, extra: { fail?: boolean; serviceSlug?: string } = {}) {
      const input = type === 'contract_provision' ? { plan: 'small', fail: extra.fail ?? false } : { plan: 'small' };
      const detail = await engine.start(type, { tenantId, input, ...(extra.serviceSlug ? { serviceSlug: extra.serviceSlug } : {}) });
      await engine.drain();
      return detail.id;
    }

    function expectError(result: CallResult, status: number, code: string): void {
      expect(result.status, JSON.stringify(result.body)).toBe(status);
      expect(result.body).toEqual({ error: { code, message: expect.any(String), request_id: expect.any(String) } });
      expect(result.body.error.request_id).toBe(result.headers.get('x-request-id'));
    }

    function expect422(result: CallResult, loc: (string | number)[], type?: string): void {
      expect(result.status, JSON.stringify(result.body)).toBe(422);
      expect(Object.keys(result.body)).toEqual(['detail']);
      const item = (result.body.detail as { loc: unknown[]; type: string; msg: string }[]).find(
        (d) => JSON.stringify(d.loc) === JSON.stringify(loc),
      );
      expect(item, `no 422 item at ${JSON.stringify(loc)} in ${JSON.stringify(result.body)}`).toBeDefined();
      expect(item!.msg).toEqual(expect.any(String));
      if (type !== undefined) expect(item!.type).toBe(type);
    }

    beforeEach(async () => {
      clock = createManualClock(Date.UTC(2026, 0, 1));
      tokens = new Map();
      logged = [];
      engine = createEngine({
        store: new MemoryWorkflowStore({ clock }),
        workflows: contractWorkflows(tokens),
        clock,
        logger: { debug: () => {}, info: () => {}, warn: () => {}, error: () => {} },
      });
      app = await makeApp(engine, options());
    });

    // ------------------------------------------------------------ admin routes

    test('admin list: envelope, snake_case rows, newest first', async () => {
      const first = await start('contract_provision', 'tenant_a', { serviceSlug: 'db' });
      clock.advance(1000);
      const second = await start('contract_provision', 'tenant_b', { fail: true });
      const result = await get('/admin/provisioning/workflows', { token: 'admin' });
      expect(result.status).toBe(200);
      expect(Object.keys(result.body).sort()).toEqual(['data', 'meta']);
      expect(result.body.meta).toEqual({ request_id: expect.any(String), limit: 50, next_cursor: null, has_more: false });
      expect(result.body.data.map((w: { id: string }) => w.id)).toEqual([second, first]);
      const [failed, completed] = result.body.data;
      expect(Object.keys(completed).sort()).toEqual(WORKFLOW_KEYS);
      expect(completed).toMatchObject({ tenant_id: 'tenant_a', type: 'contract_provision', service_slug: 'db', status: 'completed', retry_count: 0 });
      expect(completed.created_at).toMatch(ISO_UTC);
      expect(completed.completed_at).toMatch(ISO_UTC);
      expect(failed).toMatchObject({ tenant_id: 'tenant_b', status: 'failed', service_slug: null, completed_at: null });
      expect(failed.error).toMatchObject({ code: expect.any(String), message: expect.any(String) });
    });

    test('admin list: filters', async () => {
      const a = await start('contract_provision', 'tenant_a', { serviceSlug: 'db' });
      clock.advance(60_000);
      const b = await start('contract_provision', 'tenant_b', { fail: true });
      clock.advance(60_000);
      const c = await start('contract_callback', 'tenant_a');
      const ids = async (query: string) => {
        const result = await get(`/admin/provisioning/workflows?${query}`, { token: 'admin' });
        expect(result.status, JSON.stringify(result.body)).toBe(200);
        return result.body.data.map((w: { id: string }) => w.id);
      };
      expect(await ids('tenant_id=tenant_a')).toEqual([c, a]);
      expect(await ids('status=failed')).toEqual([b]);
      expect(await ids('status=running')).toEqual([c]);
      expect(await ids('type=contract_callback')).toEqual([c]);
      expect(await ids('service_slug=db')).toEqual([a]);
      expect(await ids(`created_after=${encodeURIComponent('2026-01-01T00:00:30Z')}`)).toEqual([c, b]);
      expect(await ids(`created_before=${encodeURIComponent('2026-01-01T00:01:30Z')}`)).toEqual([b, a]);
      expect(await ids(`created_after=${encodeURIComponent('2026-01-01T01:00:30+01:00')}&created_before=${encodeURIComponent('2026-01-01T00:01:30Z')}`)).toEqual([b]);
      expect(await ids('type=%C3%BCn%C3%AFc%C3%B8d%C3%A9%F0%9F%9A%80')).toEqual([]);
    });

    test('admin list: keyset pagination with an opaque cursor', async () => {
      const ids: string[] = [];
      for (let i = 0; i < 5; i++) {
        ids.unshift(await start('contract_provision', i % 2 ? 'tenant_a' : 'tenant_b'));
        clock.advance(1000);
      }
      const seen: string[] = [];
      let cursor: string | null = null;
      let pages = 0;
      do {
        const query: string = cursor ? `limit=2&cursor=${encodeURIComponent(cursor)}` : 'limit=2';
        const result = await get(`/admin/provisioning/workflows?${query}`, { token: 'admin' });
        expect(result.status).toBe(200);
        expect(result.body.meta.limit).toBe(2);
        expect(result.body.meta.has_more).toBe(result.body.meta.next_cursor !== null);
        seen.push(...result.body.data.map((w: { id: string }) => w.id));
        cursor = result.body.meta.next_cursor;
        pages++;
      } while (cursor !== null && pages < 10);
      expect(pages).toBe(3);
      expect(seen).toEqual(ids);
    });

    test('admin get: detail with steps and history', async () => {
      const id = await start('contract_provision', 'tenant_a', { serviceSlug: 'db' });
      const result = await get(`/admin/provisioning/workflows/${id}`, { token: 'admin' });
      expect(result.status).toBe(200);
      expect(result.body.meta).toEqual({ request_id: expect.any(String) });
      const detail = result.body.data;
      expect(Object.keys(detail).sort()).toEqual(DETAIL_KEYS);
      expect(detail).toMatchObject({ id, tenant_id: 'tenant_a', status: 'completed', input: { plan: 'small', fail: false } });
      expect(detail.steps.map((s: { name: string }) => s.name)).toEqual(['create_database', 'configure']);
      for (const s of detail.steps) {
        expect(Object.keys(s).sort()).toEqual(STEP_KEYS);
        expect(s.status).toBe('completed');
        expect(s.started_at).toMatch(ISO_UTC);
      }
      expect(detail.steps[1]).toMatchObject({ depends_on: ['create_database'], retry_count: 0, max_retries: 0, poll_count: 0, output: { configured: true } });
      expect(detail.history.length).toBeGreaterThan(0);
      for (const entry of detail.history) {
        expect(Object.keys(entry).sort()).toEqual(['action', 'actor', 'at', 'detail', 'from', 'kind', 'reason', 'step_name', 'to']);
        expect(entry.at).toMatch(ISO_UTC);
      }
    });

    test('admin get: unknown workflow is 404', async () => {
      expectError(await get('/admin/provisioning/workflows/wf_doesnotexist', { token: 'admin' }), 404, 'not_found');
    });

    test('secrets in outputs are redacted', async () => {
      const id = await start('contract_provision', 'tenant_a');
      const admin = await get(`/admin/provisioning/workflows/${id}`, { token: 'admin' });
      const tenant = await get(`/provisioning/workflows/${id}`, { token: 'tenant-a' });
      for (const result of [admin, tenant]) {
        expect(result.status).toBe(200);
        const output = result.body.data.steps[0].output;
        expect(output).toEqual({
          database_id: 'db_1',
          host: 'db.internal',
          password: '[REDACTED]',
          credentials: '[REDACTED]',
          nested: [{ access_token: '[REDACTED]', region: 'eu' }],
        });
        expect(JSON.stringify(result.body)).not.toContain('hunter2');
        expect(JSON.stringify(result.body)).not.toContain('k-123');
        expect(JSON.stringify(result.body)).not.toContain('tok-1');
      }
    });

    test('redact: false sends outputs as stored', async () => {
      const raw = await makeApp(engine, options({ redact: false }));
      const id = await start('contract_provision', 'tenant_a');
      const result = await call(raw, 'GET', `/admin/provisioning/workflows/${id}`, { token: 'admin' });
      expect(result.body.data.steps[0].output).toEqual(SECRET_OUTPUT);
    });

    test('force-complete: 200 with skipped steps, then 409 naming the status', async () => {
      const id = await start('contract_callback', 'tenant_a');
      const result = await post(`/admin/provisioning/workflows/${id}/force-complete`, { token: 'admin', json: { reason: 'vendor is gone' } });
      expect(result.status, JSON.stringify(result.body)).toBe(200);
      expect(result.body.data.status).toBe('completed');
      expect(result.body.data.steps[0].status).toBe('skipped');
      const admin = result.body.data.history.find((h: { kind: string }) => h.kind === 'admin');
      expect(admin).toMatchObject({ actor: 'ops-alice', reason: 'vendor is gone' });
      const again = await post(`/admin/provisioning/workflows/${id}/force-complete`, { token: 'admin' });
      expectError(again, 409, 'conflict');
      expect(again.body.error.message).toContain('completed');
    });

    test('retry-step: 200 on a failed step, 409 otherwise, 404 for an unknown step', async () => {
      const id = await start('contract_provision', 'tenant_a', { fail: true });
      const before = await get(`/admin/provisioning/workflows/${id}`, { token: 'admin' });
      expect(before.body.data.status).toBe('failed');
      const result = await post(`/admin/provisioning/workflows/${id}/retry-step/configure`, { token: 'admin' });
      expect(result.status, JSON.stringify(result.body)).toBe(200);
      expect(result.body.data.status).toBe('running');
      expect(result.body.data.steps[1]).toMatchObject({ name: 'configure', status: 'pending', retry_count: 1, error: null });
      expect(result.body.data.retry_count).toBe(1);
      const completedStep = await post(`/admin/provisioning/workflows/${id}/retry-step/create_database`, { token: 'admin' });
      expectError(completedStep, 409, 'conflict');
      expect(completedStep.body.error.message).toContain('completed');
      expectError(await post(`/admin/provisioning/workflows/${id}/retry-step/no_such_step`, { token: 'admin' }), 404, 'not_found');
      expectError(await post('/admin/provisioning/workflows/wf_doesnotexist/retry-step/configure', { token: 'admin' }), 404, 'not_found');
      const done = await start('contract_provision', 'tenant_a');
      const refused = await post(`/admin/provisioning/workflows/${done}/retry-step/configure`, { token: 'admin' });
      expectError(refused, 409, 'conflict');
      expect(refused.body.error.message).toContain('"completed"');
    });

    test('rollback: 200 with actor and reason, then 409 naming the status', async () => {
      const id = await start('contract_provision', 'tenant_a');
      const result = await post(`/admin/provisioning/workflows/${id}/rollback`, { token: 'admin', json: { reason: 'customer cancelled ✂️' } });
      expect(result.status, JSON.stringify(result.body)).toBe(200);
      expect(['rolling_back', 'rolled_back']).toContain(result.body.data.status);
      const admin = result.body.data.history.find((h: { kind: string }) => h.kind === 'admin');
      expect(admin).toMatchObject({ actor: 'ops-alice', reason: 'customer cancelled ✂️' });
      await engine.drain();
      const after = await get(`/admin/provisioning/workflows/${id}`, { token: 'admin' });
      expect(after.body.data.status).toBe('rolled_back');
      const again = await post(`/admin/provisioning/workflows/${id}/rollback`, { token: 'admin', json: {} });
      expectError(again, 409, 'conflict');
      expect(again.body.error.message).toContain('rolled_back');
      const forced = await post(`/admin/provisioning/workflows/${id}/force-complete`, { token: 'admin' });
      expectError(forced, 409, 'conflict');
      expect(forced.body.error.message).toContain('rolled_back');
      expectError(await post('/admin/provisioning/workflows/wf_doesnotexist/rollback', { token: 'admin' }), 404, 'not_found');
    });

    test('readOnly refuses the admin mutations with 403', async () => {
      const readOnly = await makeApp(engine, options({ readOnly: true }));
      const id = await start('contract_provision', 'tenant_a', { fail: true });
      for (const path of ['force-complete', 'retry-step/configure', 'rollback']) {
        expectError(await call(readOnly, 'POST', `/admin/provisioning/workflows/${id}/${path}`, { token: 'admin' }), 403, 'forbidden');
      }
      expect((await call(readOnly, 'GET', `/admin/provisioning/workflows/${id}`, { token: 'admin' })).status).toBe(200);
      expect((await engine.get(id)).status).toBe('failed');
    });

    // ------------------------------------------------------------ tenant routes

    test('tenant list: only the principal\'s tenant', async () => {
      const a = await start('contract_provision', 'tenant_a');
      clock.advance(1000);
      await start('contract_provision', 'tenant_b');
      const result = await get('/provisioning/workflows?tenant_id=tenant_b', { token: 'tenant-a' });
      expect(result.status).toBe(200);
      expect(result.body.data.map((w: { id: string }) => w.id)).toEqual([a]);
      expect(result.body.meta).toEqual({ request_id: expect.any(String), limit: 50, next_cursor: null, has_more: false });
      const filtered = await get('/provisioning/workflows?status=failed&limit=1', { token: 'tenant-a' });
      expect(filtered.body.data).toEqual([]);
    });

    test('tenant get: own workflow 200, another tenant\'s 404 exactly as a missing one', async () => {
      const mine = await start('contract_provision', 'tenant_a');
      const theirs = await start('contract_provision', 'tenant_b');
      const own = await get(`/provisioning/workflows/${mine}`, { token: 'tenant-a' });
      expect(own.status).toBe(200);
      expect(own.body.data.id).toBe(mine);
      const headers = { 'x-request-id': 'probe-1' };
      const other = await get(`/provisioning/workflows/${theirs}`, { token: 'tenant-a', headers });
      const missing = await get('/provisioning/workflows/wf_00000000000000000000000000000000', { token: 'tenant-a', headers });
      expectError(other, 404, 'not_found');
      expect(other.body).toEqual(missing.body);
      expect(JSON.stringify(other.body)).not.toContain(theirs);
    });

    test('tenant status: most recent workflow for the service', async () => {
      await start('contract_provision', 'tenant_a', { serviceSlug: 'db' });
      clock.advance(1000);
      const newest = await start('contract_callback', 'tenant_a', { serviceSlug: 'db' });
      clock.advance(1000);
      await start('contract_provision', 'tenant_b', { serviceSlug: 'db' });
      const result = await get('/provisioning/status/db', { token: 'tenant-a' });
      expect(result.status).toBe(200);
      expect(result.body.data).toMatchObject({ id: newest, status: 'running', service_slug: 'db' });
      expect(Object.keys(result.body.data).sort()).toEqual(DETAIL_KEYS);
      expectError(await get('/provisioning/status/cache', { token: 'tenant-a' }), 404, 'not_found');
      const other = await get('/provisioning/status/db', { token: 'tenant-b' });
      expect(other.body.data).toMatchObject({ tenant_id: 'tenant_b', status: 'completed' });
    });

    // ------------------------------------------------------------ callback

    test('callback: success completes the step; a used, unknown or expired token is the same 404', async () => {
      const id = await start('contract_callback', 'tenant_a');
      const token = tokens.get(id)!;
      expect(token).toEqual(expect.any(String));
      const body = { callback_token: token, status: 'success', endpoint: 'https://svc.example.com', credentials: { password: 's3cret' }, metadata: { region: 'eu' } };
      const accepted = await post('/provisioning/callback', { json: body });
      expect(accepted.status, JSON.stringify(accepted.body)).toBe(200);
      expect(accepted.body).toEqual({ data: { accepted: true }, meta: { request_id: expect.any(String) } });
      await engine.drain();
      const detail = await get(`/admin/provisioning/workflows/${id}`, { token: 'admin' });
      expect(detail.body.data.status).toBe('completed');
      expect(JSON.stringify(detail.body)).not.toContain('s3cret');

      const headers = { 'x-request-id': 'cb-probe' };
      const used = await post('/provisioning/callback', { json: body, headers });
      const unknown = await post('/provisioning/callback', { json: { ...body, callback_token: 'x'.repeat(43) }, headers });
      const expiredId = await start('contract_callback', 'tenant_a');
      clock.advance(61_000);
      await engine.drain();
      const expired = await post('/provisioning/callback', { json: { callback_token: tokens.get(expiredId), status: 'failed', error: 'late' }, headers });
      expectError(used, 404, 'not_found');
      expect(unknown.body).toEqual(used.body);
      expect(expired.body).toEqual(used.body);
      expect([unknown.status, expired.status]).toEqual([404, 404]);
    });

    test('callback: failed status fails the step', async () => {
      const id = await start('contract_callback', 'tenant_a');
      const result = await post('/provisioning/callback', { json: { callback_token: tokens.get(id), status: 'failed', error: { reason: 'quota' } } });
      expect(result.status).toBe(200);
      await engine.drain();
      expect((await engine.get(id)).steps[0]!.status).toBe('failed');
    });

    test('callback: invalid bodies are 422', async () => {
      expect422(await post('/provisioning/callback', { json: { status: 'success' } }), ['body', 'callback_token'], 'missing');
      expect422(await post('/provisioning/callback', { json: { callback_token: 't', status: 'maybe' } }), ['body', 'status'], 'enum');
      expect422(await post('/provisioning/callback', { json: { callback_token: 5, status: 'success' } }), ['body', 'callback_token'], 'string_type');
      expect422(await post('/provisioning/callback', { json: ['callback_token'] }), ['body']);
      expect422(await post('/provisioning/callback', { json: { callback_token: 't', status: 'success', metadata: 'x' } }), ['body', 'metadata']);
      const empty = await post('/provisioning/callback', { headers: { 'content-type': 'application/json' } });
      expect(empty.status).toBe(422);
      expect(empty.body.detail.length).toBeGreaterThan(0);
    });

    test('malformed JSON is 422 json_invalid', async () => {
      const headers = { 'content-type': 'application/json' };
      expect422(await post('/provisioning/callback', { body: '{"callback_token": ', headers }), ['body'], 'json_invalid');
      expect422(await post('/admin/provisioning/workflows/wf_x/rollback', { token: 'admin', body: '{reason: 1}', headers }), ['body'], 'json_invalid');
    });

    test('__proto__ keys, huge numbers and unicode never cause a 500', async () => {
      const proto = '{"callback_token": "abc", "status": "success", "metadata": {"__proto__": {"polluted": true}}}';
      expect422(await post('/provisioning/callback', { body: proto, headers: { 'content-type': 'application/json' } }), ['body', 'metadata', '__proto__'], 'forbidden_key');
      expect(({} as { polluted?: unknown }).polluted).toBeUndefined();
      const huge = '{"callback_token": "' + 'ä'.repeat(100) + '", "status": "success", "metadata": {"n": 1e999, "m": -123456789012345678901234567890}}';
      expectError(await post('/provisioning/callback', { body: huge, headers: { 'content-type': 'application/json' } }), 404, 'not_found');
      expect422(await get('/admin/provisioning/workflows?limit=1e400', { token: 'admin' }), ['query', 'limit']);
      expect422(await get('/admin/provisioning/workflows?limit=99999999999999999999999', { token: 'admin' }), ['query', 'limit']);
      const id = await start('contract_provision', 'tenant_a');
      const unicode = await post(`/admin/provisioning/workflows/${id}/rollback`, { token: 'admin', json: { reason: '日本語 🚀 \u0000 \ud83d' } });
      expect(unicode.status, JSON.stringify(unicode.body)).toBe(200);
      expect422(await get('/admin/provisioning/workflows/%F0%9F%9A%80', { token: 'admin' }), ['path', 'workflow_id']);
    });

    test('a body that is not UTF-8 is 422 json_invalid', async () => {
      const badUtf8 = new Uint8Array([0x7b, 0x22, 0xff, 0xfe, 0x22, 0x7d]);
      expect422(await post('/provisioning/callback', { body: badUtf8, headers: { 'content-type': 'application/json' } }), ['body'], 'json_invalid');
    });

    test('bodies over 64 KiB are 413', async () => {
      const big = JSON.stringify({ callback_token: 'abc', status: 'success', metadata: { blob: 'x'.repeat(70 * 1024) } });
      expectError(await post('/provisioning/callback', { body: big, headers: { 'content-type': 'application/json' } }), 413, 'payload_too_large');
      const id = await start('contract_provision', 'tenant_a');
      const bigReason = JSON.stringify({ reason: 'r'.repeat(65 * 1024) });
      expectError(
        await post(`/admin/provisioning/workflows/${id}/rollback`, { token: 'admin', body: bigReason, headers: { 'content-type': 'application/json' } }),
        413,
        'payload_too_large',
      );
      expect((await engine.get(id)).status).toBe('completed');
    });

    test('a body without a content type is read as JSON', async () => {
      const id = await start('contract_callback', 'tenant_a');
      const bytes = new TextEncoder().encode(JSON.stringify({ callback_token: tokens.get(id), status: 'success' }));
      const result = await post('/provisioning/callback', { body: bytes });
      expect(result.status, JSON.stringify(result.body)).toBe(200);
    });

    test('non-JSON content types are 415', async () => {
      const form = await post('/provisioning/callback', { body: 'callback_token=abc&status=success', headers: { 'content-type': 'application/x-www-form-urlencoded' } });
      expectError(form, 415, 'unsupported_media_type');
      const text = await post('/admin/provisioning/workflows/wf_x/rollback', { token: 'admin', body: '{"reason":"x"}', headers: { 'content-type': 'text/plain' } });
      expectError(text, 415, 'unsupported_media_type');
    });

    // ------------------------------------------------------------ validation, auth, routing

    test('bad path and query values are 422', async () => {
      expect422(await get('/admin/provisioning/workflows?limit=0', { token: 'admin' }), ['query', 'limit'], 'greater_than_equal');
      expect422(await get('/admin/provisioning/workflows?limit=201', { token: 'admin' }), ['query', 'limit'], 'less_than_equal');
      expect422(await get('/admin/provisioning/workflows?limit=abc', { token: 'admin' }), ['query', 'limit'], 'int_parsing');
      expect422(await get('/admin/provisioning/workflows?limit=1.5', { token: 'admin' }), ['query', 'limit']);
      expect422(await get('/admin/provisioning/workflows?status=bogus', { token: 'admin' }), ['query', 'status'], 'enum');
      expect422(await get('/admin/provisioning/workflows?created_after=yesterday', { token: 'admin' }), ['query', 'created_after']);
      expect422(await get('/admin/provisioning/workflows?created_before=2026-13-01T00:00:00Z', { token: 'admin' }), ['query', 'created_before']);
      expect422(await get('/admin/provisioning/workflows?cursor=not-a-cursor', { token: 'admin' }), ['query', 'cursor']);
      expect422(await get('/provisioning/workflows?limit=-1', { token: 'tenant-a' }), ['query', 'limit']);
      const both = await get('/admin/provisioning/workflows?limit=0&status=x', { token: 'admin' });
      expect(both.body.detail).toHaveLength(2);
      expect422(await get('/admin/provisioning/workflows/bad%20id', { token: 'admin' }), ['path', 'workflow_id'], 'string_pattern_mismatch');
      expect422(await post('/admin/provisioning/workflows/wf_x/retry-step/1bad', { token: 'admin' }), ['path', 'step_name']);
      expect422(await get(`/provisioning/status/${'s'.repeat(201)}`, { token: 'tenant-a' }), ['path', 'service_slug'], 'string_too_long');
    });

    test('a path parameter with malformed percent-encoding is 422', async () => {
      expect422(await get('/admin/provisioning/workflows/%E0%A4%A', { token: 'admin' }), ['path', 'workflow_id']);
      expect422(await post('/admin/provisioning/workflows/wf_1/retry-step/a%ZZ', { token: 'admin' }), ['path', 'step_name']);
    });

    test('bad admin bodies are 422', async () => {
      const id = await start('contract_provision', 'tenant_a');
      expect422(await post(`/admin/provisioning/workflows/${id}/rollback`, { token: 'admin', json: { reason: 5 } }), ['body', 'reason'], 'string_type');
      expect422(await post(`/admin/provisioning/workflows/${id}/force-complete`, { token: 'admin', json: [1] }), ['body'], 'model_attributes_type');
      expect((await engine.get(id)).status).toBe('completed');
    });

    test('401 without a principal on every authenticated route', async () => {
      const routes: [string, string][] = [
        ['GET', '/admin/provisioning/workflows'],
        ['GET', '/admin/provisioning/workflows/wf_1'],
        ['POST', '/admin/provisioning/workflows/wf_1/force-complete'],
        ['POST', '/admin/provisioning/workflows/wf_1/retry-step/configure'],
        ['POST', '/admin/provisioning/workflows/wf_1/rollback'],
        ['GET', '/provisioning/workflows'],
        ['GET', '/provisioning/workflows/wf_1'],
        ['GET', '/provisioning/status/db'],
      ];
      for (const [method, path] of routes) {
        expectError(await call(app, method, path), 401, 'unauthorized');
        expectError(await call(app, method, path, { token: 'forged' }), 401, 'unauthorized');
      }
    });

    test('403 for a non-admin on admin routes, and for a principal without tenant on tenant routes', async () => {
      const id = await start('contract_provision', 'tenant_a', { fail: true });
      for (const token of ['tenant-a', 'no-tenant']) {
        expectError(await get('/admin/provisioning/workflows', { token }), 403, 'forbidden');
        expectError(await get(`/admin/provisioning/workflows/${id}`, { token }), 403, 'forbidden');
        expectError(await post(`/admin/provisioning/workflows/${id}/force-complete`, { token }), 403, 'forbidden');
        expectError(await post(`/admin/provisioning/workflows/${id}/retry-step/configure`, { token }), 403, 'forbidden');
        expectError(await post(`/admin/provisioning/workflows/${id}/rollback`, { token }), 403, 'forbidden');
      }
      expectError(await get('/provisioning/workflows', { token: 'no-tenant' }), 403, 'forbidden');
      expectError(await get(`/provisioning/workflows/${id}`, { token: 'no-tenant' }), 403, 'forbidden');
      expectError(await get('/provisioning/status/db', { token: 'no-tenant' }), 403, 'forbidden');
      expect((await engine.get(id)).status).toBe('failed');
    });

    test('405 with an Allow header for an unsupported method', async () => {
      const del = await call(app, 'DELETE', '/admin/provisioning/workflows', { token: 'admin' });
      expectError(del, 405, 'method_not_allowed');
      expect(del.headers.get('allow')).toBe('GET');
      const getOnPost = await get('/admin/provisioning/workflows/wf_1/rollback', { token: 'admin' });
      expectError(getOnPost, 405, 'method_not_allowed');
      expect(getOnPost.headers.get('allow')).toBe('POST');
      const put = await call(app, 'PUT', '/provisioning/callback', { json: {} });
      expectError(put, 405, 'method_not_allowed');
      expect(put.headers.get('allow')).toBe('POST');
    });

    test('request id: a sane X-Request-Id is echoed, anything else replaced', async () => {
      const echoed = await get('/provisioning/workflows', { token: 'tenant-a', headers: { 'x-request-id': 'trace.42_A-b' } });
      expect(echoed.headers.get('x-request-id')).toBe('trace.42_A-b');
      expect(echoed.body.meta.request_id).toBe('trace.42_A-b');
      for (const bad of ['has space', 'x'.repeat(129), 'semi;colon', '']) {
        const replaced = await get('/provisioning/workflows', { token: 'tenant-a', headers: { 'x-request-id': bad } });
        const rid = replaced.headers.get('x-request-id');
        expect(rid).toMatch(/^req_[A-Za-z0-9]+$/);
        expect(replaced.body.meta.request_id).toBe(rid);
      }
      const error = await get('/admin/provisioning/workflows', { headers: { 'x-request-id': 'err-7' } });
      expect(error.headers.get('x-request-id')).toBe('err-7');
      expect(error.body.error.request_id).toBe('err-7');
      const invalid = await get('/admin/provisioning/workflows?limit=0', { token: 'admin', headers: { 'x-request-id': 'v-1' } });
      expect(invalid.headers.get('x-request-id')).toBe('v-1');
    });

    test('500 answers a generic message and logs the real error', async () => {
      const failing = await makeApp(engine, {
        logger,
        authenticate: () => {
          throw new Error('SELECT secret FROM sessions failed at /srv/app/auth.ts:12');
        },
      });
      const result = await call(failing, 'GET', '/provisioning/workflows', { token: 'tenant-a' });
      expectError(result, 500, 'internal_error');
      expect(JSON.stringify(result.body)).not.toMatch(/SELECT|sessions|auth\.ts|stack/);
      expect(JSON.stringify(logged)).toContain('SELECT secret FROM sessions');
    });

    test('openapi.json is an OpenAPI 3.1 document of these routes, without authentication', async () => {
      const result = await get('/openapi.json');
      expect(result.status).toBe(200);
      expect(result.body.openapi).toBe('3.1.0');
      expect(Object.keys(result.body.paths).sort()).toEqual(
        [
          '/admin/provisioning/workflows',
          '/admin/provisioning/workflows/{workflow_id}',
          '/admin/provisioning/workflows/{workflow_id}/force-complete',
          '/admin/provisioning/workflows/{workflow_id}/retry-step/{step_name}',
          '/admin/provisioning/workflows/{workflow_id}/rollback',
          '/openapi.json',
          '/provisioning/callback',
          '/provisioning/status/{service_slug}',
          '/provisioning/workflows',
          '/provisioning/workflows/{workflow_id}',
        ]
          .map((p) => `${base}${p}`)
          .sort(),
      );
    });

    test('unknown paths under the prefix are 404', async () => {
      // A binding leaves paths that are not the API's to the host, whose 404 has its own body.
      expect((await get('/admin/provisioning/nothing-here', { token: 'admin' })).status).toBe(404);
    });
  });
}
