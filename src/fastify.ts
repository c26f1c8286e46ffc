/**
 * The admin and tenant HTTP API for Fastify 5: {@link fastifyAdmin} returns a
 * plugin to `register` (with or without a `prefix`). Needs `fastify` (a peer
 * dependency); the plugin itself imports nothing from it at run time.
 *
 * @example
 * ```ts
 * import { fastifyAdmin } from 'sagaline/fastify';
 * await app.register(fastifyAdmin(engine, { authenticate })); // serves /api/v1/…
 * ```
 *
 * @module
 */
export { fastifyAdmin } from './http/fastify/fastify-admin.js';
export type { AdminHandlerOptions } from './http/fetch/admin-handler-config.js';
export type { AdminPrincipal, RedactFunction, RedactLocation } from './admin/admin-config.js';
