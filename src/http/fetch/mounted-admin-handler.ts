import { matchesAdminRoute } from '../../admin/admin-api.js';
import type { WorkflowEngineApi } from '../../engine/engine-types.js';
import { DEFAULT_PREFIX, type AdminHandlerOptions } from './admin-handler-config.js';
import { createAdminHandler, normalizePrefix, type AdminFetchHandler } from './fetch-admin-handler.js';

/**
 * The fetch handler as the bindings use it: one per mount path (the path a
 * framework mounted the binding under), claiming only the API's own paths so
 * that every other request goes on to the host's routes.
 */
export interface MountedAdminHandler {
  /** The full prefix for a mount path: the mount path, then `prefix` (default `/api/v1`, or `''` under a mount path). */
  prefixFor(mountPath: string): string;
  /** True when `pathname` is one of the API's paths (any method) under this mount path. */
  claims(pathname: string, mountPath: string): boolean;
  /** Answers a request whose URL holds the full path (mount path included). */
  handle(request: Request, mountPath: string): Promise<Response>;
}

/**
 * Creates a {@link MountedAdminHandler}; validates `options` at once.
 *
 * @example
 * ```ts
 * const mounted = createMountedAdminHandler(engine, { authenticate });
 * mounted.prefixFor('');      // '/api/v1'
 * mounted.prefixFor('/admin'); // '/admin'
 * ```
 */
export function createMountedAdminHandler<P>(engine: WorkflowEngineApi, options: AdminHandlerOptions<P>): MountedAdminHandler {
  // Built once up front so that a missing `authenticate` fails when the binding is created.
  const handlers = new Map<string, AdminFetchHandler>();
  const prefixFor = (mountPath: string): string => {
    const mount = normalizePrefix(mountPath);
    const own = options.prefix !== undefined ? normalizePrefix(options.prefix) : mount === '' ? DEFAULT_PREFIX : '';
    return `${mount}${own}`;
  };
  const handlerFor = (prefix: string): AdminFetchHandler => {
    let handler = handlers.get(prefix);
    if (!handler) {
      handler = createAdminHandler(engine, { ...options, prefix });
      handlers.set(prefix, handler);
    }
    return handler;
  };
  handlerFor(prefixFor(''));
  return {
    prefixFor,
    claims(pathname, mountPath) {
      const prefix = prefixFor(mountPath);
      if (prefix !== '' && !pathname.startsWith(`${prefix}/`)) return false;
      return matchesAdminRoute(pathname.slice(prefix.length));
    },
    handle(request, mountPath) {
      return handlerFor(prefixFor(mountPath))(request);
    },
  };
}
