import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { createManualClock } from '../../src/core/clock.js';
import { defineWorkflow, step } from '../../src/core/define-workflow.js';
import { createEngine, type WorkflowEngine } from '../../src/engine/workflow-engine.js';
import { createAdminHandler } from '../../src/fetch.js';
import { storeFactory, type StoreFactory } from '../support/store-factories.js';
import { recordingLogger } from '../fixtures/harness.js';
import { iterations } from './support/iterations.js';
import { reportedCase } from './support/report.js';

const PRINCIPALS: Record<string, { subject: string; scopes: string[]; tenantId?: string }> = {
  admin: { subject: 'ops', scopes: ['admin:provisioning'] },
  'tenant-a': { subject: 'user-a', scopes: [], tenantId: 'tenant_a' },
  'tenant-b': { subject: 'user-b', scopes: [], tenantId: 'tenant_b' },
};
const DOCUMENTED = new Set([200, 401, 403, 404, 405, 409, 413, 415, 422]);
/** Text that must never reach a client: stack frames, SQL, driver and file names. */
const LEAKS = [/\n\s+at /, /\bat .+:\d+:\d+/, /\bSELECT\b/i, /\bUPDATE\s+\S+\s+SET\b/i, /\bINSERT INTO\b/i, /sqlite/i, /node_modules/, /\.ts:\d+/, /SqliteError|PostgresError|TypeError|ReferenceError/];

const wf = defineWorkflow({
  name: 'fuzzed',
  input: z.object({ plan: z.string() }),
  steps: {
    a: step({ run: () => ({ password: 'hunter2', ok: true }), compensate: () => {} }),
    b: step({ run: (ctx) => ctx.waitForCallback() }),
  },
});

const routeSegments = [
  'api', 'v1', 'admin', 'provisioning', 'workflows', 'status', 'callback', 'force-complete', 'retry-step', 'rollback', 'openapi.json', 'a', 'b',
];

function arbitraryPath(ids: string[]): fc.Arbitrary<string> {
  const segment = fc.oneof(
    fc.constantFrom(...routeSegments, ...ids),
    fc.string({ maxLength: 20 }).map((s) => encodeURIComponent(s)),
    fc.constantFrom('%', '%zz', '%00', '..', '.', '%2F', '__proto__', 'constructor', '%E2%82', 'ü', '💥', 'x'.repeat(300)),
  );
  const real = fc.constantFrom(
    '/api/v1/admin/provisioning/workflows',
    '/api/v1/provisioning/workflows',
    '/api/v1/provisioning/callback',
    '/api/v1/openapi.json',
    ...ids.flatMap((id) => [
      `/api/v1/admin/provisioning/workflows/${id}`,
      `/api/v1/admin/provisioning/workflows/${id}/force-complete`,
      `/api/v1/admin/provisioning/workflows/${id}/retry-step/a`,
      `/api/v1/admin/provisioning/workflows/${id}/rollback`,
      `/api/v1/provisioning/workflows/${id}`,
    ]),
    '/api/v1/provisioning/status/web',
  );
  return fc.oneof(real, fc.array(segment, { minLength: 0, maxLength: 8 }).map((parts) => `/${parts.join('/')}`), real.chain((r) => segment.map((s) => `${r}/${s}`)));
}

const queryValue = fc.oneof(
  fc.string({ maxLength: 30 }),
  fc.constantFrom('0', '-1', '201', '50', '1e400', '9'.repeat(400), 'NaN', 'true', '', '2026-01-01T00:00:00Z', 'not-a-date', 'completed', '💥', '%00'),
);
const queryKey = fc.oneof(
  fc.constantFrom('limit', 'cursor', 'status', 'tenant_id', 'type', 'service_slug', 'created_after', 'created_before', '__proto__', 'constructor', 'limit[]'),
  fc.string({ maxLength: 10 }),
);
const query = fc.array(fc.tuple(queryKey, queryValue), { maxLength: 5 }).map((pairs) => {
  const q = new URLSearchParams();
  for (const [k, v] of pairs) q.append(k, v);
  const text = q.toString();
  return text ? `?${text}` : '';
});

