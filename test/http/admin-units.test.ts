import { describe, expect, it } from 'vitest';
import { isJsonContentType, matchesAdminRoute } from '../../src/admin/admin-api.js';
import { defaultActorOf, defaultIsAdmin, defaultTenantOf } from '../../src/admin/admin-config.js';
import { REDACTED, isSecretKey, redactSecrets } from '../../src/admin/admin-redaction.js';
import { compileRoutes, matchRoute } from '../../src/admin/admin-router.js';
import { AdminListQuerySchema, CallbackBodySchema, WorkflowDetailResponseSchema } from '../../src/admin/admin-schemas.js';
import { MAX_BODY_DEPTH, parseJsonBody, validateSection } from '../../src/admin/admin-validation.js';
import { toWorkflowDetailResponse } from '../../src/admin/admin-wire.js';
import { resolveRequestId } from '../../src/admin/request-id.js';
import type { WorkflowDetail } from '../../src/engine/engine-types.js';
import { normalizePrefix } from '../../src/http/fetch/fetch-admin-handler.js';

describe('redaction', () => {
  it('matches secret-looking keys in any case or separator style', () => {
    for (const key of ['password', 'PASSWORD', 'db_password', 'credentials', 'secret', 'clientSecret', 'token', 'access_token', 'api_key', 'apiKey', 'API-KEY', 'private_key']) {
      expect(isSecretKey(key), key).toBe(true);
    }
    for (const key of ['host', 'endpoint', 'username', 'region', 'id']) expect(isSecretKey(key), key).toBe(false);
  });

  it('replaces values at any depth, in arrays too, without mutating the input', () => {
    const input = { host: 'h', credentials: { user: 'u' }, list: [{ apiKey: 'k', n: 1 }, 'plain'], deep: { a: { b: { token: 't' } } } };
    const copy = structuredClone(input);
    expect(redactSecrets(input, { workflowId: 'wf', field: 'output', stepName: null })).toEqual({
      host: 'h',
      credentials: REDACTED,
      list: [{ apiKey: REDACTED, n: 1 }, 'plain'],
      deep: { a: { b: { token: REDACTED } } },
    });
    expect(input).toEqual(copy);
  });

  it('passes primitives through and keeps a "__proto__" key a plain key', () => {
    expect(redactSecrets('secret', { workflowId: 'wf', field: 'output', stepName: null })).toBe('secret');
    expect(redactSecrets(null, { workflowId: 'wf', field: 'output', stepName: null })).toBeNull();
    const parsed = JSON.parse('{"__proto__": {"password": "p"}}') as unknown;
    const result = redactSecrets(parsed, { workflowId: 'wf', field: 'output', stepName: null }) as Record<string, unknown>;
    expect(Object.getPrototypeOf(result)).toBe(Object.prototype);
    expect(Object.getOwnPropertyDescriptor(result, '__proto__')?.value).toEqual({ password: REDACTED });
  });

  it('stops at a bounded depth', () => {
    let deep: unknown = 'leaf';
    for (let i = 0; i < 200; i++) deep = { next: deep };
    expect(() => redactSecrets(deep, { workflowId: 'wf', field: 'output', stepName: null })).not.toThrow();
  });
});

