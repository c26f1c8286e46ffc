import { ADMIN_SCOPE, consoleErrorLogger, type AdminPrincipal } from '../../admin/admin-config.js';
import { createAdminApi } from '../../admin/admin-api.js';
import { errorResult, type AdminResult } from '../../admin/admin-envelopes.js';
import { resolveRequestId } from '../../admin/request-id.js';
import type { WorkflowEngineApi } from '../../engine/engine-types.js';
import { ValidationError } from '../../errors.js';
import { DEFAULT_MAX_BODY_BYTES, DEFAULT_PREFIX, type AdminHandlerOptions } from './admin-handler-config.js';
import { readBody } from './read-body.js';

/** A fetch-style handler: `Request` in, `Response` out. */
export type AdminFetchHandler = (request: Request) => Promise<Response>;

const ANONYMOUS_ADMIN: AdminPrincipal = Object.freeze({ subject: 'anonymous', scopes: Object.freeze([ADMIN_SCOPE]) });

/** `'/api/v1/'` → `'/api/v1'`, `'api'` → `'/api'`, `'/'` → `''`. */
export function normalizePrefix(prefix: string): string {
  if (typeof prefix !== 'string') {
    throw new ValidationError('prefix must be a string', [{ path: ['prefix'], message: 'must be a string', code: 'invalid_type' }]);
  }
  const trimmed = prefix.trim().replace(/\/+$/, '');
  if (trimmed === '') return '';
  return trimmed.startsWith('/') ? trimmed : `/${trimmed}`;
}

function assertOptions(engine: unknown, options: AdminHandlerOptions<unknown> | undefined): void {
  if (typeof engine !== 'object' || engine === null) {
    throw new ValidationError('createAdminHandler needs an engine', [{ path: ['engine'], message: 'required', code: 'required' }]);
  }
  if (typeof options?.authenticate !== 'function' && options?.insecureNoAuth !== true) {
    throw new ValidationError(
      'createAdminHandler needs options.authenticate(request) → principal | null, or an explicit insecureNoAuth: true (local demos only)',
      [{ path: ['authenticate'], message: 'required unless insecureNoAuth is true', code: 'required' }],
    );
  }
  const max = options?.maxBodyBytes;
  if (max !== undefined && (!Number.isSafeInteger(max) || max < 1)) {
    throw new ValidationError('maxBodyBytes must be a positive integer', [{ path: ['maxBodyBytes'], message: 'must be a positive integer', code: 'invalid_value' }]);
  }
}

function entriesOf(params: URLSearchParams): [string, string][] {
  const entries: [string, string][] = [];
  params.forEach((value, key) => entries.push([key, value]));
  return entries;
}

function headerRecord(headers: Headers): Record<string, string> {
  const record: Record<string, string> = {};
  headers.forEach((value, key) => {
    if (key !== '__proto__') record[key] = value;
  });
  return record;
}

const SECURITY_HEADERS = {
  'content-type': 'application/json; charset=utf-8',
  'cache-control': 'no-store',
  'x-content-type-options': 'nosniff',
} as const;

/**
 * Creates the admin and tenant HTTP API as a fetch handler
 * (`(request: Request) => Promise<Response>`), usable in any runtime with the
 * Fetch API and wrapped by the Hono, Express and Fastify bindings.
 *
 * Throws a `ValidationError` (code `validation`) when neither `authenticate`
 * nor `insecureNoAuth: true` is given.
 *
 * @example
 * ```ts
 * import { createAdminHandler } from 'sagaline/fetch';
 *
 * const handler = createAdminHandler(engine, {
 *   authenticate: async (request) => sessions.principalOf(request.headers.get('authorization')),
 * });
 * const response = await handler(new Request('http://localhost/api/v1/provisioning/workflows'));
 * ```
 */
export function createAdminHandler<P = AdminPrincipal>(engine: WorkflowEngineApi, options: AdminHandlerOptions<P>): AdminFetchHandler {
  assertOptions(engine, options as AdminHandlerOptions<unknown>);
  const prefix = normalizePrefix(options.prefix ?? DEFAULT_PREFIX);
  const maxBodyBytes = options.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES;
  const logger = options.logger ?? consoleErrorLogger;
  const api = createAdminApi(engine, { ...options, prefix });
  const authenticate = options.authenticate
    ? async (request: Request) => options.authenticate!(request)
    : async () => ANONYMOUS_ADMIN as unknown as P;

  function respond(result: AdminResult, requestId: string): Response {
    let text: string;
    let status = result.status;
    let extraHeaders = result.headers ?? {};
    try {
      text = JSON.stringify(result.body);
    } catch (err) {
      // An output that JSON cannot carry (a BigInt, a cycle) is the engine's data, not the caller's fault.
      logger.error('sagaline admin API: response is not serializable', { requestId, error: err instanceof Error ? err.message : String(err) });
      const fallback = errorResult('internal_error', requestId);
      text = JSON.stringify(fallback.body);
      status = fallback.status;
      extraHeaders = {};
    }
    return new Response(text, { status, headers: { ...SECURITY_HEADERS, ...extraHeaders, 'x-request-id': requestId } });
  }

  return async function adminHandler(request: Request): Promise<Response> {
    const requestId = resolveRequestId(request.headers.get('x-request-id'));
    try {
      const url = new URL(request.url);
      const pathname = url.pathname;
      if (prefix !== '' && pathname !== prefix && !pathname.startsWith(`${prefix}/`)) {
        return respond(errorResult('not_found', requestId, 'no such route'), requestId);
      }
      const result = await api.dispatch({
        method: request.method.toUpperCase(),
        path: pathname.slice(prefix.length) || '/',
        query: entriesOf(url.searchParams),
        headers: headerRecord(request.headers),
        requestId,
        authenticate: () => authenticate(request),
        readBody: () => readBody(request, maxBodyBytes),
      });
      return respond(result, requestId);
    } catch (err) {
      logger.error('sagaline admin API: unexpected error', {
        requestId,
        error: err instanceof Error ? { name: err.name, message: err.message, stack: err.stack } : String(err),
      });
      return respond(errorResult('internal_error', requestId), requestId);
    }
  };
}
