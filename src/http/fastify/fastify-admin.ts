import { Readable } from 'node:stream';
import type { FastifyInstance, FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify';
import type { AdminPrincipal } from '../../admin/admin-config.js';
import type { WorkflowEngineApi } from '../../engine/engine-types.js';
import type { AdminHandlerOptions } from '../fetch/admin-handler-config.js';
import { normalizePrefix } from '../fetch/fetch-admin-handler.js';
import { createMountedAdminHandler } from '../fetch/mounted-admin-handler.js';

/** Every method is routed to the handler, so that it (not Fastify) answers 405 with an Allow header. */
const METHODS = ['DELETE', 'GET', 'HEAD', 'OPTIONS', 'PATCH', 'POST', 'PUT'];

function toFetchRequest(request: FastifyRequest): Request {
  const headers = new Headers();
  for (const [name, value] of Object.entries(request.headers)) {
    if (value === undefined || name.startsWith(':')) continue;
    headers.set(name, Array.isArray(value) ? value.join(', ') : value);
  }
  const init: RequestInit & { duplex?: 'half' } = { method: request.method, headers };
  // The catch-all parser below hands over the raw stream: the fetch handler reads it under its own limit.
  if (request.body instanceof Readable) {
    init.body = Readable.toWeb(request.body) as unknown as ReadableStream<Uint8Array>;
    init.duplex = 'half';
  }
  return new Request(`${request.protocol}://${request.host || 'localhost'}${request.url}`, init);
}

async function sendFetchResponse(reply: FastifyReply, response: Response): Promise<FastifyReply> {
  reply.code(response.status);
  response.headers.forEach((value, name) => {
    reply.header(name, value);
  });
  return reply.send(Buffer.from(await response.arrayBuffer()));
}

/**
 * The admin and tenant HTTP API as a Fastify 5 plugin. It routes the API's
 * paths (every method), and, inside its own encapsulated context only, adds a
 * catch-all content-type parser that passes the raw body through, so the
 * handler applies its own JSON parsing, 64 KiB limit, 413, 415 and 422.
 *
 * Registered without a prefix the API lives under `prefix` (default
 * `/api/v1`); registered with one (`{ prefix: '/api/v1' }`) it lives under
 * that, followed by `prefix` when one is given.
 *
 * @example
 * ```ts
 * import Fastify from 'fastify';
 * import { fastifyAdmin } from 'sagaline/fastify';
 *
 * const app = Fastify();
 * await app.register(fastifyAdmin(engine, { authenticate: (request) => auth.principalOf(request) }), { prefix: '/api/v1' });
 * ```
 */
export function fastifyAdmin<P = AdminPrincipal>(engine: WorkflowEngineApi, options: AdminHandlerOptions<P>): FastifyPluginAsync {
  const mounted = createMountedAdminHandler(engine, options);
  return async function sagalineAdmin(instance: FastifyInstance): Promise<void> {
    const mountPath = instance.prefix;
    // Fastify puts the register prefix in front of every route: only the part after it is ours to add.
    const ownPrefix = mounted.prefixFor(mountPath).slice(normalizePrefix(mountPath).length);
    instance.removeAllContentTypeParsers();
    instance.addContentTypeParser('*', (_request, payload, done) => done(null, payload));
    // One wildcard route rather than one per path: Fastify's own limits on path
    // parameters (maxParamLength → 414) would otherwise answer before the
    // handler's 422. The host's more specific routes still win, and paths that
    // are not the API's go to the host's not-found handler.
    instance.route({
      method: METHODS,
      url: `${ownPrefix}/*`,
      exposeHeadRoute: false,
      handler: async (request, reply) => {
        const pathname = request.url.split('?', 1)[0]!;
        if (!mounted.claims(pathname, mountPath)) return reply.callNotFound();
        return sendFetchResponse(reply, await mounted.handle(toFetchRequest(request), mountPath));
      },
    });
  };
}
