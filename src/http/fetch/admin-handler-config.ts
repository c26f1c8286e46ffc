import type { AdminApiOptions, AdminPrincipal } from '../../admin/admin-config.js';

/** The default prefix of every route. */
export const DEFAULT_PREFIX = '/api/v1';

/** The default request body limit: 64 KiB. */
export const DEFAULT_MAX_BODY_BYTES = 64 * 1024;

/**
 * Options of `createAdminHandler` (and of `honoAdmin`, `expressAdmin`,
 * `fastifyAdmin`, which take the same).
 *
 * @example
 * ```ts
 * const options: AdminHandlerOptions = {
 *   authenticate: async (request) => verifyBearer(request.headers.get('authorization')),
 *   readOnly: process.env.ADMIN_READ_ONLY === '1',
 * };
 * ```
 */
export interface AdminHandlerOptions<P = AdminPrincipal> extends AdminApiOptions<P> {
  /**
   * The host's authentication: the principal of a request, or `null` for an
   * anonymous one (401 on every route but the callback and the OpenAPI document).
   * Required unless `insecureNoAuth` is `true`.
   */
  authenticate?: (request: Request) => P | null | undefined | Promise<P | null | undefined>;
  /**
   * Serve without authentication: every request acts as an anonymous admin
   * principal (`{ subject: 'anonymous', scopes: ['admin:provisioning'] }`).
   * For local demos only.
   * @default false
   */
  insecureNoAuth?: boolean;
  /**
   * Path prefix of every route. A binding mounted under a path (Express
   * `app.use('/x', …)`, Fastify `register(…, { prefix: '/x' })`, Hono
   * `app.route('/x', …)`) puts that path in front of it, and then defaults it to `''`.
   * @default '/api/v1'
   */
  prefix?: string;
  /**
   * Larger request bodies are refused with 413.
   * @default 65536
   */
  maxBodyBytes?: number;
}
