/**
 * The framework-free core of the HTTP API: matches a request against the route
 * table, authenticates and authorizes it, reads and validates its parts, runs
 * the handler and maps engine errors. Input and output are plain data; the
 * fetch handler (and through it every binding) only translates.
 *
 * @module
 */
import { isSagalineError, type ValidationIssue } from '../errors.js';
import type { WorkflowEngineApi } from '../engine/engine-types.js';
import { consoleErrorLogger, defaultActorOf, defaultIsAdmin, defaultTenantOf, type AdminApiOptions, type RedactFunction } from './admin-config.js';
import { errorResult, validationResult, type AdminResult } from './admin-envelopes.js';
import { buildOpenApiDocument } from './admin-openapi.js';
import { redactSecrets } from './admin-redaction.js';
import type { AdminRoute, AdminRouteContext } from './admin-route-types.js';
import { compileRoutes, matchRoute } from './admin-router.js';
import { ADMIN_ROUTES, NO_TENANT } from './admin-routes.js';
import type { ValidationErrorItem } from './admin-schemas.js';
import { parseJsonBody, validateSection, type ValidationSource } from './admin-validation.js';

/** A request body as read by a binding. */
export type BodyRead =
  | { kind: 'empty' }
  | { kind: 'text'; text: string; contentType: string | null }
  | { kind: 'too_large' }
  | { kind: 'invalid_encoding' };

/** A request as the admin API sees it. */
export interface AdminDispatchRequest {
  /** Upper-case HTTP method. */
  method: string;
  /** The path after the prefix (`/provisioning/workflows`), still percent-encoded. */
  path: string;
  /** Query parameters in order; a repeated name keeps its last value. */
  query: Iterable<[string, string]>;
  /** Header names lower-cased. */
  headers: Record<string, string>;
  requestId: string;
  /** The host's authentication; called only for routes that need a principal. `null` means anonymous. */
  authenticate(): Promise<unknown>;
  /** Called only for routes that take a body, after authorization. */
  readBody(): Promise<BodyRead>;
}

/** The admin API for one prefix. */
export interface AdminApi {
  readonly prefix: string;
  readonly routes: readonly AdminRoute[];
  /** Answers a request; never throws (an unexpected error is a logged, generic 500). */
  dispatch(request: AdminDispatchRequest): Promise<AdminResult>;
  /** The OpenAPI 3.1 document of this API (built once). */
  openApiDocument(): Record<string, unknown>;
}

const COMPILED_ROUTES = compileRoutes(ADMIN_ROUTES);

/**
 * True when `path` (relative to the prefix) is one of the API's paths, whatever
 * the method. Bindings use it to leave every other path to the host.
 *
 * @example
 * ```ts
 * matchesAdminRoute('/provisioning/workflows') // true
 * matchesAdminRoute('/users') // false
 * ```
 */
export function matchesAdminRoute(path: string): boolean {
  return matchRoute(COMPILED_ROUTES, '', path).kind !== 'not_found';
}

/** Options of {@link createAdminApi}. */
export interface CreateAdminApiOptions<P = unknown> extends AdminApiOptions<P> {
  /** Path prefix of every route, e.g. `/api/v1` (used by the OpenAPI document). */
  prefix: string;
}

const JSON_MEDIA_TYPE = /^application\/(?:[\w.+-]+\+)?json$/;

/** True for `application/json`, `application/merge-patch+json`, … (parameters ignored). */
export function isJsonContentType(contentType: string): boolean {
  const mediaType = contentType.split(';', 1)[0]!.trim().toLowerCase();
  return JSON_MEDIA_TYPE.test(mediaType);
}

function queryRecord(query: Iterable<[string, string]>): Record<string, string> {
  const record: Record<string, string> = {};
  for (const [key, value] of query) {
    if (key === '__proto__') continue;
    record[key] = value;
  }
  return record;
}

function engineIssuesToDetail(source: ValidationSource, issues: unknown): ValidationErrorItem[] {
  const list = Array.isArray(issues) ? (issues as ValidationIssue[]) : [];
  if (list.length === 0) return [{ loc: [source], msg: 'Invalid input', type: 'value_error' }];
  return list.map((issue) => ({
    loc: [source, ...(Array.isArray(issue.path) ? issue.path.map((k) => (typeof k === 'number' ? k : String(k))) : [])],
    msg: String(issue.message ?? 'Invalid input'),
    type: typeof issue.code === 'string' ? issue.code : 'value_error',
  }));
}

/** Engine messages are meant for users, but are bounded all the same. */
function boundedMessage(err: Error): string {
  return err.message.length > 300 ? `${err.message.slice(0, 300)}…` : err.message;
}

/**
 * Creates the admin API over an engine.
 *
 * @example
 * ```ts
 * const api = createAdminApi(engine, { prefix: '/api/v1' });
 * const result = await api.dispatch({ method: 'GET', path: '/provisioning/workflows', query: [], headers: {},
 *   requestId: 'req_1', authenticate: async () => ({ tenantId: 't1' }), readBody: async () => ({ kind: 'empty' }) });
 * result.status; // 200
 * ```
 */