describe('422 mapping', () => {
  const query = (raw: Record<string, string>) => validateSection(AdminListQuerySchema, 'query', raw);

  it('uses FastAPI locations and pydantic-like types', () => {
    expect(query({ limit: 'abc' })).toEqual({
      ok: false,
      detail: [{ loc: ['query', 'limit'], msg: 'Input should be a valid integer, unable to parse string as an integer', type: 'int_parsing' }],
    });
    expect(query({ limit: '0' })).toMatchObject({ detail: [{ loc: ['query', 'limit'], type: 'greater_than_equal', msg: 'Input should be greater than or equal to 1' }] });
    expect(query({ limit: '500' })).toMatchObject({ detail: [{ type: 'less_than_equal', msg: 'Input should be less than or equal to 200' }] });
    expect(query({ status: 'done' })).toMatchObject({ detail: [{ loc: ['query', 'status'], type: 'enum' }] });
    expect(query({ created_after: '2026-01-01' })).toMatchObject({ detail: [{ loc: ['query', 'created_after'], type: 'datetime_parsing' }] });
    expect(query({ tenant_id: '' })).toMatchObject({ detail: [{ loc: ['query', 'tenant_id'], type: 'string_too_short' }] });
  });

  it('defaults and coerces a valid query', () => {
    expect(query({})).toEqual({ ok: true, value: { limit: 50 } });
    expect(query({ limit: '7', status: 'failed' })).toEqual({ ok: true, value: { limit: 7, status: 'failed' } });
  });

  it('tells a missing field from a wrong one', () => {
    const result = validateSection(CallbackBodySchema, 'body', { status: 1 });
    expect(result).toEqual({
      ok: false,
      detail: [
        { loc: ['body', 'callback_token'], msg: 'Field required', type: 'missing' },
        { loc: ['body', 'status'], msg: "Input should be 'success' or 'failed'", type: 'enum' },
      ],
    });
    expect(validateSection(CallbackBodySchema, 'body', 'text')).toMatchObject({ detail: [{ loc: ['body'], type: 'model_attributes_type' }] });
  });

  it('parses JSON bodies, refusing malformed text, deep nesting and __proto__', () => {
    expect(parseJsonBody('{"a": [1, {"b": null}]}')).toEqual({ ok: true, value: { a: [1, { b: null }] } });
    expect(parseJsonBody('{"a": ')).toEqual({ ok: false, detail: [{ loc: ['body'], msg: 'JSON decode error', type: 'json_invalid' }] });
    expect(parseJsonBody('{"a": {"__proto__": 1}}')).toMatchObject({ ok: false, detail: [{ loc: ['body', 'a', '__proto__'], type: 'forbidden_key' }] });
    expect(parseJsonBody('{"list": [{"__proto__": {}}]}')).toMatchObject({ detail: [{ loc: ['body', 'list', 0, '__proto__'] }] });
    expect(parseJsonBody('['.repeat(MAX_BODY_DEPTH + 1) + ']'.repeat(MAX_BODY_DEPTH + 1))).toMatchObject({ ok: false, detail: [{ type: 'too_deep' }] });
    expect(parseJsonBody('['.repeat(30_000) + ']'.repeat(30_000))).toMatchObject({ ok: false });
  });
});

describe('routing', () => {
  const compiled = compileRoutes([
    { method: 'GET', path: '/items/{id}' },
    { method: 'POST', path: '/items/{id}/undo' },
    { method: 'GET', path: '/items' },
  ]);

  it('matches params, ignores one trailing slash, and tells 404 from 405', () => {
    expect(matchRoute(compiled, 'GET', '/items/a%20b')).toMatchObject({ kind: 'found', params: { id: 'a b' }, undecodable: [] });
    expect(matchRoute(compiled, 'GET', '/items/')).toMatchObject({ kind: 'found', route: { path: '/items' } });
    expect(matchRoute(compiled, 'DELETE', '/items/1')).toEqual({ kind: 'method_not_allowed', allow: ['GET'] });
    expect(matchRoute(compiled, 'GET', '/items/1/undo')).toEqual({ kind: 'method_not_allowed', allow: ['POST'] });
    expect(matchRoute(compiled, 'GET', '/nothing')).toEqual({ kind: 'not_found' });
    expect(matchRoute(compiled, 'GET', '')).toEqual({ kind: 'not_found' });
  });

  it('reports a parameter that does not percent-decode', () => {
    expect(matchRoute(compiled, 'GET', '/items/%E0%A4%A')).toMatchObject({ kind: 'found', undecodable: ['id'] });
  });

  it('knows the API\'s own paths', () => {
    expect(matchesAdminRoute('/provisioning/workflows')).toBe(true);
    expect(matchesAdminRoute('/admin/provisioning/workflows/wf_1/rollback')).toBe(true);
    expect(matchesAdminRoute('/users')).toBe(false);
  });

  it('normalizes prefixes', () => {
    expect(normalizePrefix('/api/v1/')).toBe('/api/v1');
    expect(normalizePrefix('api')).toBe('/api');
    expect(normalizePrefix('/')).toBe('');
    expect(normalizePrefix('')).toBe('');
  });
});

