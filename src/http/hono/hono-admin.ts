import { Hono } from 'hono';
import { basePath } from 'hono/route';
import type { AdminPrincipal } from '../../admin/admin-config.js';
import type { WorkflowEngineApi } from '../../engine/engine-types.js';
import type { AdminHandlerOptions } from '../fetch/admin-handler-config.js';
import { createMountedAdminHandler } from '../fetch/mounted-admin-handler.js';

/**
 * The admin and tenant HTTP API as a Hono app to mount. Requests for the API's
 * paths are answered by the fetch handler; every other path falls through to
 * the host's routes.
 *
 * Mounted at the root the API lives under `prefix` (default `/api/v1`);
 * mounted under a path (`app.route('/api/v1', …)`) it lives under that path,
 * followed by `prefix` when one is given.
 *
 * @example
 * ```ts
 * import { Hono } from 'hono';
 * import { honoAdmin } from 'sagaline/hono';
 *
 * const app = new Hono();
 * app.route('/api/v1', honoAdmin(engine, { authenticate: (request) => auth.principalOf(request) }));
 * // GET /api/v1/provisioning/workflows, POST /api/v1/provisioning/callback, …
 * ```
 */
export function honoAdmin<P = AdminPrincipal>(engine: WorkflowEngineApi, options: AdminHandlerOptions<P>): Hono {
  const mounted = createMountedAdminHandler(engine, options);
  const app = new Hono();
  app.use('*', async (c, next) => {
    const mountPath = basePath(c);
    if (!mounted.claims(new URL(c.req.url).pathname, mountPath)) return next();
    const raw = c.req.raw;
    // A host middleware that already read the body (`await c.req.json()`) left it in Hono's cache.
    const request = raw.bodyUsed ? new Request(raw.url, { method: raw.method, headers: raw.headers, body: await c.req.arrayBuffer() }) : raw;
    return mounted.handle(request, mountPath);
  });
  return app;
}
