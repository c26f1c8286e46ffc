import type { Logger } from '../core/logger.js';

/**
 * The principal shape the default option functions understand. Hosts may use
 * any shape: pass `isAdmin`, `tenantOf` and `actorOf` to read their own.
 */
export interface AdminPrincipal {
  /** Recorded as the actor of admin operations (also `sub` or `id`). */
  subject?: string;
  sub?: string;
  id?: string;
  /** The tenant whose workflows the tenant routes show. */
  tenantId?: string | null;
  /** Granted scopes; `admin:provisioning` opens the admin routes. */
  scopes?: readonly string[];
  /** An OAuth-style space-separated scope string, read when `scopes` is absent. */
  scope?: string;
}

/** Where a redacted value sits in a response. */
export interface RedactLocation {
  workflowId: string;
  /** `input`/`output` of the workflow or a step, an `error`'s detail, or a history row's detail. */
  field: 'input' | 'output' | 'error' | 'history';
  /** The step the value belongs to; `null` for the workflow itself. */
  stepName: string | null;
}

/**
 * Rewrites a user-data value (input, output, error detail, history detail)
 * before it is sent. Must not mutate `value`.
 */
export type RedactFunction = (value: unknown, location: RedactLocation) => unknown;

/** The scope the default `isAdmin` looks for. */
export const ADMIN_SCOPE = 'admin:provisioning';

/**
 * Options of the framework-free admin API (the part of
 * `createAdminHandler`'s options that does not depend on HTTP).
 */
export interface AdminApiOptions<P = AdminPrincipal> {
  /**
   * Whether a principal may use the admin routes.
   * @default principal.scopes (or the space-separated principal.scope) includes `admin:provisioning`
   */
  isAdmin?: (principal: P) => boolean | Promise<boolean>;
  /**
   * The principal's tenant; a principal without one gets 403 on the tenant routes.
   * @default principal.tenantId
   */
  tenantOf?: (principal: P) => string | null | undefined;
  /**
   * The actor recorded in a workflow's history for admin operations.
   * @default principal.subject ?? principal.sub ?? principal.id
   */
  actorOf?: (principal: P) => string | null | undefined;
  /**
   * Redaction of secrets in responses. The default replaces the value of every
   * key that looks like a secret (credentials, password, secret, token,
   * api_key, …), at any depth, with `"[REDACTED]"`. `false` sends values as
   * stored; a function replaces the default.
   * @default redactSecrets
   */
  redact?: false | RedactFunction;
  /**
   * Refuse the admin mutations (force-complete, retry-step, rollback) with 403.
   * @default false
   */
  readOnly?: boolean;
  /**
   * Receives unexpected errors (answered with a generic 500, the cause logged here).
   * @default errors and warnings to `console`, like the engine
   */
  logger?: Logger;
}

/** Default `isAdmin`: the principal holds the `admin:provisioning` scope. */
export function defaultIsAdmin(principal: unknown): boolean {
  if (typeof principal !== 'object' || principal === null) return false;
  const { scopes, scope } = principal as { scopes?: unknown; scope?: unknown };
  if (Array.isArray(scopes)) return scopes.includes(ADMIN_SCOPE);
  if (typeof scope === 'string') return scope.split(/\s+/).includes(ADMIN_SCOPE);
  return false;
}

/** Default `tenantOf`: `principal.tenantId` when it is a non-empty string. */
export function defaultTenantOf(principal: unknown): string | null {
  if (typeof principal !== 'object' || principal === null) return null;
  const tenantId = (principal as { tenantId?: unknown }).tenantId;
  return typeof tenantId === 'string' && tenantId.length > 0 ? tenantId : null;
}

/** Default `actorOf`: `subject`, `sub` or `id`, the first that is a non-empty string. */
export function defaultActorOf(principal: unknown): string | null {
  if (typeof principal !== 'object' || principal === null) return null;
  for (const key of ['subject', 'sub', 'id'] as const) {
    const value = (principal as Record<string, unknown>)[key];
    if (typeof value === 'string' && value.length > 0) return value;
  }
  return null;
}

/** The default logger of the HTTP layer: errors and warnings to `console`, nothing else. */
export const consoleErrorLogger: Logger = {
  debug: () => {},
  info: () => {},
  warn: (message, context) => console.warn(`[sagaline] ${message}`, context ?? ''),
  error: (message, context) => console.error(`[sagaline] ${message}`, context ?? ''),
};