const body = fc.oneof(
  fc.constant(undefined),
  fc.jsonValue({ maxDepth: 4 }).map((v) => JSON.stringify(v)),
  fc.record({ reason: fc.oneof(fc.string(), fc.integer(), fc.constant(null)) }).map((v) => JSON.stringify(v)),
  fc.record({
    callback_token: fc.oneof(fc.string({ maxLength: 80 }), fc.integer()),
    status: fc.oneof(fc.constantFrom('success', 'failed', 'SUCCESS', ''), fc.integer()),
    endpoint: fc.oneof(fc.string(), fc.constant(undefined)),
  }).map((v) => JSON.stringify(v)),
  fc.constantFrom(
    '{"__proto__": {"isAdmin": true}}',
    '{"constructor": {"prototype": {"polluted": 1}}}',
    '{"reason": "x", "__proto__": null}',
    '{',
    '{"reason": "\\ud800"}',
    'null',
    '[]',
    '"string"',
    '1e999999',
    '[' .repeat(5000) + ']'.repeat(5000),
    'x'.repeat(70 * 1024),
    JSON.stringify({ reason: 'y'.repeat(70 * 1024) }),
  ),
);
const contentType = fc.constantFrom(undefined, 'application/json', 'application/json; charset=utf-8', 'text/plain', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x', 'application/json; charset=latin1', 'application/vnd.api+json', '');
const authorization = fc.oneof(
  fc.constant(undefined),
  fc.constantFrom('Bearer admin', 'Bearer tenant-a', 'Bearer tenant-b', 'Bearer ', 'Bearer nope', 'Basic YWRtaW46YWRtaW4=', 'bearer admin', 'Bearer admin extra'),
  fc.string({ maxLength: 40 }),
);
const method = fc.constantFrom('GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS', 'HEAD');
const requestId = fc.oneof(fc.constant(undefined), fc.string({ maxLength: 200 }), fc.constantFrom('abc-123', 'x'.repeat(129), '<script>', '\u0000'));

interface Setup {
  engine: WorkflowEngine;
  handler: (r: Request) => Promise<Response>;
  ids: string[];
  cleanup: () => Promise<void>;
}

async function makeSetup(factory: StoreFactory): Promise<Setup> {
  const clock = createManualClock();
  const { store, cleanup } = await factory.create(clock);
  const logger = recordingLogger();
  const engine = createEngine({ store, workflows: [wf], clock, logger });
  const ids: string[] = [];
  ids.push((await engine.start('fuzzed', { tenantId: 'tenant_a', input: { plan: 'x' }, serviceSlug: 'web' })).id);
  ids.push((await engine.start('fuzzed', { tenantId: 'tenant_b', input: { plan: 'y' } })).id);
  await engine.drain();
  const handler = createAdminHandler(engine, {
    logger,
    authenticate: (request) => {
      const m = /^Bearer (\S+)$/.exec(request.headers.get('authorization') ?? '');
      return (m && PRINCIPALS[m[1]!]) || null;
    },
  });
  return { engine, handler, ids, cleanup };
}

async function expectDocumentedAnswer(res: Response, method: string, path: string): Promise<void> {
  expect(res.status, `status ${res.status}`).toBeLessThan(500);
  expect(DOCUMENTED.has(res.status), `undocumented status ${res.status}`).toBe(true);
  const text = await res.text();
  for (const leak of LEAKS) expect(text, `leak ${leak}`).not.toMatch(leak);
  if (method === 'HEAD') return;
  const parsed = JSON.parse(text) as Record<string, unknown>;
  if (res.status === 200 && path.endsWith('/openapi.json')) {
    // The document itself, not an envelope: tools read it as is.
    expect(parsed).toHaveProperty('openapi', '3.1.0');
  } else if (res.status === 200) {
    expect(parsed).toHaveProperty('data');
    expect(parsed).toHaveProperty('meta.request_id');
  } else if (res.status === 422) {
    expect(Array.isArray(parsed.detail)).toBe(true);
    for (const item of parsed.detail as Record<string, unknown>[]) {
      expect(Array.isArray(item.loc)).toBe(true);
      expect(typeof item.msg).toBe('string');
      expect(typeof item.type).toBe('string');
    }
  } else {
    const error = parsed.error as Record<string, unknown>;
    expect(typeof error.code).toBe('string');
    expect(typeof error.message).toBe('string');
    expect(typeof error.request_id).toBe('string');
  }
}

describe.each(['memory', 'sqlite'] as const)('hostile HTTP input on the %s store', (storeName) => {
  let setup: Setup;
  beforeAll(async () => {
    setup = await makeSetup(storeFactory(storeName));
  });
  afterAll(async () => {
    await setup.cleanup();
  });

  it('answers every fuzzed request with a documented 2xx/4xx shape, never a 500 or a leak', async () => {
    await reportedCase({ suite: 'hostile-http', fault: 'random method, path, query, headers, body and content type on every route', stores: [storeName] }, async (tally) => {
      await fc.assert(
        fc.asyncProperty(method, arbitraryPath(setup.ids), query, body, contentType, authorization, requestId, async (m, path, q, b, ct, auth, rid) => {
          const headers = new Headers();
          if (ct !== undefined) headers.set('content-type', ct);
          if (auth !== undefined) {
            try {
              headers.set('authorization', auth);
            } catch {
              return; // not a legal header value: no client can send it
            }
          }
          if (rid !== undefined) {
            try {
              headers.set('x-request-id', rid);
            } catch {
              return;
            }
          }
          const withBody = b !== undefined && m !== 'GET' && m !== 'HEAD';
          const request = new Request(`http://api.test${path}${q}`, { method: m, headers, ...(withBody ? { body: b } : {}) });
          const res = await setup.handler(request);
          tally.iterations++;
          await expectDocumentedAnswer(res, m, new URL(request.url).pathname);
          // Nothing a fuzzer sends may pollute prototypes.
          expect(({} as Record<string, unknown>).isAdmin).toBeUndefined();
          expect(({} as Record<string, unknown>).polluted).toBeUndefined();
        }),
        { numRuns: iterations(150, 10), seed: 4242 },
      );
    });
  });

  it('keeps tenants apart and admin routes closed to tenants', async () => {
    await reportedCase({ suite: 'hostile-http', fault: 'tenant principal on admin routes; tenant reading another tenant by id', stores: [storeName] }, async (tally) => {
      const [mine, theirs] = setup.ids as [string, string];
      const get = (path: string, token?: string, init: RequestInit = {}) =>
        setup.handler(new Request(`http://api.test${path}`, { ...init, headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), ...(init.headers ?? {}) } }));
      for (const path of ['/api/v1/admin/provisioning/workflows', `/api/v1/admin/provisioning/workflows/${mine}`]) {
        expect((await get(path, 'tenant-a')).status).toBe(403);
        expect((await get(path)).status).toBe(401);
        expect((await get(path, 'nope')).status).toBe(401);
        tally.iterations += 3;
      }
      for (const op of ['force-complete', 'rollback', 'retry-step/a']) {
        const res = await get(`/api/v1/admin/provisioning/workflows/${mine}/${op}`, 'tenant-a', { method: 'POST' });
        expect(res.status).toBe(403);
        tally.iterations++;
      }
      const own = await get(`/api/v1/provisioning/workflows/${mine}`, 'tenant-a');
      expect(own.status).toBe(200);
      const other = await get(`/api/v1/provisioning/workflows/${theirs}`, 'tenant-a');
      const missing = await get('/api/v1/provisioning/workflows/wf_00000000000000000000000000000000', 'tenant-a');
      expect(other.status).toBe(404);
      expect(missing.status).toBe(404);
      const strip = async (r: Response) => {
        const j = (await r.json()) as { error: Record<string, unknown> };
        delete j.error.request_id;
        return j;
      };
      expect(await strip(other)).toEqual(await strip(missing));
      const list = (await (await get('/api/v1/provisioning/workflows', 'tenant-a')).json()) as { data: { id: string; tenant_id: string }[] };
      expect(list.data.map((w) => w.tenant_id)).toEqual(['tenant_a']);
      tally.iterations += 4;
    });
  });

  it('refuses guessed, used and expired callback tokens with one identical answer', async () => {
    await reportedCase({ suite: 'hostile-http', fault: 'guessed callback tokens (random strings) vs a used token', stores: [storeName] }, async (tally) => {
      const answers = new Set<string>();
      await fc.assert(
        fc.asyncProperty(fc.string({ minLength: 0, maxLength: 120 }), async (token) => {
          const res = await setup.handler(
            new Request('http://api.test/api/v1/provisioning/callback', {
              method: 'POST',
              headers: { 'content-type': 'application/json' },
              body: JSON.stringify({ callback_token: token, status: 'success' }),
            }),
          );
          tally.iterations++;
          const j = (await res.json()) as { error?: Record<string, unknown>; detail?: unknown };
          if (res.status === 422) return; // empty or over-long tokens fail validation first
          expect(res.status).toBe(404);
          delete j.error!.request_id;
          answers.add(JSON.stringify(j));
        }),
        { numRuns: iterations(60, 10), seed: 7 },
      );
      expect(answers.size).toBe(1);
    });
  });
});
