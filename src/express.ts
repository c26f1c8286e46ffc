/**
 * The admin and tenant HTTP API for Express 5: {@link expressAdmin} returns a
 * Router to mount with `app.use()`. Needs `express` and `@hono/node-server`
 * (peer dependencies).
 *
 * @example
 * ```ts
 * import { expressAdmin } from 'sagaline/express';
 * app.use(expressAdmin(engine, { authenticate })); // serves /api/v1/…
 * ```
 *
 * @module
 */
export { expressAdmin } from './http/express/express-admin.js';
export type { AdminHandlerOptions } from './http/fetch/admin-handler-config.js';
export type { AdminPrincipal, RedactFunction, RedactLocation } from './admin/admin-config.js';
