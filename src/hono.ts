/**
 * The admin and tenant HTTP API for Hono: {@link honoAdmin} returns a Hono app
 * to mount with `app.route()`. Needs `hono` (a peer dependency).
 *
 * @example
 * ```ts
 * import { honoAdmin } from 'sagaline/hono';
 * app.route('/', honoAdmin(engine, { authenticate })); // serves /api/v1/…
 * ```
 *
 * @module
 */
export { honoAdmin } from './http/hono/hono-admin.js';
export type { AdminHandlerOptions } from './http/fetch/admin-handler-config.js';
export type { AdminPrincipal, RedactFunction, RedactLocation } from './admin/admin-config.js';