describe('request ids, content types and principals', () => {
  it('keeps a sane X-Request-Id and replaces anything else', () => {
    expect(resolveRequestId('a.B_9-z')).toBe('a.B_9-z');
    expect(resolveRequestId('x'.repeat(128))).toBe('x'.repeat(128));
    for (const bad of [null, undefined, '', 'x'.repeat(129), 'a b', 'ä', '<script>']) expect(resolveRequestId(bad)).toMatch(/^req_[0-9a-f]{32}$/);
    expect(resolveRequestId(null)).not.toBe(resolveRequestId(null));
  });

  it('recognizes JSON media types', () => {
    for (const ok of ['application/json', 'Application/JSON; charset=utf-8', 'application/merge-patch+json', 'application/vnd.api+json']) expect(isJsonContentType(ok), ok).toBe(true);
    for (const no of ['text/plain', 'application/x-www-form-urlencoded', 'multipart/form-data', 'application/jsonp', '']) expect(isJsonContentType(no), no).toBe(false);
  });

  it('reads the default principal shape', () => {
    expect(defaultIsAdmin({ scopes: ['admin:provisioning'] })).toBe(true);
    expect(defaultIsAdmin({ scope: 'read admin:provisioning' })).toBe(true);
    expect(defaultIsAdmin({ scopes: ['admin'] })).toBe(false);
    expect(defaultIsAdmin(null)).toBe(false);
    expect(defaultTenantOf({ tenantId: 't1' })).toBe('t1');
    expect(defaultTenantOf({ tenantId: '' })).toBeNull();
    expect(defaultActorOf({ sub: 'u1' })).toBe('u1');
    expect(defaultActorOf({ subject: 's', id: 'i' })).toBe('s');
    expect(defaultActorOf({})).toBeNull();
  });
});

describe('wire mapping', () => {
  const at = new Date(Date.UTC(2026, 0, 2, 3, 4, 5, 6));
  const detail: WorkflowDetail = {
    id: 'wf_1',
    tenantId: 't1',
    type: 'provision',
    serviceSlug: null,
    status: 'failed',
    definitionVersion: 'v1',
    currentStep: 'dns',
    retryCount: 2,
    error: { code: 'step_failed', message: 'dns failed', step: 'dns', detail: { token: 'x' } },
    createdAt: at,
    updatedAt: at,
    completedAt: null,
    input: { plan: 'small', password: 'p' },
    output: undefined,
    steps: [
      {
        name: 'dns',
        status: 'failed',
        dependsOn: [],
        retryCount: 2,
        maxRetries: 3,
        attempts: 3,
        startedAt: at,
        completedAt: null,
        nextAttemptAt: null,
        nextPollAt: null,
        pollCount: 0,
        output: undefined,
        error: { code: 'boom', message: 'no' },
      },
    ],
    history: [{ at, kind: 'admin', stepName: null, from: 'failed', to: null, actor: 'ops', reason: 'why', action: 'retry_step', detail: undefined }],
  };

  it('maps to snake_case with ISO times and null for absent values, redacting user data', () => {
    const wire = toWorkflowDetailResponse(detail, redactSecrets);
    expect(WorkflowDetailResponseSchema.safeParse(wire).success).toBe(true);
    expect(wire).toMatchObject({
      id: 'wf_1',
      tenant_id: 't1',
      current_step: 'dns',
      retry_count: 2,
      created_at: '2026-01-02T03:04:05.006Z',
      completed_at: null,
      error: { code: 'step_failed', message: 'dns failed', step: 'dns', detail: { token: REDACTED } },
      input: { plan: 'small', password: REDACTED },
      output: null,
    });
    expect(wire.steps[0]).toEqual({
      name: 'dns',
      status: 'failed',
      depends_on: [],
      retry_count: 2,
      max_retries: 3,
      started_at: '2026-01-02T03:04:05.006Z',
      completed_at: null,
      next_attempt_at: null,
      next_poll_at: null,
      poll_count: 0,
      output: null,
      error: { code: 'boom', message: 'no' },
    });
    expect(wire.history[0]).toEqual({ at: '2026-01-02T03:04:05.006Z', kind: 'admin', step_name: null, from: 'failed', to: null, actor: 'ops', reason: 'why', action: 'retry_step', detail: null });
  });
});
