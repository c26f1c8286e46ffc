import type { IncomingMessage } from 'node:http';
import { getRequestListener } from '@hono/node-server';
import express, { type Request as ExpressRequest, type Router } from 'express';
import type { AdminPrincipal } from '../../admin/admin-config.js';
import type { WorkflowEngineApi } from '../../engine/engine-types.js';
import type { AdminHandlerOptions } from '../fetch/admin-handler-config.js';
import { createMountedAdminHandler } from '../fetch/mounted-admin-handler.js';

/** `@hono/node-server` reads a body that was already consumed from `rawBody`. */
type WithRawBody = ExpressRequest & { rawBody?: Buffer };

/** True when a body parser (`express.json()`, …) has already consumed the stream. */
function bodyAlreadyRead(req: ExpressRequest): boolean {
  return req.body !== undefined && (req.readableEnded || (req.complete && !req.readable));
}

/** The parsed body as bytes again: JSON for objects, as is for text and buffers. */
function reserialize(body: unknown): Buffer {
  if (Buffer.isBuffer(body)) return body;
  if (typeof body === 'string') return Buffer.from(body, 'utf8');
  return Buffer.from(JSON.stringify(body) ?? '', 'utf8');
}

/**
 * The admin and tenant HTTP API as an Express 5 router. Requests for the API's
 * paths are answered by the fetch handler (through `@hono/node-server`'s
 * Node ↔ fetch conversion); every other path goes on to the host's routes.
 *
 * Works whether or not the host already ran `express.json()`: a body that was
 * parsed is serialized again. (A malformed JSON body is then answered by the
 * host's parser and error handler, before this router runs.)
 *
 * Mounted at the root the API lives under `prefix` (default `/api/v1`);
 * mounted under a path (`app.use('/api/v1', …)`) it lives under that path,
 * followed by `prefix` when one is given.
 *
 * @example
 * ```ts
 * import express from 'express';
 * import { expressAdmin } from 'sagaline/express';
 *
 * const app = express();
 * app.use('/api/v1', expressAdmin(engine, { authenticate: (request) => auth.principalOf(request) }));
 * ```
 */
export function expressAdmin<P = AdminPrincipal>(engine: WorkflowEngineApi, options: AdminHandlerOptions<P>): Router {
  const mounted = createMountedAdminHandler(engine, options);
  const listener = getRequestListener(
    (request, env) => mounted.handle(request, (env.incoming as IncomingMessage as ExpressRequest).baseUrl),
    { overrideGlobalObjects: false },
  );
  const router = express.Router();
  router.use((req, res, next) => {
    const pathname = req.originalUrl.split('?', 1)[0]!;
    if (!mounted.claims(pathname, req.baseUrl)) {
      next();
      return;
    }
    if (bodyAlreadyRead(req)) (req as WithRawBody).rawBody = reserialize(req.body);
    // The listener reads the URL synchronously: give it the full path, then restore Express's view.
    const mountedUrl = req.url;
    req.url = req.originalUrl;
    const done = listener(req, res);
    req.url = mountedUrl;
    done.catch(next);
  });
  return router;
}