export function createAdminApi<P = unknown>(engine: WorkflowEngineApi, options: CreateAdminApiOptions<P>): AdminApi {
  const isAdmin = (options.isAdmin ?? defaultIsAdmin) as (principal: unknown) => boolean | Promise<boolean>;
  const tenantOf = (options.tenantOf ?? defaultTenantOf) as (principal: unknown) => string | null | undefined;
  const actorOf = (options.actorOf ?? defaultActorOf) as (principal: unknown) => string | null | undefined;
  const redact: RedactFunction = options.redact === false ? (value) => value : (options.redact ?? redactSecrets);
  const logger = options.logger ?? consoleErrorLogger;
  const compiled = COMPILED_ROUTES;
  let document: Record<string, unknown> | undefined;
  const openApiDocument = (): Record<string, unknown> => (document ??= buildOpenApiDocument(ADMIN_ROUTES, { prefix: options.prefix }));

  const context: AdminRouteContext = {
    engine,
    redact,
    tenantOf: (principal) => {
      const tenant = tenantOf(principal);
      return typeof tenant === 'string' && tenant.length > 0 ? tenant : null;
    },
    actorOf: (principal) => {
      const actor = actorOf(principal);
      return typeof actor === 'string' && actor.length > 0 ? actor : null;
    },
    openApiDocument,
    logger,
  };

  async function run(request: AdminDispatchRequest): Promise<AdminResult> {
    const { requestId } = request;
    const match = matchRoute(compiled, request.method, request.path);
    if (match.kind === 'not_found') return errorResult('not_found', requestId, 'no such route');
    if (match.kind === 'method_not_allowed') {
      const allow = match.allow.join(', ');
      return errorResult('method_not_allowed', requestId, `method ${request.method} not allowed; allowed: ${allow}`, { allow });
    }
    const { route } = match;

    let principal: unknown = null;
    if (route.access !== 'public') {
      principal = (await request.authenticate()) ?? null;
      if (principal === null) return errorResult('unauthorized', requestId);
      if (route.access === 'admin' && !(await isAdmin(principal))) return errorResult('forbidden', requestId, 'admin access required');
      if (route.access === 'tenant' && context.tenantOf(principal) === null) return errorResult('forbidden', requestId, NO_TENANT);
    }
    if (route.mutation && options.readOnly) return errorResult('forbidden', requestId, 'the admin API is read-only');

    let rawBody: { present: false } | { present: true; value: unknown } = { present: false };
    const detail: ValidationErrorItem[] = [];
    if (route.body) {
      const read = await request.readBody();
      if (read.kind === 'too_large') return errorResult('payload_too_large', requestId);
      if (read.kind === 'invalid_encoding') return validationResult([{ loc: ['body'], msg: 'Body is not valid UTF-8', type: 'json_invalid' }]);
      if (read.kind === 'text' && read.text.trim().length > 0) {
        if (read.contentType !== null && !isJsonContentType(read.contentType)) return errorResult('unsupported_media_type', requestId);
        const parsed = parseJsonBody(read.text);
        if (parsed.ok) rawBody = { present: true, value: parsed.value };
        else detail.push(...parsed.detail);
      }
    }

    let params: unknown = {};
    if (match.undecodable.length > 0) {
      for (const name of match.undecodable) detail.push({ loc: ['path', name], msg: 'Invalid percent-encoding', type: 'value_error' });
    } else if (route.params) {
      const result = validateSection(route.params, 'path', match.params);
      if (result.ok) params = result.value;
      else detail.push(...result.detail);
    }

    let query: unknown = {};
    if (route.query) {
      const raw = queryRecord(request.query);
      const result = validateSection(route.query, 'query', raw);
      if (result.ok) query = result.value;
      else detail.push(...result.detail);
    }

    let body: unknown;
    if (route.body && detail.every((item) => item.loc[0] !== 'body')) {
      if (!rawBody.present) {
        if (route.body.required) detail.push({ loc: ['body'], msg: 'Field required', type: 'missing' });
      } else {
        const result = validateSection(route.body.schema, 'body', rawBody.value);
        if (result.ok) body = result.value;
        else detail.push(...result.detail);
      }
    }
    if (detail.length > 0) return validationResult(detail);

    try {
      return await route.handler({ params, query, body, headers: request.headers, principal, requestId }, context);
    } catch (err) {
      if (isSagalineError(err)) {
        switch (err.code) {
          case 'not_found':
            return errorResult('not_found', requestId, boundedMessage(err));
          case 'conflict':
          case 'invalid_transition':
            return errorResult('conflict', requestId, boundedMessage(err));
          case 'validation':
            return validationResult(engineIssuesToDetail(route.engineValidationSource, (err as { issues?: unknown }).issues));
          case 'unauthorized':
            return errorResult('unauthorized', requestId);
          case 'forbidden':
            return errorResult('forbidden', requestId);
          default:
            break;
        }
      }
      throw err;
    }
  }

  return {
    prefix: options.prefix,
    routes: ADMIN_ROUTES,
    openApiDocument,
    async dispatch(request) {
      try {
        return await run(request);
      } catch (err) {
        logger.error('sagaline admin API: unexpected error', {
          requestId: request.requestId,
          method: request.method,
          path: request.path,
          error: err instanceof Error ? { name: err.name, message: err.message, stack: err.stack } : String(err),
        });
        return errorResult('internal_error', request.requestId);
      }
    },
  };
}
